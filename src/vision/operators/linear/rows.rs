//! `QuantizedLinear` for a few input rows (a decoding step, a batch of them, a short prompt): each
//! weight row is read once for up to [`ROWS_TOGETHER`] input rows, two weight rows at a time, loads of
//! the next blocks asked for ahead, so reading the weight from memory sets the pace.

use ort::operator::ComputeContext;

use super::{Level, QuantizedRow, TASKS_A_CORE, Weight, by_columns, cores, quantize_rows};

/// The input rows the row kernel multiplies together, reading each weight row once for all of them.
const ROWS_TOGETHER: usize = 4;

/// How far ahead of the block it multiplies the row kernel asks for a weight row's bytes: a measured
/// choice (bench/reference/linear-kernels: 25.1-26.0 GB/s at 1,024 bytes, 24.1 at 2,048).
const PREFETCH_AHEAD: usize = 1024;

/// The row kernel's input levels for a weight's bits: 16 bits for 8-bit weights, 8 bits for 4-bit
/// ones (see the module's note).
trait RowInput: Level {
    const WEIGHT_BITS: usize;
}

impl RowInput for i16 {
    const WEIGHT_BITS: usize = 8;
}

impl RowInput for i8 {
    const WEIGHT_BITS: usize = 4;
}

/// Fewer than `MANY_ROWS` input rows: the weight rows cut into contiguous runs, [`TASKS_A_CORE`] a
/// core (each a stream through memory that the prefetchers follow), each multiplying its rows by
/// groups of up to [`ROWS_TOGETHER`] input rows straight into the output.
pub(super) fn multiply_rows(
    ctx: &ComputeContext,
    weight: &Weight,
    values: &[f32],
    products: &mut [f32],
) -> ort::Result<()> {
    match weight.sizes.bits {
        4 => multiply_rows_by::<i8>(ctx, weight, values, products),
        _ => multiply_rows_by::<i16>(ctx, weight, values, products),
    }
}

/// [`multiply_rows`] with the input rows quantized to levels `L`.
fn multiply_rows_by<L: RowInput>(
    ctx: &ComputeContext,
    weight: &Weight,
    values: &[f32],
    products: &mut [f32],
) -> ort::Result<()> {
    let sizes = weight.sizes;
    let rows = quantize_rows::<L>(values, &sizes);
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

/// Weight rows `outputs` times the input rows `group` (up to [`ROWS_TOGETHER`]), into `out` (one
/// slice of `outputs.len()` values an input row).
fn dot_rows<L: RowInput>(
    weight: &Weight,
    outputs: std::ops::Range<usize>,
    group: &[QuantizedRow<L>],
    out: &mut [&mut [f32]],
) {
    assert_eq!(weight.sizes.bits, L::WEIGHT_BITS);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        match group {
            [a] => return avx2::dot_rows::<1, L>(weight, outputs, [a], out),
            [a, b] => return avx2::dot_rows::<2, L>(weight, outputs, [a, b], out),
            [a, b, c] => return avx2::dot_rows::<3, L>(weight, outputs, [a, b, c], out),
            [a, b, c, d] => return avx2::dot_rows::<4, L>(weight, outputs, [a, b, c, d], out),
            _ => {}
        }
    }
    dot_rows_portable(weight, outputs, group, out);
}

/// [`dot_rows`] in plain integer code, for CPUs without AVX2: the same sums.
fn dot_rows_portable<L: Level>(
    weight: &Weight,
    outputs: std::ops::Range<usize>,
    group: &[QuantizedRow<L>],
    out: &mut [&mut [f32]],
) {
    let block = weight.sizes.block;
    for (index, output) in outputs.enumerate() {
        let (row, scales) = (weight.row(output), weight.row_scales(output));
        for (input, out) in group.iter().zip(out.iter_mut()) {
            let mut sum = 0f32;
            for (b, scale) in scales.iter().enumerate() {
                let dot: i32 = (b * block..(b + 1) * block)
                    .map(|at| i32::from(weight.level(row, at)) * input.levels[at].into())
                    .sum();
                sum += (dot - input.offsets[b]) as f32 * (scale * input.scales[b]);
            }
            out[index] = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The row kernel in AVX2: per block, a run of 64 values a step, each weight row's levels
    //! multiplied in pairs by the input's (see `run_products`) and summed in 32 bits; the block's sum
    //! converted to f32 and scaled into a float accumulator. Two weight rows at a time, so that each
    //! input load serves both; one call runs over every pair of a unit, its loop kept inside the
    //! function compiled for AVX2.

    use std::arch::x86_64::*;

    use super::super::avx2::{nibbles, widen};
    use super::super::{QuantizedRow, RUN, Weight};
    use super::{PREFETCH_AHEAD, RowInput};

    /// See [`super::dot_rows`]; `A` input rows of levels `L`. The caller has checked that the CPU
    /// has AVX2 and FMA, and that the weight's bits are `L`'s.
    #[allow(unsafe_code)]
    pub(super) fn dot_rows<const A: usize, L: RowInput>(
        weight: &Weight,
        outputs: std::ops::Range<usize>,
        group: [&QuantizedRow<L>; A],
        out: &mut [&mut [f32]],
    ) {
        // SAFETY: the CPU has AVX2 and FMA (the caller checked); the weight rows are whole blocks of a
        // multiple of `RUN` values (checked in `sizes`), each input row's levels are as many, and `out`
        // holds `A` slices of `outputs.len()` values.
        unsafe { dot_rows_avx2::<A, L>(weight, outputs, group, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(unsafe_code)]
    unsafe fn dot_rows_avx2<const A: usize, L: RowInput>(
        weight: &Weight,
        outputs: std::ops::Range<usize>,
        group: [&QuantizedRow<L>; A],
        out: &mut [&mut [f32]],
    ) {
        let (blocks, block) = (weight.sizes.blocks, weight.sizes.block);
        let inputs: [*const L; A] = group.map(|input| input.levels.as_ptr());
        let mut output = outputs.start;
        while output < outputs.end {
            // An odd last row is paired with itself and its second result dropped.
            let second = (output + 1).min(outputs.end - 1);
            let rows = [weight.row(output).as_ptr(), weight.row(second).as_ptr()];
            let scales = [weight.row_scales(output), weight.row_scales(second)];
            let mut sums = [[_mm256_setzero_ps(); 2]; A];
            // `b` indexes the weight rows' scales and the inputs' scales and offsets alike.
            #[allow(clippy::needless_range_loop)]
            for b in 0..blocks {
                let start = b * block;
                let mut products = [[_mm256_setzero_si256(); 2]; A];
                let mut at = start;
                while at < start + block {
                    let bytes = at * L::WEIGHT_BITS / 8;
                    for row in rows {
                        // A step reads at most a cache line of each row. A hint past the weight's
                        // end is harmless: prefetching never faults.
                        _mm_prefetch::<_MM_HINT_T0>(
                            row.wrapping_add(bytes + PREFETCH_AHEAD).cast(),
                        );
                    }
                    // SAFETY: `at + RUN <= blocks * block`, the values of each weight row and input
                    // row.
                    let step = unsafe {
                        run_products::<A, L>(
                            rows.map(|row| row.add(bytes)),
                            inputs.map(|input| input.add(at)),
                        )
                    };
                    for (products, step) in products.iter_mut().zip(step) {
                        for (product, step) in products.iter_mut().zip(step) {
                            *product = _mm256_add_epi32(*product, step);
                        }
                    }
                    at += RUN;
                }
                for a in 0..A {
                    // The zero point's part of the block's sum, taken off in one lane.
                    let offset = _mm256_setr_epi32(group[a].offsets[b], 0, 0, 0, 0, 0, 0, 0);
                    for j in 0..2 {
                        let scale = scales[j][b] * group[a].scales[b];
                        sums[a][j] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(_mm256_sub_epi32(products[a][j], offset)),
                            _mm256_set1_ps(scale),
                            sums[a][j],
                        );
                    }
                }
            }
            for (a, out) in out.iter_mut().enumerate().take(A) {
                out[output - outputs.start] = horizontal_sum(sums[a][0]);
                if second != output {
                    out[second - outputs.start] = horizontal_sum(sums[a][1]);
                }
            }
            output += 2;
        }
    }

    /// The products of a run of values ([`RUN`]) of the two weight rows starting at `rows` with the
    /// `A` input rows' levels starting at `inputs`, as eight 32-bit sums for each input and weight row.
    /// 8-bit weights: widened to 16 bits, multiplied with the 16-bit inputs in pairs (`vpmaddwd`).
    /// 4-bit weights: their nibbles as unsigned bytes multiplied with the 8-bit inputs in pairs
    /// (`vpmaddubsw`; at most 2 x 15 x 127, no saturation), the two halves' 16-bit sums added and
    /// summed in pairs into 32 bits.
    ///
    /// # Safety
    /// The CPU has AVX2; each weight row holds a run's bytes from `rows`, each input row a run's levels
    /// from `inputs`.
    #[target_feature(enable = "avx2")]
    #[inline]
    #[allow(unsafe_code)]
    unsafe fn run_products<const A: usize, L: RowInput>(
        rows: [*const u8; 2],
        inputs: [*const L; A],
    ) -> [[__m256i; 2]; A] {
        // SAFETY: (each load) within the run, as the caller says.
        unsafe {
            if L::WEIGHT_BITS == 8 {
                let weights = rows.map(|row| widen::<8>(row));
                inputs.map(|input| {
                    let input: [__m256i; 4] =
                        std::array::from_fn(|part| _mm256_loadu_si256(input.add(16 * part).cast()));
                    weights.map(|weights| {
                        let pairs = _mm256_add_epi32(
                            _mm256_madd_epi16(weights[0], input[0]),
                            _mm256_madd_epi16(weights[1], input[1]),
                        );
                        let more = _mm256_add_epi32(
                            _mm256_madd_epi16(weights[2], input[2]),
                            _mm256_madd_epi16(weights[3], input[3]),
                        );
                        _mm256_add_epi32(pairs, more)
                    })
                })
            } else {
                let weights = rows.map(|row| nibbles(row));
                let ones = _mm256_set1_epi16(1);
                inputs.map(|input| {
                    let input = [
                        _mm256_loadu_si256(input.cast()),
                        _mm256_loadu_si256(input.add(32).cast()),
                    ];
                    weights.map(|[low, high]| {
                        let sums = _mm256_add_epi16(
                            _mm256_maddubs_epi16(low, input[0]),
                            _mm256_maddubs_epi16(high, input[1]),
                        );
                        _mm256_madd_epi16(sums, ones)
                    })
                })
            }
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
    use super::super::tests::check_both_ways;
    use super::*;

    /// Each way of the row kernel (the CPU's, and the portable one), for 8-bit weights (16-bit inputs)
    /// and 4-bit weights (8-bit inputs), 1 to 5 input rows (a group of 4 and one of 1), an odd number
    /// of outputs (the last pair is one row) and a width that is no multiple of the block.
    #[test]
    fn the_row_kernel_agrees_with_the_dequantized_product() {
        check_rows::<i16>();
        check_rows::<i8>();
    }

    fn check_rows<L: RowInput>() {
        let shape @ (outputs, ..) = (37, 200, 64, L::WEIGHT_BITS);
        for rows in 1..=5 {
            check_both_ways::<L>(shape, rows, |weight, quantized, fast, portable| {
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
}
