//! `QuantizedLinear` for a few input rows (a decoding step, a batch of them, a short prompt): each
//! weight row is read once for up to [`ROWS_TOGETHER`] input rows, two weight rows at a time, loads of
//! the next blocks asked for ahead, so reading the weight from memory sets the pace.

use ort::operator::ComputeContext;

use super::{QuantizedRow, TASKS_A_CORE, Weight, by_columns, cores, quantize_rows};

/// The input rows the row kernel multiplies together, reading each weight row once for all of them.
const ROWS_TOGETHER: usize = 4;

/// How far ahead of the block it multiplies the row kernel asks for a weight row's bytes: a measured
/// choice (bench/reference/linear-kernels: 25.1-26.0 GB/s at 1,024 bytes, 24.1 at 2,048).
const PREFETCH_AHEAD: usize = 1024;

/// Fewer than `MANY_ROWS` input rows: the weight rows cut into contiguous runs, [`TASKS_A_CORE`] a
/// core (each a stream through memory that the prefetchers follow), each multiplying its rows by
/// groups of up to [`ROWS_TOGETHER`] input rows straight into the output.
pub(super) fn multiply_rows(
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
        match weight.sizes.bits {
            8 => return dot_rows_avx2::<8>(weight, outputs, group, out),
            4 => return dot_rows_avx2::<4>(weight, outputs, group, out),
            _ => {}
        }
    }
    dot_rows_portable(weight, outputs, group, out);
}

/// [`dot_rows`] on AVX2 for weights of `BITS`-bit levels. The caller has checked that the CPU has
/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
fn dot_rows_avx2<const BITS: usize>(
    weight: &Weight,
    outputs: std::ops::Range<usize>,
    group: &[QuantizedRow],
    out: &mut [&mut [f32]],
) {
    match group {
        [a] => avx2::dot_rows::<1, BITS>(weight, outputs, [a], out),
        [a, b] => avx2::dot_rows::<2, BITS>(weight, outputs, [a, b], out),
        [a, b, c] => avx2::dot_rows::<3, BITS>(weight, outputs, [a, b, c], out),
        [a, b, c, d] => avx2::dot_rows::<4, BITS>(weight, outputs, [a, b, c, d], out),
        _ => dot_rows_portable(weight, outputs, group, out),
    }
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
        let (row, scales) = (weight.row(output), weight.row_scales(output));
        for (input, out) in group.iter().zip(out.iter_mut()) {
            let mut sum = 0f32;
            for (b, scale) in scales.iter().enumerate() {
                let dot: i32 = (b * block..(b + 1) * block)
                    .map(|at| i32::from(weight.level(row, at)) * i32::from(input.levels[at]))
                    .sum();
                sum += (dot - input.offsets[b]) as f32 * (scale * input.scales[b]);
            }
            out[index] = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The row kernel in AVX2: per block, each weight row's levels widened to 16 bits (`vpmovzxbw`,
    //! and for 4 bits a mask and a shift) and multiplied in pairs by the input's 16-bit levels
    //! (`vpmaddwd`), a run of 64 values a step, summed in 32 bits; the
    //! block's sum converted to f32 and scaled into a float accumulator. Two weight rows at a time, so
    //! that each input load serves both; one call runs over every pair of a unit, its loop kept inside
    //! the function compiled for AVX2.

    use std::arch::x86_64::*;

    use super::super::avx2::widen;
    use super::super::{QuantizedRow, RUN, Weight};
    use super::PREFETCH_AHEAD;

    /// See [`super::dot_rows`]; `A` input rows, weights of `BITS`-bit levels. The caller has checked
    /// that the CPU has AVX2 and FMA.
    #[allow(unsafe_code)]
    pub(super) fn dot_rows<const A: usize, const BITS: usize>(
        weight: &Weight,
        outputs: std::ops::Range<usize>,
        group: [&QuantizedRow; A],
        out: &mut [&mut [f32]],
    ) {
        // SAFETY: the CPU has AVX2 and FMA (the caller checked); the weight rows are whole blocks of a
        // multiple of `RUN` values (checked in `sizes`), each input row's levels are as many, and `out`
        // holds `A` slices of `outputs.len()` values.
        unsafe { dot_rows_avx2::<A, BITS>(weight, outputs, group, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(unsafe_code)]
    unsafe fn dot_rows_avx2<const A: usize, const BITS: usize>(
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
            // `b` indexes the weight rows' scales and the inputs' scales and offsets alike.
            #[allow(clippy::needless_range_loop)]
            for b in 0..blocks {
                let start = b * block;
                let mut products = [[_mm256_setzero_si256(); 2]; A];
                let mut at = start;
                while at < start + block {
                    for row in rows {
                        // A step reads at most a cache line of each row. A hint past the weight's
                        // end is harmless: prefetching never faults.
                        let ahead = row.wrapping_add(at * BITS / 8 + PREFETCH_AHEAD);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    }
                    // SAFETY: `at + RUN <= blocks * block`, the values of each weight row and input
                    // row.
                    let weights = unsafe {
                        [
                            widen::<BITS>(rows[0].add(at * BITS / 8)),
                            widen::<BITS>(rows[1].add(at * BITS / 8)),
                        ]
                    };
                    for a in 0..A {
                        // SAFETY: as above.
                        let input: [__m256i; 4] = std::array::from_fn(|part| unsafe {
                            _mm256_loadu_si256(levels[a].add(at + 16 * part).cast())
                        });
                        for (product, weights) in products[a].iter_mut().zip(weights) {
                            let pairs = _mm256_add_epi32(
                                _mm256_madd_epi16(weights[0], input[0]),
                                _mm256_madd_epi16(weights[1], input[1]),
                            );
                            let more = _mm256_add_epi32(
                                _mm256_madd_epi16(weights[2], input[2]),
                                _mm256_madd_epi16(weights[3], input[3]),
                            );
                            *product = _mm256_add_epi32(*product, _mm256_add_epi32(pairs, more));
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

    /// Each way of the row kernel (the CPU's, and the portable one), for 8- and 4-bit weights and 1 to
    /// 5 input rows (a group of 4 and one of 1), an odd number of outputs (the last pair is one row)
    /// and a width that is no multiple of the block.
    #[test]
    fn the_row_kernel_agrees_with_the_dequantized_product() {
        for bits in [8, 4] {
            let shape @ (outputs, ..) = (37, 200, 64, bits);
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
    }
}
