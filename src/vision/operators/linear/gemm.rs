//! `QuantizedLinear` for many input rows (a prompt's prefill): a GEMM. [`PANEL`] weight rows at a time
//! are widened into a small packed panel, and each group of [`TILE_ROWS`] input rows is multiplied
//! against it in registers, so the weight is read from memory once a call and the multiplying, not
//! the reading, sets the pace.

use std::sync::Mutex;

use ort::operator::ComputeContext;

use super::super::arithmetic::prefetch;
use super::{QuantizedRow, Sizes, TASKS_A_CORE, Weight, by_columns, cores, quantize_rows};

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

/// `MANY_ROWS` input rows or more: runs of whole panels, [`TASKS_A_CORE`] a core. Each task packs
/// its panels one at a time, multiplying the first [`ROWS_A_PASS`] input rows against each as it is
/// packed, then keeps them for the next passes of as many rows.
pub(super) fn multiply_many(
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

/// [`PANEL`] weight rows widened to 16 bits, the zero point taken off, laid out for the GEMM: for
/// each pair of features (in the kernels' order), the rows' two levels side by side
/// (`[blocks × block / 2][PANEL][2]`), which one `vpmaddwd` multiplies by an input's pair; and the
/// rows' scales (`[blocks][PANEL]`). Rows past the weight's last are zeros.
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
            match self.sizes.bits {
                8 => avx2::pack_levels::<8>(&mut self.levels, weight, first),
                4 => avx2::pack_levels::<4>(&mut self.levels, weight, first),
                _ => return self.pack_portable(weight, first),
            }
            self.pack_scales(weight, first);
            return;
        }
        self.pack_portable(weight, first);
    }

    /// [`Panel::pack`] in plain code, for CPUs without AVX2 and a panel past the weight's last row.
    fn pack_portable(&mut self, weight: &Weight, first: usize) {
        let zero_point = self.sizes.zero_point();
        for column in 0..PANEL {
            let row = first + column;
            for (index, pair) in self.levels.chunks_exact_mut(2 * PANEL).enumerate() {
                let levels = if row < self.sizes.outputs {
                    let bytes = weight.row(row);
                    [2 * index, 2 * index + 1].map(|at| weight.level(bytes, at) - zero_point)
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The GEMM in AVX2: an input's pair of 16-bit levels broadcast to every lane (`vpbroadcastd`)
    //! against a packed panel's pair of registers and multiplied in pairs (`vpmaddwd`), up to six input
    //! rows a pass, so each panel load serves twelve multiply-adds; a block summed in 32 bits, then
    //! converted to f32 and scaled into float accumulators. Each call runs its whole loop inside the
    //! function compiled for AVX2.

    use std::arch::x86_64::*;

    use super::super::avx2::widen;
    use super::super::{QuantizedRow, RUN, Weight};
    use super::{PANEL, Panel};

    /// [`Panel::pack`]'s levels, for a panel of rows within the weight of `BITS`-bit levels: eight
    /// rows at a time, a run of 64 features of each widened to 16 bits and offset to signed, then each 8 x 8
    /// block of pairs transposed so that each register holds one pair of features of the eight rows.
    #[allow(unsafe_code)]
    pub(super) fn pack_levels<const BITS: usize>(
        levels: &mut [i16],
        weight: &Weight,
        first: usize,
    ) {
        assert!(first + PANEL <= weight.sizes.outputs);
        assert_eq!(
            levels.len(),
            weight.sizes.blocks * weight.sizes.block * PANEL
        );
        // SAFETY: the CPU has AVX2 (the caller checked); the rows are within the weight (asserted),
        // each `blocks × block` values, a multiple of `RUN`, and `levels` holds `PANEL` levels a feature.
        unsafe { pack_levels_avx2::<BITS>(levels, weight, first) }
    }

    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    unsafe fn pack_levels_avx2<const BITS: usize>(
        levels: &mut [i16],
        weight: &Weight,
        first: usize,
    ) {
        let width = weight.sizes.blocks * weight.sizes.block;
        let zero_point = _mm256_set1_epi16(weight.sizes.zero_point());
        let out = levels.as_mut_ptr();
        for half in 0..2 {
            let rows: [*const u8; 8] =
                std::array::from_fn(|r| weight.row(first + 8 * half + r).as_ptr());
            for feature in (0..width).step_by(RUN) {
                // SAFETY: `feature + RUN <= width`, the row's values.
                let widened: [[__m256i; 4]; 8] = std::array::from_fn(|r| unsafe {
                    widen::<BITS>(rows[r].add(feature * BITS / 8))
                });
                // For each of the run's four registers of 16 levels, the eight rows' as signed pairs.
                let parts: [[__m256i; 8]; 4] = std::array::from_fn(|part| {
                    std::array::from_fn(|r| _mm256_sub_epi16(widened[r][part], zero_point))
                });
                for (part, pairs) in parts.into_iter().enumerate() {
                    for (p, pair) in transpose(pairs).into_iter().enumerate() {
                        // SAFETY: pair `feature / 2 + 8 × part + p` of `width / 2`; `PANEL` levels of
                        // `2 × PANEL`.
                        unsafe {
                            let pair_index = feature / 2 + 8 * part + p;
                            let at = out.add(pair_index * 2 * PANEL + half * PANEL);
                            _mm256_storeu_si256(at.cast(), pair);
                        }
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::check_both_ways;
    use super::*;

    /// The GEMM's kernels (the CPU's, and the portable one) the way `multiply_many` runs them, panel by
    /// panel, each panel packed both ways alike: 8- and 4-bit weights, 1 to 13 input rows (whole
    /// tiles of 6 and every smaller tile), outputs that end inside a panel, a width that is no
    /// multiple of the block, and blocks of 256, whose sums reach the most.
    #[test]
    fn the_gemm_agrees_with_the_dequantized_product() {
        for shape @ (outputs, ..) in [(37, 200, 64, 8), (20, 512, 256, 8), (37, 200, 64, 4)] {
            for rows in 1..=13 {
                check_both_ways::<i16>(shape, rows, |weight, quantized, fast, portable| {
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
}
