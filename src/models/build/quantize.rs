//! Block-wise weight quantization for ONNX Runtime's `com.microsoft` `MatMulNBits`.
//!
//! The scheme: a weight `W` of `[n, k]` (out features by in features, the checkpoint's layout) is cut
//! along `k` into blocks of `BLOCK` values; each block gets one f32 scale, `max |w| / q_max` (127 for
//! 8 bits, 7 for 4 bits), and its values are stored as `round(w / scale)` offset by the zero point
//! `MatMulNBits` assumes when none is given (128 for 8 bits, 8 for 4 bits): symmetric, no zero-point
//! tensor. A row whose `k` is not a multiple of the block is padded with zeros. 4-bit values are packed
//! two to a byte, the first in the low nibble.

/// Values per block: 32, what ONNX Runtime's own quantizer and the onnxruntime-genai builder use.
pub const BLOCK: usize = 32;

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

    fn max_level(self) -> f32 {
        match self {
            Bits::Four => 7.0,
            Bits::Eight => 127.0,
        }
    }

    fn zero_point(self) -> i32 {
        match self {
            Bits::Four => 8,
            Bits::Eight => 128,
        }
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
            let max = values.iter().fold(0f32, |max, value| max.max(value.abs()));
            let scale = if max > 0.0 {
                max / bits.max_level()
            } else {
                1.0
            };
            scales.push(scale);
            levels.fill(bits.zero_point() as u8);
            for (level, value) in levels.iter_mut().zip(values) {
                let q = (value / scale)
                    .round()
                    .clamp(-bits.max_level(), bits.max_level());
                *level = (q as i32 + bits.zero_point()) as u8;
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

    #[test]
    fn each_value_is_within_half_a_step_of_its_block_scale() {
        for bits in [Bits::Four, Bits::Eight] {
            // 40 columns: a full block and a padded one.
            let (n, k) = (3, 40);
            let original = weight(n, k);
            let quantized = quantize(&original, n, k, bits);
            assert_eq!(quantized.blocks, 2);
            assert_eq!(quantized.data.len(), n * 2 * BLOCK * bits.count() / 8);
            let restored = dequantize(&quantized, n, k, bits);
            for (index, (a, b)) in original.iter().zip(&restored).enumerate() {
                let scale = quantized.scales[(index / k) * 2 + (index % k) / BLOCK];
                assert!(
                    (a - b).abs() <= scale / 2.0 + 1e-6,
                    "{bits:?} {index}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn the_largest_value_of_a_block_is_exact_and_zero_stays_zero() {
        let mut original = vec![0f32; BLOCK];
        original[3] = -2.5;
        original[4] = 1.0;
        let quantized = quantize(&original, 1, BLOCK, Bits::Four);
        let restored = dequantize(&quantized, 1, BLOCK, Bits::Four);
        assert_eq!(restored[3], -2.5);
        assert_eq!(restored[0], 0.0);
        // Low nibble first: values 2 and 3 share byte 1, value 3 in its high nibble.
        assert_eq!(quantized.data[1] >> 4, (-7i32 + 8) as u8);
    }
}
