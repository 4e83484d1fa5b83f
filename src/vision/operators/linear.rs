//! `QuantizedLinear`: `input` times an int8 weight stored in blocks, the layout ONNX Runtime's
//! `MatMulNBits` reads (`lookout models build --precision int8`).
//!
//! Why not `MatMulNBits` itself: on the AVX2 CPU measured (2 cores), its int8 kernel multiplies a
//! prefill's rows more slowly than the runtime's float GEMM does, and reads a decoding step's weights
//! more slowly than the row kernel below (bench/reference/linear-kernels: 19.5-22.7 GB/s against
//! 24.1-26.0 on the 121 weights of a 256M decoding step). In the decoder, where a step's small
//! projections (368 KB to 2 MB) cost a thread hand-off each, decoding runs at 1.00-1.07x
//! `MatMulNBits`' speed, a one-image prefill at 1.5-1.9x (bench/results.md).
//!
//! Both ways multiply integers: the input rows are quantized per block to 16 bits, the weight's bytes
//! widened to 16 bits, and products summed in pairs in 32 bits (`vpmaddwd` on AVX2, plain integer code
//! elsewhere), each block's sum then scaled into a float. 16-bit activations keep their first 4-5
//! digits where `MatMulNBits`' integer path keeps 2; `vpmaddwd` does twice the multiply-adds of a
//! float FMA an instruction (1.78x measured on one core: 76 against 42.7 G a second).
//! - a few rows (a decoding step, a batch of them, a short prompt; fewer than [`MANY_ROWS`]): each
//!   weight row is read once for up to [`ROWS_TOGETHER`] input rows, two weight rows at a time, loads of
//!   the next blocks asked for ahead, so reading the weight from memory sets the pace;
//! - many rows (a prompt's prefill): a GEMM. [`PANEL`] weight rows at a time are widened into a small
//!   packed panel, and each group of [`TILE_ROWS`] input rows is multiplied against it in registers, so
//!   the weight is read from memory once a call and the multiplying, not the reading, sets the pace.
//!
//! Inputs: `input` `[..., K]` (f32); `weights` `[N, blocks, block]` (u8: the level plus 128, rows
//! padded to whole blocks with 128); `scales` `[N × blocks]` (f32). Output: `[..., N]`.

use std::sync::Mutex;

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

use super::arithmetic::prefetch;

/// The operator's name in graphs.
pub const NAME: &str = "QuantizedLinear";

/// From this many input rows on, the GEMM multiplies; below, the row kernel. Measured on one core,
/// on a 256M gate-and-up weight (3072 x 576) read from memory: the GEMM took 1.39x the row kernel's
/// time at 4 rows, 0.98x at 8, 0.80x at 12 and 0.69x at 32.
const MANY_ROWS: usize = 8;

/// The input rows the row kernel multiplies together, reading each weight row once for all of them.
const ROWS_TOGETHER: usize = 4;

/// How far ahead of the block it multiplies the row kernel asks for a weight row's bytes: a measured
/// choice (bench/reference/linear-kernels: 25.1-26.0 GB/s at 1,024 bytes, 24.1 at 2,048).
const PREFETCH_AHEAD: usize = 1024;

/// The weight rows (output features) the GEMM packs together: two AVX2 registers of eight sums.
const PANEL: usize = 16;

/// The input rows the GEMM multiplies against a panel at once: their 12 sums, the panel's two
/// registers and a broadcast input take 15 of AVX2's 16 registers.
const TILE_ROWS: usize = 6;

/// The input rows the GEMM multiplies against a task's panels before it goes on to the next ones, so
/// that they stay in the core's cache with the panels (at 256M's sizes, 110-295 KB of rows and
/// 240-442 KB of panels, within the CPU measured's 1 MB L2). At 13 tiles (884 rows) the
/// projections took 0.91x and 0.94x the time of one pass over every row (`lookout bench --split`, two
/// rounds alternating the two builds).
const ROWS_A_PASS: usize = 16 * TILE_ROWS;

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

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Linear> {
        Ok(Linear)
    }
}

pub struct Linear;

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
        if sizes.rows >= MANY_ROWS {
            multiply_many(ctx, &weight, values, products)
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

    /// Weight rows `rows`' bytes (none for an empty range).
    fn rows(&self, rows: std::ops::Range<usize>) -> &[u8] {
        let width = self.sizes.blocks * self.sizes.block;
        &self.levels[rows.start.min(rows.end) * width..rows.end * width]
    }

    fn row_scales(&self, row: usize) -> &[f32] {
        &self.scales[row * self.sizes.blocks..(row + 1) * self.sizes.blocks]
    }
}

/// An input row quantized per block to 16 bits: `levels` (padded to whole blocks with zeros),
/// each block's scale, and each block's sum of levels times 128, which takes the weights' offset
/// back out of the row kernel's integer products (the GEMM's panels have it taken off their levels).
struct QuantizedRow {
    levels: Vec<i16>,
    scales: Vec<f32>,
    offsets: Vec<i32>,
}

impl QuantizedRow {
    fn new(values: &[f32], sizes: &Sizes) -> QuantizedRow {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return avx2::quantize_row(values, sizes);
        }
        QuantizedRow::quantize(values, sizes)
    }

    /// Always inlined, so that `avx2::quantize_row` compiles it with AVX2's rounding and vectors.
    #[inline(always)]
    #[allow(unsafe_code)]
    fn quantize(values: &[f32], sizes: &Sizes) -> QuantizedRow {
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
            let inverse = scale.recip();
            let mut sum = 0i32;
            for (level, value) in levels.iter_mut().zip(values) {
                // Within ±i16::MAX by the scale; a NaN becomes 0. (`as i16` would say the same, but
                // its checks keep the loop out of vectors.)
                let scaled = (value * inverse).round_ties_even();
                let scaled = if scaled.is_nan() {
                    0.0
                } else {
                    scaled.clamp(-f32::from(i16::MAX), f32::from(i16::MAX))
                };
                // SAFETY: `scaled` is a whole number within i16's range.
                *level = unsafe { scaled.to_int_unchecked::<i16>() };
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

fn quantize_rows(values: &[f32], sizes: &Sizes) -> Vec<QuantizedRow> {
    values
        .chunks_exact(sizes.features)
        .map(|row| QuantizedRow::new(row, sizes))
        .collect()
}

/// [`quantize_rows`] for many rows, a run of rows a core.
fn quantize_rows_on_every_core(
    ctx: &ComputeContext,
    values: &[f32],
    sizes: &Sizes,
) -> ort::Result<Vec<QuantizedRow>> {
    let run = sizes.rows.div_ceil(cores()) * sizes.features;
    let runs: Vec<Mutex<Vec<QuantizedRow>>> =
        values.chunks(run).map(|_| Mutex::new(Vec::new())).collect();
    ctx.par_for(runs.len(), runs.len(), |index| {
        let rows = quantize_rows(
            &values[index * run..((index + 1) * run).min(values.len())],
            sizes,
        );
        *runs[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = rows;
    })?;
    Ok(runs
        .into_iter()
        .flat_map(|rows| {
            rows.into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        })
        .collect())
}

/// Fewer than [`MANY_ROWS`] input rows: the weight rows cut into contiguous runs, [`TASKS_A_CORE`] a
/// core (each a stream through memory that the prefetchers follow), each multiplying its rows by
/// groups of up to [`ROWS_TOGETHER`] input rows straight into the output.
fn multiply_rows(
    ctx: &ComputeContext,
    weight: &Weight,
    values: &[f32],
    products: &mut [f32],
) -> ort::Result<()> {
    let sizes = weight.sizes;
    let rows = quantize_rows(values, &sizes);
    // Runs of an even number of rows, the kernel's pairs.
    let run = sizes
        .outputs
        .div_ceil(cores() * TASKS_A_CORE)
        .next_multiple_of(2);
    by_columns(ctx, products, sizes.outputs, run, |first, parts| {
        let outputs = first..(first + run).min(sizes.outputs);
        for (group, out) in rows
            .chunks(ROWS_TOGETHER)
            .zip(parts.chunks_mut(ROWS_TOGETHER))
        {
            dot_rows(weight, outputs.clone(), group, out);
        }
    })
}

/// [`MANY_ROWS`] input rows or more: runs of whole panels, [`TASKS_A_CORE`] a core. Each task packs
/// its panels one at a time, multiplying the first [`ROWS_A_PASS`] input rows against each as it is
/// packed, then keeps them for the next passes of as many rows.
fn multiply_many(
    ctx: &ComputeContext,
    weight: &Weight,
    values: &[f32],
    products: &mut [f32],
) -> ort::Result<()> {
    let sizes = weight.sizes;
    let rows = quantize_rows_on_every_core(ctx, values, &sizes)?;
    let panels = sizes.outputs.div_ceil(PANEL);
    let run = panels.div_ceil(cores() * TASKS_A_CORE) * PANEL;
    by_columns(ctx, products, sizes.outputs, run, |first, parts| {
        let end = (first + run).min(sizes.outputs);
        let starts = (first..end).step_by(PANEL);
        let mut panels: Vec<Panel> = Vec::with_capacity(starts.len());
        for (pass, (rows, parts)) in rows
            .chunks(ROWS_A_PASS)
            .zip(parts.chunks_mut(ROWS_A_PASS))
            .enumerate()
        {
            for (index, start) in starts.clone().enumerate() {
                if pass == 0 {
                    let mut panel = Panel::new(&sizes);
                    panel.pack(weight, start);
                    panels.push(panel);
                    // The next panel's weight rows come from memory while this one is multiplied.
                    prefetch(weight.rows(start + PANEL..(start + 2 * PANEL).min(end)));
                }
                let columns = start - first..(start + PANEL).min(end) - first;
                for (group, out) in rows.chunks(TILE_ROWS).zip(parts.chunks_mut(TILE_ROWS)) {
                    multiply_panel(&panels[index], group, out, columns.clone());
                }
            }
        }
    })
}

/// [`PANEL`] weight rows widened to 16 bits, the 128 taken off, laid out for the GEMM: for each pair
/// of features, the rows' two levels side by side (`[blocks × block / 2][PANEL][2]`), which one
/// `vpmaddwd` multiplies by an input's pair; and the rows' scales (`[blocks][PANEL]`). Rows past the
/// weight's last are zeros.
struct Panel {
    levels: Vec<i16>,
    scales: Vec<f32>,
    sizes: Sizes,
}

impl Panel {
    fn new(sizes: &Sizes) -> Panel {
        Panel {
            levels: vec![0; sizes.blocks * sizes.block * PANEL],
            scales: vec![0.0; sizes.blocks * PANEL],
            sizes: *sizes,
        }
    }

    /// Packs weight rows `first..first + PANEL`.
    fn pack(&mut self, weight: &Weight, first: usize) {
        #[cfg(target_arch = "x86_64")]
        if first + PANEL <= self.sizes.outputs && std::arch::is_x86_feature_detected!("avx2") {
            avx2::pack_levels(&mut self.levels, weight, first);
            self.pack_scales(weight, first);
            return;
        }
        self.pack_portable(weight, first);
    }

    /// [`Panel::pack`] in plain code, for CPUs without AVX2 and a panel past the weight's last row.
    fn pack_portable(&mut self, weight: &Weight, first: usize) {
        for column in 0..PANEL {
            let row = first + column;
            for (index, pair) in self.levels.chunks_exact_mut(2 * PANEL).enumerate() {
                let levels = if row < self.sizes.outputs {
                    let levels = &weight.row(row)[2 * index..2 * index + 2];
                    [i16::from(levels[0]) - 128, i16::from(levels[1]) - 128]
                } else {
                    [0, 0]
                };
                pair[2 * column..2 * column + 2].copy_from_slice(&levels);
            }
        }
        self.pack_scales(weight, first);
    }

    fn pack_scales(&mut self, weight: &Weight, first: usize) {
        for column in 0..PANEL {
            let row = first + column;
            for (b, scales) in self.scales.chunks_exact_mut(PANEL).enumerate() {
                scales[column] = if row < self.sizes.outputs {
                    weight.row_scales(row)[b]
                } else {
                    0.0
                };
            }
        }
    }
}

/// Input rows `group` (up to [`TILE_ROWS`]) times the panel, into `out[row][columns]`, which hold the
/// panel's first `columns.len()` outputs.
fn multiply_panel(
    panel: &Panel,
    group: &[QuantizedRow],
    out: &mut [&mut [f32]],
    columns: std::ops::Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        match group {
            [a] => return avx2::multiply_panel::<1>(panel, [a], out, columns),
            [a, b] => return avx2::multiply_panel::<2>(panel, [a, b], out, columns),
            [a, b, c] => return avx2::multiply_panel::<3>(panel, [a, b, c], out, columns),
            [a, b, c, d] => return avx2::multiply_panel::<4>(panel, [a, b, c, d], out, columns),
            [a, b, c, d, e] => {
                return avx2::multiply_panel::<5>(panel, [a, b, c, d, e], out, columns);
            }
            [a, b, c, d, e, f] => {
                return avx2::multiply_panel::<6>(panel, [a, b, c, d, e, f], out, columns);
            }
            _ => {}
        }
    }
    multiply_panel_portable(panel, group, out, columns);
}

/// [`multiply_panel`] in plain integer code, for CPUs without AVX2: the same sums.
fn multiply_panel_portable(
    panel: &Panel,
    group: &[QuantizedRow],
    out: &mut [&mut [f32]],
    columns: std::ops::Range<usize>,
) {
    let pairs = panel.sizes.block / 2;
    for (input, out) in group.iter().zip(out.iter_mut()) {
        let mut sums = [0f32; PANEL];
        for (b, (levels, scales)) in panel
            .levels
            .chunks_exact(pairs * 2 * PANEL)
            .zip(panel.scales.chunks_exact(PANEL))
            .enumerate()
        {
            let mut products = [0i32; PANEL];
            let inputs = &input.levels[b * 2 * pairs..(b + 1) * 2 * pairs];
            for (weights, both) in levels.chunks_exact(2 * PANEL).zip(inputs.chunks_exact(2)) {
                for (product, weight) in products.iter_mut().zip(weights.chunks_exact(2)) {
                    *product += i32::from(both[0]) * i32::from(weight[0])
                        + i32::from(both[1]) * i32::from(weight[1]);
                }
            }
            for ((sum, product), scale) in sums.iter_mut().zip(products).zip(scales) {
                *sum += product as f32 * (scale * input.scales[b]);
            }
        }
        out[columns.clone()].copy_from_slice(&sums[..columns.len()]);
    }
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
    //! The kernels in AVX2. Both multiply 16-bit levels in pairs (`vpmaddwd`), sum a block in 32
    //! bits, then convert the block's sums to f32 and scale them into float accumulators; each call
    //! runs its whole loop inside the function compiled for AVX2.
    //! - The row kernel: each weight row's bytes widened to 16 bits (`vpmovzxbw`) as they are read,
    //!   two weight rows at a time, so that each input load serves both.
    //! - The GEMM's: an input's pair of levels broadcast to every lane (`vpbroadcastd`) against a
    //!   packed panel's pair of registers, up to six input rows a pass, so each panel load serves
    //!   twelve multiply-adds.

    use std::arch::x86_64::*;

    use super::{PANEL, PREFETCH_AHEAD, Panel, QuantizedRow, Sizes, Weight};

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

    /// [`QuantizedRow::quantize`] compiled for AVX2. The caller has checked that the CPU has AVX2 and
    /// FMA.
    #[allow(unsafe_code)]
    pub(super) fn quantize_row(values: &[f32], sizes: &Sizes) -> QuantizedRow {
        // SAFETY: the CPU has AVX2 and FMA (the caller checked).
        unsafe { quantize_row_avx2(values, sizes) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn quantize_row_avx2(values: &[f32], sizes: &Sizes) -> QuantizedRow {
        QuantizedRow::quantize(values, sizes)
    }

    /// [`Panel::pack`]'s levels, for a panel of rows within the weight: eight rows at a time, 16
    /// features of each loaded, offset to signed and widened to 16 bits, then the 8 x 8 pairs
    /// transposed so that each register holds one pair of features of the eight rows.
    #[allow(unsafe_code)]
    pub(super) fn pack_levels(levels: &mut [i16], weight: &Weight, first: usize) {
        assert!(first + PANEL <= weight.sizes.outputs);
        assert_eq!(
            levels.len(),
            weight.sizes.blocks * weight.sizes.block * PANEL
        );
        // SAFETY: the CPU has AVX2 (the caller checked); the rows are within the weight (asserted),
        // each `blocks × block` bytes, a multiple of 16, and `levels` holds `PANEL` levels a feature.
        unsafe { pack_levels_avx2(levels, weight, first) }
    }

    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    unsafe fn pack_levels_avx2(levels: &mut [i16], weight: &Weight, first: usize) {
        let width = weight.sizes.blocks * weight.sizes.block;
        let flip = _mm_set1_epi8(i8::MIN);
        let out = levels.as_mut_ptr();
        for half in 0..2 {
            let rows: [*const u8; 8] =
                std::array::from_fn(|r| weight.row(first + 8 * half + r).as_ptr());
            for feature in (0..width).step_by(16) {
                // Eight registers of eight pairs: `pairs[r]` is row r's features `feature..+16`.
                let pairs: [__m256i; 8] = std::array::from_fn(|r| {
                    // SAFETY: `feature + 16 <= width`, the row's length.
                    let bytes = unsafe { _mm_loadu_si128(rows[r].add(feature).cast()) };
                    _mm256_cvtepi8_epi16(_mm_xor_si128(bytes, flip))
                });
                for (p, pair) in transpose(pairs).into_iter().enumerate() {
                    // SAFETY: pair `feature / 2 + p` of `width / 2`; `PANEL` levels of `2 × PANEL`.
                    unsafe {
                        let at = out.add((feature / 2 + p) * 2 * PANEL + half * PANEL);
                        _mm256_storeu_si256(at.cast(), pair);
                    }
                }
            }
        }
    }

    /// An 8 x 8 transpose of 32-bit lanes: lane `p` of register `r` to lane `r` of register `p`.
    #[target_feature(enable = "avx2")]
    fn transpose(rows: [__m256i; 8]) -> [__m256i; 8] {
        let pairs: [__m256i; 8] = std::array::from_fn(|i| {
            let (a, b) = (
                rows[i / 4 * 4 + i % 4 / 2 * 2],
                rows[i / 4 * 4 + i % 4 / 2 * 2 + 1],
            );
            if i % 2 == 0 {
                _mm256_unpacklo_epi32(a, b)
            } else {
                _mm256_unpackhi_epi32(a, b)
            }
        });
        // `pairs`: for rows 0-3 then 4-7, [lo(0,1), hi(0,1), lo(2,3), hi(2,3)].
        let quads: [__m256i; 8] = std::array::from_fn(|i| {
            let base = i / 4 * 4;
            let (a, b) = (pairs[base + i % 4 / 2], pairs[base + 2 + i % 4 / 2]);
            if i % 2 == 0 {
                _mm256_unpacklo_epi64(a, b)
            } else {
                _mm256_unpackhi_epi64(a, b)
            }
        });
        // `quads[i]` for i < 4: lanes i and i + 4 of rows 0-3, one in each 128-bit half; i >= 4,
        // of rows 4-7.
        std::array::from_fn(|p| {
            let (a, b) = (quads[p % 4], quads[4 + p % 4]);
            if p < 4 {
                _mm256_permute2x128_si256::<0x20>(a, b)
            } else {
                _mm256_permute2x128_si256::<0x31>(a, b)
            }
        })
    }

    /// See [`super::multiply_panel`]; `R` input rows. The caller has checked that the CPU has AVX2 and
    /// FMA.
    #[allow(unsafe_code)]
    pub(super) fn multiply_panel<const R: usize>(
        panel: &Panel,
        group: [&QuantizedRow; R],
        out: &mut [&mut [f32]],
        columns: std::ops::Range<usize>,
    ) {
        // SAFETY: the CPU has AVX2 and FMA (the caller checked); the panel holds `2 × PANEL` levels for
        // each of the `blocks × block / 2` pairs of features and `PANEL` scales a block, each input
        // row's levels are `blocks × block` long, and `out` holds `R` slices reaching `columns`.
        unsafe { multiply_panel_avx2::<R>(panel, group, out, columns) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(unsafe_code)]
    unsafe fn multiply_panel_avx2<const R: usize>(
        panel: &Panel,
        group: [&QuantizedRow; R],
        out: &mut [&mut [f32]],
        columns: std::ops::Range<usize>,
    ) {
        let pairs = panel.sizes.block / 2;
        let levels = panel.levels.as_ptr();
        let inputs: [*const i16; R] = group.map(|input| input.levels.as_ptr());
        let mut sums = [[_mm256_setzero_ps(); 2]; R];
        for (b, scales) in panel.scales.chunks_exact(PANEL).enumerate() {
            let mut products = [[_mm256_setzero_si256(); 2]; R];
            for pair in b * pairs..(b + 1) * pairs {
                // SAFETY: `pair < blocks × block / 2` (see `multiply_panel`).
                let (low, high) = unsafe {
                    let weights = levels.add(pair * 2 * PANEL);
                    (
                        _mm256_loadu_si256(weights.cast()),
                        _mm256_loadu_si256(weights.add(PANEL).cast()),
                    )
                };
                for r in 0..R {
                    // SAFETY: `2 × pair + 1 < blocks × block`, the input row's length.
                    let both = unsafe { inputs[r].add(2 * pair).cast::<i32>().read_unaligned() };
                    let both = _mm256_set1_epi32(both);
                    products[r][0] = _mm256_add_epi32(products[r][0], _mm256_madd_epi16(both, low));
                    products[r][1] =
                        _mm256_add_epi32(products[r][1], _mm256_madd_epi16(both, high));
                }
            }
            // SAFETY: `scales` is `PANEL` (16) values.
            let scales = unsafe {
                [
                    _mm256_loadu_ps(scales.as_ptr()),
                    _mm256_loadu_ps(scales.as_ptr().add(8)),
                ]
            };
            for r in 0..R {
                let input_scale = _mm256_set1_ps(group[r].scales[b]);
                for half in 0..2 {
                    sums[r][half] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(products[r][half]),
                        _mm256_mul_ps(scales[half], input_scale),
                        sums[r][half],
                    );
                }
            }
        }
        for (sums, out) in sums.iter().zip(out.iter_mut()) {
            let mut values = [0f32; PANEL];
            // SAFETY: `values` holds two registers of eight.
            unsafe {
                _mm256_storeu_ps(values.as_mut_ptr(), sums[0]);
                _mm256_storeu_ps(values.as_mut_ptr().add(8), sums[1]);
            }
            out[columns.clone()].copy_from_slice(&values[..columns.len()]);
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

    /// `rows` input rows of `features`, values from -5 to 5.
    fn input_rows(rows: usize, features: usize) -> Vec<f32> {
        (0..rows * features)
            .map(|i| (i * 7919 % 1000) as f32 / 100.0 - 5.0)
            .collect()
    }

    /// Checks `got` (`[rows, outputs]`) against the plain product in f64 of `input` and the
    /// dequantized weight `values`: 16-bit inputs put each value within 2^-16 of its block's largest.
    fn assert_near_the_product(
        input: &[f32],
        values: &[f32],
        outputs: usize,
        got: &[f32],
        way: &str,
    ) {
        let features = values.len() / outputs;
        let rows = input.len() / features;
        for row in 0..rows {
            for output in 0..outputs {
                let products = (0..features).map(|f| {
                    f64::from(input[row * features + f]) * f64::from(values[output * features + f])
                });
                let exact: f64 = products.clone().sum();
                let bound = products.map(f64::abs).sum::<f64>() * 1e-4 + 1e-6;
                let got = f64::from(got[row * outputs + output]);
                assert!(
                    (got - exact).abs() <= bound,
                    "{way} rows={rows} [{row}, {output}]: {got} vs {exact}"
                );
            }
        }
    }

    /// Runs `multiply(weight, input rows, the CPU's way's output rows, the portable way's)` on a
    /// random weight and `rows` input rows, then checks both outputs against the product.
    fn check_both_ways(
        (outputs, features, block): (usize, usize, usize),
        rows: usize,
        multiply: impl FnOnce(&Weight, &[QuantizedRow], &mut [&mut [f32]], &mut [&mut [f32]]),
    ) {
        let (levels, scales, values) = random_weight(outputs, features, block);
        let sizes = sizes_of(rows, outputs, features, block);
        let weight = Weight {
            levels: &levels,
            scales: &scales,
            sizes,
        };
        let input = input_rows(rows, features);
        let quantized = quantize_rows(&input, &sizes);
        let mut fast = vec![0f32; rows * outputs];
        let mut portable = vec![0f32; rows * outputs];
        {
            let mut fast_rows: Vec<&mut [f32]> = fast.chunks_mut(outputs).collect();
            let mut portable_rows: Vec<&mut [f32]> = portable.chunks_mut(outputs).collect();
            multiply(&weight, &quantized, &mut fast_rows, &mut portable_rows);
        }
        assert_near_the_product(&input, &values, outputs, &fast, "fast");
        assert_near_the_product(&input, &values, outputs, &portable, "portable");
    }

    /// Each way of the row kernel (the CPU's, and the portable one), for 1 to 5 input rows (a group of
    /// 4 and one of 1), an odd number of outputs (the last pair is one row) and a width that is no
    /// multiple of the block.
    #[test]
    fn the_row_kernel_agrees_with_the_dequantized_product() {
        let shape @ (outputs, _, _) = (37, 200, 64);
        for rows in 1..=5 {
            check_both_ways(shape, rows, |weight, quantized, fast, portable| {
                for ((group, fast), portable) in quantized
                    .chunks(ROWS_TOGETHER)
                    .zip(fast.chunks_mut(ROWS_TOGETHER))
                    .zip(portable.chunks_mut(ROWS_TOGETHER))
                {
                    dot_rows(weight, 0..outputs, group, fast);
                    dot_rows_portable(weight, 0..outputs, group, portable);
                }
            });
        }
    }

    /// The GEMM's kernels (the CPU's, and the portable one) the way `multiply_many` runs them, panel by
    /// panel, each panel packed both ways alike: 1 to 13 input rows (whole tiles of 6 and every
    /// smaller tile), outputs that end inside a panel, a width that is no multiple of the block, and
    /// blocks of 256, whose sums reach the most.
    #[test]
    fn the_gemm_agrees_with_the_dequantized_product() {
        for shape @ (outputs, _, _) in [(37, 200, 64), (20, 512, 256)] {
            for rows in 1..=13 {
                check_both_ways(shape, rows, |weight, quantized, fast, portable| {
                    let mut panel = Panel::new(&weight.sizes);
                    let mut portable_panel = Panel::new(&weight.sizes);
                    for start in (0..outputs).step_by(PANEL) {
                        panel.pack(weight, start);
                        portable_panel.pack_portable(weight, start);
                        assert_eq!(panel.levels, portable_panel.levels, "panel at {start}");
                        assert_eq!(panel.scales, portable_panel.scales, "panel at {start}");
                        let columns = start..(start + PANEL).min(outputs);
                        for ((group, fast), portable) in quantized
                            .chunks(TILE_ROWS)
                            .zip(fast.chunks_mut(TILE_ROWS))
                            .zip(portable.chunks_mut(TILE_ROWS))
                        {
                            multiply_panel(&panel, group, fast, columns.clone());
                            multiply_panel_portable(&panel, group, portable, columns.clone());
                        }
                    }
                });
            }
        }
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
