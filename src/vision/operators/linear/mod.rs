//! `QuantizedLinear`: `input` times an int8 or int4 weight stored in blocks, the layout ONNX Runtime's
//! `MatMulNBits` reads (`lookout models build --precision int8|int4`).
//!
//! Why not `MatMulNBits` itself: on the AVX2 CPU measured (2 cores), its int8 kernel multiplies a
//! prefill's rows more slowly than the runtime's float GEMM does, and reads a decoding step's weights
//! more slowly than the row kernel below (bench/reference/linear-kernels: 19.5-22.7 GB/s against
//! 24.1-26.0 on the 121 weights of a 256M decoding step). In the decoder, where a step's small
//! projections (368 KB to 2 MB) cost a thread hand-off each, int8 decoding runs at 1.00-1.07x
//! `MatMulNBits`' speed, a one-image prefill at 1.5-1.9x (bench/results.md). Its int4 kernel
//! (`accuracy_level` 4) read a 256M decoding step's weights at 0.41 of the bandwidth bound.
//!
//! It multiplies in integers: the input rows are quantized per block to 16 bits, the weight's levels
//! widened to 16 bits, and products summed in pairs in 32 bits (`vpmaddwd` on AVX2, plain integer code
//! elsewhere), each block's sum then scaled into a float. 16-bit activations keep their first 4-5
//! digits where `MatMulNBits`' integer path keeps 2; `vpmaddwd` does twice the multiply-adds of a
//! float FMA an instruction (1.78x measured on one core: 76 against 42.7 G a second). Two ways, by
//! the number of input rows:
//! - a few rows (fewer than [`MANY_ROWS`]: a decoding step, a batch of them, a short prompt), `rows`:
//!   the row kernel, which streams each weight row once for up to 4 input rows;
//! - many rows (a prompt's prefill), `gemm`: a GEMM on small packed panels of the weight.
//!
//! One exception: the row kernel on 4-bit weights quantizes its input rows to 8 bits, and multiplies
//! the weight's bytes as they are, unsigned, by them (`vpmaddubsw`, 32 products an instruction, where
//! 16-bit inputs would need each nibble widened to 16 bits first): a 4-bit weight's own rounding is
//! so much coarser than an 8-bit input's that the answers barely move (on the fixture, the worst
//! decoding step's KL from fp32 is 4.80e-4 against 4.76e-4 with 16-bit inputs: `decoder_precision`),
//! and the kernel multiplies 36 G values a second on one core against 26-28 (int4 decoding 1.17x
//! `MatMulNBits`', bench/results.md).
//!
//! The kernels' order: 4-bit levels come two to a byte, the first in the low nibble, so 32 bytes of a
//! weight row hold a run of 64 values, the even ones in the low nibbles and the odd ones in the high.
//! The kernels take a run as its 32 low nibbles, then its 32 high ones (a mask, and a shift and a
//! mask, of the 32 bytes), and the input rows are quantized in that same order, so no weight is ever
//! shuffled: a block's sum is the same in any order. 8-bit levels stay in their own order.
//!
//! This module holds what both share: the operator, its sizes, the weight, the input rows quantized,
//! and the split of the outputs over the runtime's threads.
//!
//! Attribute: `bits`, 8 or 4 (8 when absent, as in graphs built before int4 used this operator).
//! Inputs: `input` `[..., K]` (f32); `weights` `[N, blocks, block × bits / 8]` (u8: the level plus the
//! zero point 2^(bits - 1), rows padded to whole blocks with the zero point); `scales` `[N × blocks]`
//! (f32). Output: `[..., N]`.

use std::sync::Mutex;

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

mod gemm;
mod rows;

/// The operator's name in graphs.
pub const NAME: &str = "QuantizedLinear";

/// The values the kernels widen at a time, and the unit of the kernels' order: 32 bytes of 4-bit
/// levels, four AVX2 registers of 16-bit lanes.
const RUN: usize = 64;

/// From this many input rows on, the GEMM multiplies; below, the row kernel. Measured on one core,
/// on a 256M gate-and-up weight (3072 x 576) read from memory: the GEMM took 1.39x the row kernel's
/// time at 4 rows, 0.98x at 8, 0.80x at 12 and 0.69x at 32.
const MANY_ROWS: usize = 8;

/// Tasks a core, for either kernel: the runtime's threads take them as they come free, so a core
/// slowed by other work, or woken late, does fewer of them. For the row kernel, four against one
/// decoded 1.07x, 1.07x as fast as `MatMulNBits` where one did 0.96x, 0.99x (`lookout bench`, 1 image).
const TASKS_A_CORE: usize = 4;

pub(super) struct QuantizedLinear;

impl Operator for QuantizedLinear {
    type Kernel<'attr> = Linear;

    fn name(&self) -> &str {
        NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Uint8),
            OperatorInput::required(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<Linear> {
        match info.get::<i64>("bits") {
            None | Some(8) => Ok(Linear { bits: 8 }),
            Some(4) => Ok(Linear { bits: 4 }),
            Some(bits) => Err(fail(format!("bits must be 4 or 8, not {bits}"))),
        }
    }
}

/// The kernel: the bits of its node's weight levels.
pub struct Linear {
    bits: usize,
}

fn fail(problem: impl std::fmt::Display) -> ort::Error {
    ort::Error::new(format!("{NAME}: {problem}"))
}

/// The sizes of one call, checked against each other.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Input rows.
    rows: usize,
    /// Input features (K).
    features: usize,
    /// Output features (N).
    outputs: usize,
    blocks: usize,
    /// Values a block.
    block: usize,
    /// Bits a weight level: 4 or 8.
    bits: usize,
}

impl Sizes {
    /// The bytes of one weight row.
    fn row_bytes(&self) -> usize {
        self.blocks * self.block * self.bits / 8
    }

    /// What a stored weight level holds above its value: 2^(bits - 1).
    fn zero_point(&self) -> i16 {
        1 << (self.bits - 1)
    }
}

impl Kernel for Linear {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = ctx.input(0)?.ok_or_else(|| fail("the input is missing"))?;
        let weights = ctx
            .input(1)?
            .ok_or_else(|| fail("the weights are missing"))?;
        let scales = ctx
            .input(2)?
            .ok_or_else(|| fail("the scales are missing"))?;
        let (input_shape, values) = input.try_extract_tensor::<f32>()?;
        let (weight_shape, levels) = weights.try_extract_tensor::<u8>()?;
        let (_, scales) = scales.try_extract_tensor::<f32>()?;
        let sizes = sizes(input_shape, weight_shape, scales.len(), self.bits)?;
        let mut output_shape = input_shape.to_vec();
        if let Some(last) = output_shape.last_mut() {
            *last = sizes.outputs as i64;
        }
        let mut output = ctx
            .output(0, output_shape)?
            .ok_or_else(|| fail("the output is missing"))?;
        let (_, products) = output.try_extract_tensor_mut::<f32>()?;
        if sizes.rows == 0 {
            return Ok(());
        }
        let weight = Weight {
            levels,
            scales,
            sizes,
        };
        if sizes.rows >= MANY_ROWS {
            gemm::multiply_many(ctx, &weight, values, products)
        } else {
            rows::multiply_rows(ctx, &weight, values, products)
        }
    }
}

fn sizes(input: &[i64], weight: &[i64], scales: usize, bits: usize) -> ort::Result<Sizes> {
    let dimension = |value: i64| usize::try_from(value).map_err(|_| fail("a negative dimension"));
    let (Some(&features), [outputs, blocks, block_bytes]) = (input.last(), weight) else {
        return Err(fail(format!(
            "the input must be [..., K] and the weights [N, blocks, block bytes], not {input:?} and \
             {weight:?}"
        )));
    };
    let sizes = Sizes {
        rows: input[..input.len() - 1]
            .iter()
            .try_fold(1usize, |rows, &value| {
                Ok::<_, ort::Error>(rows * dimension(value)?)
            })?,
        features: dimension(features)?,
        outputs: dimension(*outputs)?,
        blocks: dimension(*blocks)?,
        block: dimension(*block_bytes)? * 8 / bits,
        bits,
    };
    // Whole runs, the kernels' step; at most 256 values, so that a block's integer sums fit 32 bits
    // (255 x 32,767 a product).
    if sizes.block == 0 || !sizes.block.is_multiple_of(RUN) || sizes.block > 256 {
        return Err(fail(format!(
            "the block must be a multiple of {RUN} values up to 256, not {} ({block_bytes} bytes of \
             {bits}-bit levels)",
            sizes.block
        )));
    }
    if sizes.blocks != sizes.features.div_ceil(sizes.block) {
        return Err(fail(format!(
            "{} blocks of {} do not hold the input's {} features",
            sizes.blocks, sizes.block, sizes.features
        )));
    }
    if scales != sizes.outputs * sizes.blocks {
        return Err(fail(format!(
            "{scales} scales for {} rows of {} blocks",
            sizes.outputs, sizes.blocks
        )));
    }
    Ok(sizes)
}

/// The operator's weight inputs.
struct Weight<'a> {
    levels: &'a [u8],
    scales: &'a [f32],
    sizes: Sizes,
}

impl Weight<'_> {
    /// Weight row `row`'s bytes, whole blocks.
    fn row(&self, row: usize) -> &[u8] {
        let width = self.sizes.row_bytes();
        &self.levels[row * width..(row + 1) * width]
    }

    /// Weight rows `rows`' bytes (none for an empty range).
    fn rows(&self, rows: std::ops::Range<usize>) -> &[u8] {
        let width = self.sizes.row_bytes();
        &self.levels[rows.start.min(rows.end) * width..rows.end * width]
    }

    fn row_scales(&self, row: usize) -> &[f32] {
        &self.scales[row * self.sizes.blocks..(row + 1) * self.sizes.blocks]
    }

    /// The stored level (its value plus the zero point) at `position` of a weight row's bytes `row`,
    /// positions in the kernels' order (see the module's note), for the portable code.
    fn level(&self, row: &[u8], position: usize) -> i16 {
        if self.sizes.bits == 8 {
            return i16::from(row[position]);
        }
        let half = RUN / 2;
        let byte = row[position / RUN * half + position % half];
        i16::from(if position % RUN < half {
            byte & 0xF
        } else {
            byte >> 4
        })
    }
}

/// An input level: `i16`, or `i8` for the row kernel on 4-bit weights.
trait Level: Copy + Default + Into<i32> + Send + Sync {
    /// The largest level, the block's largest magnitude; levels are symmetric, -MAX to MAX.
    const MAX: f32;

    /// `value`, a whole number within ±MAX.
    fn from_whole(value: f32) -> Self;
}

impl Level for i16 {
    const MAX: f32 = i16::MAX as f32;

    #[inline(always)]
    #[allow(unsafe_code)]
    fn from_whole(value: f32) -> i16 {
        // SAFETY: the caller passes a whole number within i16's range.
        unsafe { value.to_int_unchecked() }
    }
}

impl Level for i8 {
    const MAX: f32 = i8::MAX as f32;

    #[inline(always)]
    #[allow(unsafe_code)]
    fn from_whole(value: f32) -> i8 {
        // SAFETY: the caller passes a whole number within i8's range.
        unsafe { value.to_int_unchecked() }
    }
}

/// An input row quantized per block to levels `L`: `levels` (padded to whole blocks with zeros, in
/// the kernels' order for the weight's bits), each block's scale, and each block's sum of levels times
/// the weight's zero point, which takes it back out of the row kernel's integer products (the GEMM's
/// panels have it taken off their levels).
struct QuantizedRow<L = i16> {
    levels: Vec<L>,
    scales: Vec<f32>,
    offsets: Vec<i32>,
}

impl<L: Level> QuantizedRow<L> {
    fn new(values: &[f32], sizes: &Sizes) -> QuantizedRow<L> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return quantize_row_avx2(values, sizes);
        }
        QuantizedRow::quantize(values, sizes)
    }

    /// Always inlined, so that `quantize_row_avx2` compiles it with AVX2's rounding and vectors.
    #[inline(always)]
    fn quantize(values: &[f32], sizes: &Sizes) -> QuantizedRow<L> {
        let mut levels = vec![L::default(); sizes.blocks * sizes.block];
        let mut scales = Vec::with_capacity(sizes.blocks);
        let mut offsets = Vec::with_capacity(sizes.blocks);
        for (values, levels) in values
            .chunks(sizes.block)
            .zip(levels.chunks_mut(sizes.block))
        {
            let largest = values
                .iter()
                .fold(0f32, |largest, value| largest.max(value.abs()));
            let scale = if largest > 0.0 { largest / L::MAX } else { 1.0 };
            let inverse = scale.recip();
            let mut sum = 0i32;
            for (level, value) in levels.iter_mut().zip(values) {
                // Within ±MAX by the scale; a NaN becomes 0. (`as` would say the same, but its checks
                // keep the loop out of vectors.)
                let scaled = (value * inverse).round_ties_even();
                let scaled = if scaled.is_nan() {
                    0.0
                } else {
                    scaled.clamp(-L::MAX, L::MAX)
                };
                *level = L::from_whole(scaled);
                sum += (*level).into();
            }
            if sizes.bits == 4 {
                for run in levels.chunks_exact_mut(RUN) {
                    let natural: [L; RUN] = std::array::from_fn(|index| run[index]);
                    for (index, pair) in natural.chunks_exact(2).enumerate() {
                        (run[index], run[RUN / 2 + index]) = (pair[0], pair[1]);
                    }
                }
            }
            scales.push(scale);
            offsets.push(i32::from(sizes.zero_point()) * sum);
        }
        QuantizedRow {
            levels,
            scales,
            offsets,
        }
    }
}

/// Splits a product over the runtime's threads by output columns: `products` (`[rows, N]`) cut into
/// runs of `run` columns, each run's part of every row handed to one task as `work(first column of
/// the run, its parts)`.
fn by_columns(
    ctx: &ComputeContext,
    products: &mut [f32],
    outputs: usize,
    run: usize,
    work: impl Fn(usize, &mut [&mut [f32]]) + Sync + Send,
) -> ort::Result<()> {
    let runs = outputs.div_ceil(run);
    let mut parts: Vec<Vec<&mut [f32]>> = (0..runs)
        .map(|_| Vec::with_capacity(products.len() / outputs))
        .collect();
    for row in products.chunks_exact_mut(outputs) {
        for (parts, part) in parts.iter_mut().zip(row.chunks_mut(run)) {
            parts.push(part);
        }
    }
    let parts: Vec<Mutex<Vec<&mut [f32]>>> = parts.into_iter().map(Mutex::new).collect();
    let task = |index: usize| {
        let mut parts = parts[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        work(index * run, &mut parts);
    };
    if runs == 1 {
        task(0);
        Ok(())
    } else {
        ctx.par_for(runs, runs, task)
    }
}

fn quantize_rows<L: Level>(values: &[f32], sizes: &Sizes) -> Vec<QuantizedRow<L>> {
    values
        .chunks_exact(sizes.features)
        .map(|row| QuantizedRow::new(row, sizes))
        .collect()
}

/// The CPU's cores, as many runs as the row kernel makes: asked once, since the standard library
/// reads the process's cgroup files to answer (about 40 µs, a third of a projection's time).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// [`QuantizedRow::quantize`] compiled for AVX2. The caller has checked that the CPU has AVX2 and
/// FMA.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn quantize_row_avx2<L: Level>(values: &[f32], sizes: &Sizes) -> QuantizedRow<L> {
    #[target_feature(enable = "avx2,fma")]
    fn compiled<L: Level>(values: &[f32], sizes: &Sizes) -> QuantizedRow<L> {
        QuantizedRow::quantize(values, sizes)
    }
    // SAFETY: the CPU has AVX2 and FMA (the caller checked).
    unsafe { compiled(values, sizes) }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! What both AVX2 kernels read a weight with.

    use std::arch::x86_64::*;

    /// The stored levels of a run of values ([`super::RUN`]) of a weight row of `BITS`-bit levels,
    /// whose bytes start at `bytes`, in the kernels' order (see the module's note), widened to 16-bit
    /// lanes: four registers of 16.
    ///
    /// # Safety
    /// The CPU has AVX2, and `bytes` starts `RUN × BITS / 8` readable bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    #[allow(unsafe_code)]
    pub(super) unsafe fn widen<const BITS: usize>(bytes: *const u8) -> [__m256i; 4] {
        if BITS == 8 {
            // SAFETY: the 64 bytes read are the caller's to read.
            std::array::from_fn(|part| unsafe {
                _mm256_cvtepu8_epi16(_mm_loadu_si128(bytes.add(16 * part).cast()))
            })
        } else {
            // SAFETY: the 32 bytes read are the caller's to read.
            let [low, high] = unsafe { nibbles(bytes) };
            [
                _mm256_cvtepu8_epi16(_mm256_castsi256_si128(low)),
                _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(low)),
                _mm256_cvtepu8_epi16(_mm256_castsi256_si128(high)),
                _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(high)),
            ]
        }
    }

    /// The 4-bit levels of a run of values ([`super::RUN`]) of a weight row, whose 32 bytes start at
    /// `bytes`, in the kernels' order as bytes: the low nibbles, then the high ones.
    ///
    /// # Safety
    /// The CPU has AVX2, and `bytes` starts 32 readable bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    #[allow(unsafe_code)]
    pub(super) unsafe fn nibbles(bytes: *const u8) -> [__m256i; 2] {
        // SAFETY: the 32 bytes read are the caller's to read.
        let bytes = unsafe { _mm256_loadu_si256(bytes.cast()) };
        let nibble = _mm256_set1_epi8(0xF);
        [
            _mm256_and_si256(bytes, nibble),
            _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), nibble),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight of `outputs` rows of `features` with random `bits`-bit levels and scales, stored as
    /// `lookout models build` stores it (4-bit levels two to a byte, the first in the low nibble), and
    /// its f32 values.
    pub(super) fn random_weight(
        outputs: usize,
        features: usize,
        block: usize,
        bits: usize,
    ) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let blocks = features.div_ceil(block);
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let zero_point = 1u8 << (bits - 1);
        let mut levels = vec![zero_point; outputs * blocks * block];
        let scales: Vec<f32> = (0..outputs * blocks)
            .map(|_| (next() % 1000) as f32 * 1e-5 - 5e-3)
            .collect();
        let mut values = vec![0f32; outputs * features];
        for row in 0..outputs {
            for column in 0..features {
                let level = (next() % (1 << bits)) as u8;
                levels[row * blocks * block + column] = level;
                values[row * features + column] =
                    f32::from(i16::from(level) - i16::from(zero_point))
                        * scales[row * blocks + column / block];
            }
        }
        if bits == 4 {
            levels = levels
                .chunks_exact(2)
                .map(|pair| pair[0] | (pair[1] << 4))
                .collect();
        }
        (levels, scales, values)
    }

    /// The sizes of a weight's `shape` (outputs, features, block, bits) times `rows` input rows.
    pub(super) fn sizes_of(
        rows: usize,
        (outputs, features, block, bits): (usize, usize, usize, usize),
    ) -> Sizes {
        Sizes {
            rows,
            features,
            outputs,
            blocks: features.div_ceil(block),
            block,
            bits,
        }
    }

    /// `rows` input rows of `features`, values from -5 to 5.
    pub(super) fn input_rows(rows: usize, features: usize) -> Vec<f32> {
        (0..rows * features)
            .map(|i| (i * 7919 % 1000) as f32 / 100.0 - 5.0)
            .collect()
    }

    /// Checks `got` (`[rows, outputs]`) against the plain product in f64 of `input` and the
    /// dequantized weight `values`: quantizing an input to levels `L` moves it by at most half a
    /// level, its block's largest magnitude over `2 L::MAX`; the float sums add a little more.
    pub(super) fn assert_near_the_product<L: Level>(
        input: &[f32],
        values: &[f32],
        (outputs, block): (usize, usize),
        got: &[f32],
        way: &str,
    ) {
        let features = values.len() / outputs;
        let rows = input.len() / features;
        for row in 0..rows {
            let input = &input[row * features..(row + 1) * features];
            let half_levels: Vec<f64> = input
                .chunks(block)
                .flat_map(|values| {
                    let largest = values.iter().fold(0f32, |largest, x| largest.max(x.abs()));
                    std::iter::repeat_n(f64::from(largest) / 2.0 / f64::from(L::MAX), values.len())
                })
                .collect();
            for output in 0..outputs {
                let weights = &values[output * features..(output + 1) * features];
                let products = input
                    .iter()
                    .zip(weights)
                    .map(|(x, w)| f64::from(*x) * f64::from(*w));
                let exact: f64 = products.clone().sum();
                let rounding: f64 = weights
                    .iter()
                    .zip(&half_levels)
                    .map(|(w, half_level)| f64::from(w.abs()) * half_level)
                    .sum();
                let bound = rounding + products.map(f64::abs).sum::<f64>() * 1e-6 + 1e-6;
                let got = f64::from(got[row * outputs + output]);
                assert!(
                    (got - exact).abs() <= bound,
                    "{way} rows={rows} [{row}, {output}]: {got} vs {exact}"
                );
            }
        }
    }

    /// Runs `multiply(weight, input rows, the CPU's way's output rows, the portable way's)` on a
    /// random weight of `shape` (outputs, features, block, bits) and `rows` input rows, then checks
    /// both outputs against the product.
    pub(super) fn check_both_ways<L: Level>(
        shape @ (outputs, features, block, bits): (usize, usize, usize, usize),
        rows: usize,
        multiply: impl FnOnce(&Weight, &[QuantizedRow<L>], &mut [&mut [f32]], &mut [&mut [f32]]),
    ) {
        let (levels, scales, values) = random_weight(outputs, features, block, bits);
        let sizes = sizes_of(rows, shape);
        let weight = Weight {
            levels: &levels,
            scales: &scales,
            sizes,
        };
        let input = input_rows(rows, features);
        let quantized = quantize_rows::<L>(&input, &sizes);
        let mut fast = vec![0f32; rows * outputs];
        let mut portable = vec![0f32; rows * outputs];
        {
            let mut fast_rows: Vec<&mut [f32]> = fast.chunks_mut(outputs).collect();
            let mut portable_rows: Vec<&mut [f32]> = portable.chunks_mut(outputs).collect();
            multiply(&weight, &quantized, &mut fast_rows, &mut portable_rows);
        }
        assert_near_the_product::<L>(&input, &values, (outputs, block), &fast, "fast");
        assert_near_the_product::<L>(&input, &values, (outputs, block), &portable, "portable");
    }

    #[test]
    fn sizes_that_disagree_are_named() {
        let problem = |input: &[i64], weight: &[i64], scales, bits| {
            sizes(input, weight, scales, bits)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(problem(&[1, 200], &[37, 5, 48], 185, 8).contains("multiple of 64"));
        assert!(problem(&[1, 200], &[37, 5, 24], 185, 4).contains("not 48 (24 bytes"));
        assert!(problem(&[1, 600], &[37, 2, 512], 74, 8).contains("up to 256"));
        assert!(problem(&[1, 200], &[37, 3, 64], 111, 8).contains("do not hold"));
        assert!(problem(&[1, 200], &[37, 4, 64], 100, 8).contains("100 scales"));
        assert!(problem(&[1, 200], &[37, 4], 100, 8).contains("[N, blocks, block bytes]"));
        let sizes = sizes(&[2, 3, 200], &[37, 4, 64], 148, 8).unwrap();
        assert_eq!((sizes.rows, sizes.outputs, sizes.features), (6, 37, 200));
        let four = super::sizes(&[2, 3, 200], &[37, 4, 32], 148, 4).unwrap();
        assert_eq!((four.block, four.row_bytes()), (64, 128));
    }
}
