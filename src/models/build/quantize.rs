//! Block-wise weight quantization in ONNX Runtime's `com.microsoft` `MatMulNBits` layout, which
//! Lookout's `QuantizedLinear` reads (int8 and int4).
//!
//! The scheme: a weight `W` of `[n, k]` (out features by in features, the checkpoint's layout) is cut
//! along `k` into blocks of `BLOCK` values; each block gets one f32 scale, and its values are stored as
//! `round(w / scale)` clamped to the signed range (-8..=7 for 4 bits, -128..=127 for 8) and offset by
//! the zero point `MatMulNBits` assumes when none is given (8, 128): symmetric, no zero-point tensor.
//! The scale is the block's largest-magnitude value over the range's negative end (`w_max / -8`), so
//! that value is exact at -8 and every level of the range is used (`|w_max| / 7` would leave -8
//! unused and make each step 8/7 as coarse); a scale may be negative. A row whose `k` is not a multiple
//! of the block is padded with zeros. 4-bit values are packed two to a byte, the first in the low
//! nibble.

/// Values per block: 128, the group size GPTQ and AWQ default to. ONNX Runtime's own quantizer and
/// the onnxruntime-genai builder default to 32, which keeps a little more accuracy but makes the kernels
/// spend more of a step on scales: on the full-size random-weight 256M (bench/results.md), 128 decodes
/// about 10% faster in int8 and 25% faster in int4 and prefills 15-20% faster, and moves the first
/// token's KL divergence from transformers from 1.2e-4 to 1.5e-4 (int8) and from 0.017 to 0.028
/// (int4).
pub const BLOCK: usize = 128;

/// The bits of a quantized weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bits {
    Four,
    Eight,
}

impl Bits {
    pub fn count(self) -> usize {
        match self {
            Bits::Four => 4,
            Bits::Eight => 8,
        }
    }

    /// The zero point, and the magnitude of the range's negative end: 8 for 4 bits, 128 for 8.
    fn zero_point(self) -> i32 {
        1 << (self.count() - 1)
    }
}

/// A quantized weight in `MatMulNBits`'s layout: `data` is `[n, blocks, BLOCK * bits / 8]` bytes,
/// `scales` `[n, blocks]`.
pub struct Quantized {
    pub data: Vec<u8>,
    pub scales: Vec<f32>,
    pub blocks: usize,
}

/// Quantizes `weight` (`[n, k]`, row-major) to `bits`.
pub fn quantize(weight: &[f32], n: usize, k: usize, bits: Bits) -> Quantized {
    let blocks = k.div_ceil(BLOCK);
    let bytes_per_block = BLOCK * bits.count() / 8;
    let mut data = Vec::with_capacity(n * blocks * bytes_per_block);
    let mut scales = Vec::with_capacity(n * blocks);
    let mut levels = [0u8; BLOCK];
    for row in weight.chunks_exact(k) {
        for block in 0..blocks {
            let values = &row[block * BLOCK..((block + 1) * BLOCK).min(k)];
            let extreme = values.iter().copied().fold(0f32, |extreme, value| {
                if value.abs() > extreme.abs() {
                    value
                } else {
                    extreme
                }
            });
            let zero_point = bits.zero_point();
            let scale = if extreme != 0.0 {
                extreme / -(zero_point as f32)
            } else {
                1.0
            };
            scales.push(scale);
            levels.fill(zero_point as u8);
            let (lowest, highest) = (-(zero_point as f32), (zero_point - 1) as f32);
            for (level, value) in levels.iter_mut().zip(values) {
                let q = (value / scale).round().clamp(lowest, highest);
                *level = (q as i32 + zero_point) as u8;
            }
            match bits {
                Bits::Eight => data.extend_from_slice(&levels),
                Bits::Four => {
                    data.extend(levels.chunks_exact(2).map(|pair| pair[0] | (pair[1] << 4)))
                }
            }
        }
    }
    Quantized {
        data,
        scales,
        blocks,
    }
}

/// The weight `quantized` stands for, `[n, k]`: what `MatMulNBits` multiplies by.
#[cfg(test)]
pub fn dequantize(quantized: &Quantized, n: usize, k: usize, bits: Bits) -> Vec<f32> {
    let bytes_per_block = BLOCK * bits.count() / 8;
    let mut weight = Vec::with_capacity(n * k);
    for row in 0..n {
        for column in 0..k {
            let block = column / BLOCK;
            let at = column % BLOCK;
            let base = (row * quantized.blocks + block) * bytes_per_block;
            let level = match bits {
                Bits::Eight => quantized.data[base + at] as i32,
                Bits::Four => ((quantized.data[base + at / 2] >> (4 * (at % 2))) & 0xF) as i32,
            };
            weight.push(
                (level - bits.zero_point()) as f32
                    * quantized.scales[row * quantized.blocks + block],
            );
        }
    }
    weight
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(n: usize, k: usize) -> Vec<f32> {
        (0..n * k)
            .map(|index| ((index * 37 % 101) as f32 - 50.0) / 17.0)
            .collect()
    }

    /// Each value is within half a step of its block's scale, but for one of the opposite sign to the
    /// block's extreme beyond the range's positive end (7.5 steps for 4 bits), which is stored at that
    /// end.
    #[test]
    fn each_value_is_within_half_a_step_or_clamped_at_the_top() {
        for bits in [Bits::Four, Bits::Eight] {
            // A full block and a padded one.
            let (n, k) = (3, BLOCK + 8);
            let original = weight(n, k);
            let quantized = quantize(&original, n, k, bits);
            assert_eq!(quantized.blocks, 2);
            assert_eq!(quantized.data.len(), n * 2 * BLOCK * bits.count() / 8);
            let restored = dequantize(&quantized, n, k, bits);
            for (index, (a, b)) in original.iter().zip(&restored).enumerate() {
                let scale = quantized.scales[(index / k) * 2 + (index % k) / BLOCK];
                let top = (bits.zero_point() - 1) as f32;
                let within = (a - b).abs() <= scale.abs() / 2.0 + 1e-6;
                let clamped = a / scale > top + 0.5 && *b == top * scale;
                assert!(within || clamped, "{bits:?} {index}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn the_largest_value_of_a_block_is_exact_at_the_ranges_negative_end() {
        for extreme in [-2.5f32, 2.5] {
            let mut original = vec![0f32; BLOCK];
            original[3] = extreme;
            original[4] = 1.0;
            let quantized = quantize(&original, 1, BLOCK, Bits::Four);
            let restored = dequantize(&quantized, 1, BLOCK, Bits::Four);
            assert_eq!(restored[3], extreme);
            assert_eq!(restored[0], 0.0);
            // Steps of 2.5 / 8: 1.0 is 3.2 steps, stored as 3 of them.
            assert_eq!(restored[4], 3.0 * 2.5 / 8.0);
            // Low nibble first: values 2 and 3 share byte 1, value 3 (level -8, stored as 0) in its
            // high nibble.
            assert_eq!(quantized.data[1] >> 4, 0);
        }
    }
}
