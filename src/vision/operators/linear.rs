//! `QuantizedLinear`: `input` times an int8 weight stored in blocks, the layout ONNX Runtime's
//! `MatMulNBits` reads (`lookout models build --precision int8`).
//!
//! Why not `MatMulNBits` itself: on the AVX2 CPU measured (2 cores), it multiplies a prefill's rows
//! 1.1x (88 rows) to 1.6x (882 rows) slower than dequantizing the weight and calling the runtime's float
//! GEMM (bench/reference/linear-kernels, the 121 weights of a 256M decoding step), which is what this
//! operator does for many rows: in Lookout's int8 decoder, the prefill of one image ran 1.22-1.38x and
//! of 13 tiles 1.40x faster than with `MatMulNBits` on the same weights. One row at a time, the kernel
//! below read the chain's weights at 24.1-26.0 GB/s where `MatMulNBits` read 19.5-22.7, but in the
//! decoder, where a step's small projections (368 KB to 2 MB) cost it a thread hand-off each, it
//! decodes at 0.90-1.03x `MatMulNBits`' speed (bench/results.md).
//!
//! Two ways, by the number of input rows:
//! - a few rows (a decoding step, a batch of them, a short prompt; fewer than [`MANY_ROWS`]): each row
//!   is quantized per block to 16 bits, and each weight row is read once for every input row, its
//!   bytes widened to 16 bits and multiplied-and-added in pairs (`vpmaddwd` on AVX2, plain integer code
//!   elsewhere), two weight rows at a time, loads of the next blocks asked for ahead. 16-bit
//!   activations keep their first 4-5 digits where `MatMulNBits`' integer path keeps 2;
//! - many rows (a prompt's prefill): the weight is dequantized to f32, once per call, into a buffer
//!   every instance shares, and ONNX Runtime's own `Gemm` multiplies (its SGEMM, on its threads),
//!   called through the C API's `InvokeOp`. The buffer stays allocated at the largest weight (7 MB for
//!   256M's gate and up). A weight over [`LARGEST_DEQUANTIZED`] values takes the row kernel instead.
//!
//! Inputs: `input` `[..., K]` (f32); `weights` `[N, blocks, block]` (u8: the level plus 128, rows
//! padded to whole blocks with 128); `scales` `[N × blocks]` (f32). Output: `[..., N]`.

use std::sync::Mutex;

use ort::AsPointer;
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
};
use ort::value::{TensorElementType, TensorRef, TensorRefMut};

/// The operator's name in graphs.
pub const NAME: &str = "QuantizedLinear";

/// From this many input rows on, the weight is dequantized and multiplied by the runtime's GEMM. Below,
/// the row kernel reads the weight once per group of up to four rows; measured on the 256M decoding
/// step's weights, dequantizing cost about what 13 rows through the row kernel do and the GEMM took
/// 0.7x the row kernel's time a row, so the two meet at about 40 rows.
const MANY_ROWS: usize = 32;

/// The most values a weight may have to be dequantized (32 MB of f32): every layer's projections of
/// SmolVLM2-256M and -500M (the largest, 500M's gate and up, 4.9 M), not their LM heads (28 M and 47 M),
/// whose prefill keeps one row of logits a prompt.
const LARGEST_DEQUANTIZED: usize = 1 << 23;

/// The input rows the row kernel multiplies together, reading each weight row once for all of them.
const ROWS_TOGETHER: usize = 4;

/// How far ahead of the block it multiplies the row kernel asks for a weight row's bytes: a measured
/// choice (bench/reference/linear-kernels: 25.1-26.0 GB/s at 1,024 bytes, 24.1 at 2,048).
const PREFETCH_AHEAD: usize = 1024;

/// The weight rows one task dequantizes for the runtime's GEMM.
const ROWS_A_TASK: usize = 64;

/// The dequantized weight, shared by every instance: kernels of one session run one at a time, and
/// sessions that run at once wait for each other only here.
static DEQUANTIZED: Mutex<Vec<f32>> = Mutex::new(Vec::new());

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

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Linear> {
        Ok(Linear {
            gemm: Gemm::new(ctx)?,
        })
    }
}

pub struct Linear {
    gemm: Gemm,
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
    block: usize,
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
        let sizes = sizes(input_shape, weight_shape, scales.len())?;
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
        if sizes.rows >= MANY_ROWS && sizes.outputs * sizes.features <= LARGEST_DEQUANTIZED {
            self.gemm.multiply(ctx, &weight, values, products)
        } else {
            multiply_rows(ctx, &weight, values, products)
        }
    }
}

fn sizes(input: &[i64], weight: &[i64], scales: usize) -> ort::Result<Sizes> {
    let dimension = |value: i64| usize::try_from(value).map_err(|_| fail("a negative dimension"));
    let (Some(&features), [outputs, blocks, block]) = (input.last(), weight) else {
        return Err(fail(format!(
            "the input must be [..., K] and the weights [N, blocks, block], not {input:?} and \
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
        block: dimension(*block)?,
    };
    // At most 256 values, so that a block's integer sums fit 32 bits (255 x 32,767 a product).
    if sizes.block == 0 || !sizes.block.is_multiple_of(16) || sizes.block > 256 {
        return Err(fail(format!(
            "the block must be a multiple of 16 values up to 256, not {}",
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
        let width = self.sizes.blocks * self.sizes.block;
        &self.levels[row * width..(row + 1) * width]
    }

    fn row_scales(&self, row: usize) -> &[f32] {
        &self.scales[row * self.sizes.blocks..(row + 1) * self.sizes.blocks]
    }

    /// Weight rows `rows` as f32, `[rows, K]`, into `out`.
    fn dequantize(&self, first: usize, out: &mut [f32]) {
        let Sizes {
            features, block, ..
        } = self.sizes;
        for (index, values) in out.chunks_exact_mut(features).enumerate() {
            let (levels, scales) = (self.row(first + index), self.row_scales(first + index));
            for ((values, levels), scale) in values
                .chunks_mut(block)
                .zip(levels.chunks(block))
                .zip(scales)
            {
                for (value, level) in values.iter_mut().zip(levels) {
                    *value = f32::from(i16::from(*level) - 128) * scale;
                }
            }
        }
    }
}

/// An input row quantized per block to 16 bits: `levels` (padded to whole blocks with zeros),
/// each block's scale, and each block's sum of levels times 128, which takes the weights' offset
/// back out of the integer products.
struct QuantizedRow {
    levels: Vec<i16>,
    scales: Vec<f32>,
    offsets: Vec<i32>,
}

impl QuantizedRow {
    fn new(values: &[f32], sizes: &Sizes) -> QuantizedRow {
        let mut levels = vec![0i16; sizes.blocks * sizes.block];
        let mut scales = Vec::with_capacity(sizes.blocks);
        let mut offsets = Vec::with_capacity(sizes.blocks);
        for (values, levels) in values
            .chunks(sizes.block)
            .zip(levels.chunks_mut(sizes.block))
        {
            let largest = values
                .iter()
                .fold(0f32, |largest, value| largest.max(value.abs()));
            let scale = if largest > 0.0 {
                largest / f32::from(i16::MAX)
            } else {
                1.0
            };
            let mut sum = 0i32;
            for (level, value) in levels.iter_mut().zip(values) {
                // Within ±i16::MAX by the scale; `as` saturates a NaN to 0.
                *level = (value / scale).round() as i16;
                sum += i32::from(*level);
            }
            scales.push(scale);
            offsets.push(128 * sum);
        }
        QuantizedRow {
            levels,
            scales,
            offsets,
        }
    }
}

/// Fewer than [`MANY_ROWS`] input rows: the weight rows cut into one contiguous run a core (one
/// stream through memory that the prefetchers follow), run on the runtime's threads, each
/// multiplying its rows by groups of up to [`ROWS_TOGETHER`] input rows straight into the output.
fn multiply_rows(
    ctx: &ComputeContext,
    weight: &Weight,
    values: &[f32],
    products: &mut [f32],
) -> ort::Result<()> {
    let sizes = weight.sizes;
    let rows: Vec<QuantizedRow> = values
        .chunks_exact(sizes.features)
        .map(|row| QuantizedRow::new(row, &sizes))
        .collect();
    // Runs of an even number of rows, the kernel's pairs.
    let run = sizes.outputs.div_ceil(cores()).next_multiple_of(2);
    let runs = sizes.outputs.div_ceil(run);
    // Each run's part of each output row.
    let mut parts: Vec<Vec<&mut [f32]>> =
        (0..runs).map(|_| Vec::with_capacity(rows.len())).collect();
    for output in products.chunks_exact_mut(sizes.outputs) {
        for (parts, part) in parts.iter_mut().zip(output.chunks_mut(run)) {
            parts.push(part);
        }
    }
    let parts: Vec<Mutex<Vec<&mut [f32]>>> = parts.into_iter().map(Mutex::new).collect();
    let multiply = |index: usize| {
        let first = index * run;
        let outputs = first..(first + run).min(sizes.outputs);
        let mut parts = parts[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (group, out) in rows
            .chunks(ROWS_TOGETHER)
            .zip(parts.chunks_mut(ROWS_TOGETHER))
        {
            dot_rows(weight, outputs.clone(), group, out);
        }
    };
    if runs == 1 {
        multiply(0);
    } else {
        ctx.par_for(runs, runs, multiply)?;
    }
    Ok(())
}

/// The CPU's cores, as many runs as the row kernel makes: asked once, since the standard library
/// reads the process's cgroup files to answer (about 40 µs, a third of a projection's time).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Weight rows `outputs` times the input rows `group` (up to [`ROWS_TOGETHER`]), into `out` (one
/// slice of `outputs.len()` values an input row).
fn dot_rows(
    weight: &Weight,
    outputs: std::ops::Range<usize>,
    group: &[QuantizedRow],
    out: &mut [&mut [f32]],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        match group {
            [a] => return avx2::dot_rows::<1>(weight, outputs, [a], out),
            [a, b] => return avx2::dot_rows::<2>(weight, outputs, [a, b], out),
            [a, b, c] => return avx2::dot_rows::<3>(weight, outputs, [a, b, c], out),
            [a, b, c, d] => return avx2::dot_rows::<4>(weight, outputs, [a, b, c, d], out),
            _ => {}
        }
    }
    dot_rows_portable(weight, outputs, group, out);
}

/// [`dot_rows`] in plain integer code, for CPUs without AVX2: the same sums.
fn dot_rows_portable(
    weight: &Weight,
    outputs: std::ops::Range<usize>,
    group: &[QuantizedRow],
    out: &mut [&mut [f32]],
) {
    let block = weight.sizes.block;
    for (index, output) in outputs.enumerate() {
        let (levels, scales) = (weight.row(output), weight.row_scales(output));
        for (input, out) in group.iter().zip(out.iter_mut()) {
            let mut sum = 0f32;
            for (b, scale) in scales.iter().enumerate() {
                let dot: i32 = levels[b * block..(b + 1) * block]
                    .iter()
                    .zip(&input.levels[b * block..(b + 1) * block])
                    .map(|(weight, input)| i32::from(*weight) * i32::from(*input))
                    .sum();
                sum += (dot - input.offsets[b]) as f32 * (scale * input.scales[b]);
            }
            out[index] = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The row kernel in AVX2: per block, each weight row's bytes widened to 16 bits (`vpmovzxbw`)
    //! and multiplied in pairs by the input's 16-bit levels (`vpmaddwd`), summed in 32 bits; the block's
    //! sum converted to f32 and scaled into a float accumulator. Two weight rows at a time, so that
    //! each input load serves both; one call runs over every pair of a unit, its loop kept inside the
    //! function compiled for AVX2.

    use std::arch::x86_64::*;

    use super::{PREFETCH_AHEAD, QuantizedRow, Weight};

    /// See [`super::dot_rows`]; `A` input rows. The caller has checked that the CPU has AVX2 and FMA.
    #[allow(unsafe_code)]
    pub(super) fn dot_rows<const A: usize>(
        weight: &Weight,
        outputs: std::ops::Range<usize>,
        group: [&QuantizedRow; A],
        out: &mut [&mut [f32]],
    ) {
        // SAFETY: the CPU has AVX2 and FMA (the caller checked); the weight rows are whole blocks of a
        // multiple of 16 bytes (checked in `sizes`), each input row's levels are as long, and `out`
        // holds `A` slices of `outputs.len()` values.
        unsafe { dot_rows_avx2::<A>(weight, outputs, group, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(unsafe_code)]
    unsafe fn dot_rows_avx2<const A: usize>(
        weight: &Weight,
        outputs: std::ops::Range<usize>,
        group: [&QuantizedRow; A],
        out: &mut [&mut [f32]],
    ) {
        let (blocks, block) = (weight.sizes.blocks, weight.sizes.block);
        let levels: [*const i16; A] = group.map(|input| input.levels.as_ptr());
        let mut output = outputs.start;
        while output < outputs.end {
            // An odd last row is paired with itself and its second result dropped.
            let second = (output + 1).min(outputs.end - 1);
            let rows = [weight.row(output).as_ptr(), weight.row(second).as_ptr()];
            let scales = [weight.row_scales(output), weight.row_scales(second)];
            let mut sums = [[_mm256_setzero_ps(); 2]; A];
            let mut offsets = [[0f32; 2]; A];
            // `b` indexes the weight rows' scales and the inputs' scales and offsets alike.
            #[allow(clippy::needless_range_loop)]
            for b in 0..blocks {
                let start = b * block;
                for row in rows {
                    // A hint past the weight's end is harmless: prefetching never faults.
                    let ahead = row.wrapping_add(start + PREFETCH_AHEAD);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
                }
                let mut products = [[_mm256_setzero_si256(); 2]; A];
                let mut at = start;
                while at < start + block {
                    // SAFETY: `at + 16 <= blocks * block`, the length of each weight row and input row.
                    let (first, other) = unsafe {
                        (
                            _mm256_cvtepu8_epi16(_mm_loadu_si128(rows[0].add(at).cast())),
                            _mm256_cvtepu8_epi16(_mm_loadu_si128(rows[1].add(at).cast())),
                        )
                    };
                    for a in 0..A {
                        // SAFETY: as above.
                        let input = unsafe { _mm256_loadu_si256(levels[a].add(at).cast()) };
                        products[a][0] =
                            _mm256_add_epi32(products[a][0], _mm256_madd_epi16(first, input));
                        products[a][1] =
                            _mm256_add_epi32(products[a][1], _mm256_madd_epi16(other, input));
                    }
                    at += 16;
                }
                for a in 0..A {
                    for j in 0..2 {
                        let scale = scales[j][b] * group[a].scales[b];
                        sums[a][j] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(products[a][j]),
                            _mm256_set1_ps(scale),
                            sums[a][j],
                        );
                        offsets[a][j] += group[a].offsets[b] as f32 * scale;
                    }
                }
            }
            for (a, out) in out.iter_mut().enumerate().take(A) {
                out[output - outputs.start] = horizontal_sum(sums[a][0]) - offsets[a][0];
                if second != output {
                    out[second - outputs.start] = horizontal_sum(sums[a][1]) - offsets[a][1];
                }
            }
            output += 2;
        }
    }

    #[target_feature(enable = "avx2")]
    fn horizontal_sum(values: __m256) -> f32 {
        let halves = _mm_add_ps(
            _mm256_extractf128_ps(values, 1),
            _mm256_castps256_ps128(values),
        );
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }
}

/// ONNX Runtime's own `Gemm` (`transB = 1`: the weight as stored, `[N, K]`), created once per kernel
/// and called through the C API, which ort does not wrap.
struct Gemm {
    operator: std::ptr::NonNull<ort::sys::OrtOp>,
}

// SAFETY: an OrtOp is a kernel the runtime created and never changes after; ONNX Runtime runs kernels
// from any of its threads, and this one is released once, in `drop`.
#[allow(unsafe_code)]
unsafe impl Send for Gemm {}

impl Gemm {
    /// Every attribute is given: the runtime fills no defaults for an operator made this way.
    #[allow(unsafe_code)]
    fn new(ctx: &KernelContext) -> ort::Result<Gemm> {
        use ort::sys::OrtOpAttrType::{ORT_OP_ATTR_FLOAT, ORT_OP_ATTR_INT};
        let api = ort::api();
        let (no, yes, one) = (0i64, 1i64, 1f32);
        let wanted: [(&std::ffi::CStr, *const std::ffi::c_void, _); 4] = [
            (c"transA", (&raw const no).cast(), ORT_OP_ATTR_INT),
            (c"transB", (&raw const yes).cast(), ORT_OP_ATTR_INT),
            (c"alpha", (&raw const one).cast(), ORT_OP_ATTR_FLOAT),
            (c"beta", (&raw const one).cast(), ORT_OP_ATTR_FLOAT),
        ];
        let mut attributes: Vec<*mut ort::sys::OrtOpAttr> = Vec::with_capacity(wanted.len());
        let mut operator: *mut ort::sys::OrtOp = std::ptr::null_mut();
        let mut names = [c"T".as_ptr()];
        let types = [ort::sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT];
        // SAFETY: every pointer passed outlives its call; the attributes are released after the
        // operator is made (ONNX Runtime copies them), and each status is checked.
        let made = unsafe {
            let mut made = Ok(());
            for (name, value, kind) in wanted {
                let mut attribute = std::ptr::null_mut();
                made = ort::Error::result_from_status((api.CreateOpAttr)(
                    name.as_ptr(),
                    value,
                    1,
                    kind,
                    &mut attribute,
                ));
                if made.is_err() {
                    break;
                }
                attributes.push(attribute);
            }
            if made.is_ok() {
                let given: Vec<*const ort::sys::OrtOpAttr> = attributes
                    .iter()
                    .map(|attribute| attribute.cast_const())
                    .collect();
                made = ort::Error::result_from_status((api.CreateOp)(
                    ctx.ptr(),
                    c"Gemm".as_ptr(),
                    c"".as_ptr(),
                    13,
                    names.as_mut_ptr(),
                    types.as_ptr(),
                    1,
                    given.as_ptr(),
                    given.len() as i32,
                    2,
                    1,
                    &mut operator,
                ));
            }
            for attribute in attributes {
                (api.ReleaseOpAttr)(attribute);
            }
            made
        };
        made?;
        let operator =
            std::ptr::NonNull::new(operator).ok_or_else(|| fail("the runtime made no Gemm"))?;
        Ok(Gemm { operator })
    }

    /// `products = values · weightᵀ`, the weight dequantized into the shared buffer first.
    #[allow(unsafe_code)]
    fn multiply(
        &self,
        ctx: &ComputeContext,
        weight: &Weight,
        values: &[f32],
        products: &mut [f32],
    ) -> ort::Result<()> {
        let Sizes {
            rows,
            features,
            outputs,
            ..
        } = weight.sizes;
        let mut dequantized = DEQUANTIZED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if dequantized.len() < outputs * features {
            dequantized.resize(outputs * features, 0.0);
        }
        let buffer = &mut dequantized[..outputs * features];
        let tasks: Vec<Mutex<&mut [f32]>> = buffer
            .chunks_mut(ROWS_A_TASK * features)
            .map(Mutex::new)
            .collect();
        ctx.par_for(tasks.len(), tasks.len(), |index| {
            let mut out = tasks[index]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            weight.dequantize(index * ROWS_A_TASK, &mut out);
        })?;
        drop(tasks);
        let input = TensorRef::from_array_view(([rows, features], values))?;
        let weight = TensorRef::from_array_view(([outputs, features], &*buffer))?;
        let output = TensorRefMut::from_array_view_mut(([rows, outputs], products))?;
        let inputs = [input.ptr(), weight.ptr()];
        // Gemm writes the output's data, which `output` borrows mutably, never the value itself.
        let outputs = [output.ptr().cast_mut()];
        let api = ort::api();
        // SAFETY: the values outlive the call, the output is `[rows, N]` as Gemm writes it, and the
        // operator was made for two float inputs and one output.
        unsafe {
            ort::Error::result_from_status((api.InvokeOp)(
                ctx.ptr(),
                self.operator.as_ptr(),
                inputs.as_ptr(),
                2,
                outputs.as_ptr(),
                1,
            ))
        }
    }
}

impl Drop for Gemm {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: made by CreateOp in `new`, released once.
        unsafe { (ort::api().ReleaseOp)(self.operator.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight of `outputs` rows of `features` with random levels and scales, and its f32 values.
    fn random_weight(
        outputs: usize,
        features: usize,
        block: usize,
    ) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let blocks = features.div_ceil(block);
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut levels = vec![128u8; outputs * blocks * block];
        let scales: Vec<f32> = (0..outputs * blocks)
            .map(|_| (next() % 1000) as f32 * 1e-5 - 5e-3)
            .collect();
        let mut values = vec![0f32; outputs * features];
        for row in 0..outputs {
            for column in 0..features {
                let level = (next() % 256) as u8;
                levels[row * blocks * block + column] = level;
                values[row * features + column] =
                    f32::from(i16::from(level) - 128) * scales[row * blocks + column / block];
            }
        }
        (levels, scales, values)
    }

    fn sizes_of(rows: usize, outputs: usize, features: usize, block: usize) -> Sizes {
        Sizes {
            rows,
            features,
            outputs,
            blocks: features.div_ceil(block),
            block,
        }
    }

    /// Each way of the row kernel (the CPU's, and the portable one) against the plain product in f64 of
    /// the input and the dequantized weight, for 1 to 5 input rows (a group of 4 and one of 1), an odd
    /// number of outputs (the last pair is one row) and a width that is no multiple of the block.
    #[test]
    fn the_row_kernel_agrees_with_the_dequantized_product() {
        let (outputs, features, block) = (37, 200, 64);
        let (levels, scales, values) = random_weight(outputs, features, block);
        for rows in 1..=5 {
            let sizes = sizes_of(rows, outputs, features, block);
            let weight = Weight {
                levels: &levels,
                scales: &scales,
                sizes,
            };
            let input: Vec<f32> = (0..rows * features)
                .map(|i| (i * 7919 % 1000) as f32 / 100.0 - 5.0)
                .collect();
            let quantized: Vec<QuantizedRow> = input
                .chunks_exact(features)
                .map(|row| QuantizedRow::new(row, &sizes))
                .collect();
            let mut fast = vec![0f32; rows * outputs];
            let mut portable = vec![0f32; rows * outputs];
            let mut fast_rows: Vec<&mut [f32]> = fast.chunks_mut(outputs).collect();
            let mut portable_rows: Vec<&mut [f32]> = portable.chunks_mut(outputs).collect();
            for ((group, fast), portable) in quantized
                .chunks(ROWS_TOGETHER)
                .zip(fast_rows.chunks_mut(ROWS_TOGETHER))
                .zip(portable_rows.chunks_mut(ROWS_TOGETHER))
            {
                dot_rows(&weight, 0..outputs, group, fast);
                dot_rows_portable(&weight, 0..outputs, group, portable);
            }
            drop((fast_rows, portable_rows));
            for row in 0..rows {
                for output in 0..outputs {
                    let exact: f64 = (0..features)
                        .map(|f| {
                            f64::from(input[row * features + f])
                                * f64::from(values[output * features + f])
                        })
                        .sum();
                    let scale: f64 = (0..features)
                        .map(|f| {
                            (f64::from(input[row * features + f])
                                * f64::from(values[output * features + f]))
                            .abs()
                        })
                        .sum();
                    // 16-bit inputs: each value within 2^-16 of its block's largest.
                    let bound = scale * 1e-4 + 1e-6;
                    for (way, got) in [("fast", &fast), ("portable", &portable)] {
                        let got = f64::from(got[row * outputs + output]);
                        assert!(
                            (got - exact).abs() <= bound,
                            "{way} rows={rows} [{row}, {output}]: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn dequantizing_gives_the_levels_times_their_block_scale() {
        let (outputs, features, block) = (5, 150, 32);
        let (levels, scales, values) = random_weight(outputs, features, block);
        let weight = Weight {
            levels: &levels,
            scales: &scales,
            sizes: sizes_of(1, outputs, features, block),
        };
        let mut out = vec![0f32; 3 * features];
        weight.dequantize(2, &mut out);
        assert_eq!(out, values[2 * features..5 * features]);
    }

    #[test]
    fn sizes_that_disagree_are_named() {
        let problem = |input: &[i64], weight: &[i64], scales| {
            sizes(input, weight, scales).err().unwrap().to_string()
        };
        assert!(problem(&[1, 200], &[37, 5, 40], 185).contains("multiple of 16"));
        assert!(problem(&[1, 600], &[37, 2, 512], 74).contains("up to 256"));
        assert!(problem(&[1, 200], &[37, 3, 64], 111).contains("do not hold"));
        assert!(problem(&[1, 200], &[37, 4, 64], 100).contains("100 scales"));
        assert!(problem(&[1, 200], &[37, 4], 100).contains("[N, blocks, block]"));
        let sizes = sizes(&[2, 3, 200], &[37, 4, 64], 148).unwrap();
        assert_eq!((sizes.rows, sizes.outputs, sizes.features), (6, 37, 200));
    }
}
