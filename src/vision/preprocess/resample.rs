//! Lanczos resampling as the reference computes it (see the parent module on why its integer
//! arithmetic and how it is made fast): each pass's fixed-point taps, kept per pair of sizes; the
//! horizontal and vertical passes over the weighted-sum `kernel`; and chains of resizes whose vertical
//! pass runs together with the next horizontal one.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use image::RgbImage;

use super::in_bands;
use super::kernel::{Band, Kernel, WeightedSums, weighted_sum};

/// For each output position along one axis: the first input index of its window and the window's
/// fixed-point weights. Every window has the same length (`window`), the longest any position needs,
/// shifted to stay inside the input and padded with zero weights: the inner loops then have a fixed
/// trip count and no bounds to recheck, which is what lets the compiler vectorise them.
struct Taps {
    starts: Vec<usize>,
    window: usize,
    weights: Vec<i16>,
    /// Fractional bits of the weights, the same for the whole pass.
    precision: u32,
}

impl Taps {
    fn iter(&self) -> impl Iterator<Item = (usize, &[i16])> {
        self.starts
            .iter()
            .copied()
            .zip(self.weights.chunks_exact(self.window))
    }
}

fn lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    let x = x.abs();
    if x < 3.0 {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// The weights of one pass from `in_size` to `out_size` positions, computed as the reference computes
/// them, step by step in f64: a window of `center ± support` (support 3, widened by the scale when
/// shrinking), Lanczos weights normalised to sum 1, then the pass's precision (the most fractional bits,
/// up to 22, that keep twice the largest weight below 2^15) and the weights rounded half away from zero.
fn taps(in_size: u32, out_size: u32) -> Taps {
    let scale = f64::from(in_size) / f64::from(out_size);
    let (support, inverse) = if scale >= 1.0 {
        (3.0 * scale, 1.0 / scale)
    } else {
        (3.0, 1.0)
    };
    let longest = support.ceil() as usize * 2 + 1;
    let mut largest: f64 = 0.0;
    let windows: Vec<(usize, Vec<f64>)> = (0..out_size)
        .map(|out| {
            let center = scale * (f64::from(out) + 0.5);
            // Truncation toward zero, then clamping, as the reference does.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let last = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
            let last = last.min(first + longest);
            let mut weights: Vec<f64> = (first..last)
                .map(|x| lanczos((x as f64 - center + 0.5) * inverse))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                for weight in &mut weights {
                    *weight /= total;
                    largest = largest.max(*weight);
                }
            }
            (first, weights)
        })
        .collect();
    let precision = (0..22)
        .find(|bits| (0.5 + largest * f64::from(1u32 << (bits + 1))) as i32 >= 1 << 15)
        .unwrap_or(22);
    let unit = f64::from(1u32 << precision);
    let windows: Vec<(usize, Vec<i16>)> = windows
        .into_iter()
        .map(|(first, weights)| {
            let fixed = weights
                .iter()
                .map(|weight| {
                    let scaled = weight * unit;
                    let rounded = if scaled < 0.0 {
                        scaled - 0.5
                    } else {
                        scaled + 0.5
                    };
                    rounded as i32 as i16
                })
                .collect();
            (first, fixed)
        })
        .collect();
    // No window is longer than the input, so a shifted window always fits.
    let window = windows.iter().map(|(_, w)| w.len()).max().unwrap_or(1);
    let mut taps = Taps {
        starts: Vec::with_capacity(windows.len()),
        window,
        weights: vec![0; windows.len() * window],
        precision,
    };
    for ((first, fixed), weights) in windows.iter().zip(taps.weights.chunks_exact_mut(window)) {
        let start = (*first).min(in_size as usize - window);
        let offset = first - start;
        weights[offset..offset + fixed.len()].copy_from_slice(fixed);
        taps.starts.push(start);
    }
    taps
}

/// A pass's input and output size along its axis.
type PassSizes = (u32, u32);

/// Taps computed before, by input and output size, newest last. A camera's frames are all one size, so
/// each of its frames needs the same few passes; their weights (two sines per tap, for up to 25 taps of
/// up to 2048 positions) took about a millisecond a frame, an eighth of preprocessing. A few cameras of
/// different sizes need a handful of entries; beyond `TAPS_KEPT` the least recently used is dropped.
static KEPT_TAPS: Mutex<VecDeque<(PassSizes, Arc<Taps>)>> = Mutex::new(VecDeque::new());
const TAPS_KEPT: usize = 16;

/// `taps(in_size, out_size)`, computed once.
fn kept_taps(in_size: u32, out_size: u32) -> Arc<Taps> {
    let key = (in_size, out_size);
    let mut kept = KEPT_TAPS.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = match kept.iter().position(|(size, _)| *size == key) {
        Some(index) => kept.remove(index).expect("found above"),
        None => (key, Arc::new(taps(in_size, out_size))),
    };
    let taps = Arc::clone(&entry.1);
    kept.push_back(entry);
    if kept.len() > TAPS_KEPT {
        kept.pop_front();
    }
    taps
}

/// Lanczos resize to `width` x `height`: horizontal pass, then vertical, each rounding to 8 bits. An
/// image already that size is passed through without a copy.
pub(super) fn resize(
    image: Cow<'_, RgbImage>,
    (width, height): (u32, u32),
    threads: usize,
    kernel: Kernel,
) -> Cow<'_, RgbImage> {
    resize_through(image, &[(width, height)], threads, kernel)
}

/// `resize` to each size of `sizes` in turn. Where a vertical pass is followed by a horizontal one (a
/// resize, then the next one's first pass), the two run together a group of rows at a time, so the
/// image between them is never stored: for a 640x480 frame that image is 2048x1536 (9 MB), written and
/// read back once per frame otherwise. The result is the same byte for byte.
pub(super) fn resize_through<'a>(
    mut image: Cow<'a, RgbImage>,
    sizes: &[(u32, u32)],
    threads: usize,
    kernel: Kernel,
) -> Cow<'a, RgbImage> {
    // The vertical pass not yet run: it waits to see whether a horizontal pass follows.
    let mut pending_height = None;
    for &(to_width, to_height) in sizes {
        if to_width != image.width() {
            image = Cow::Owned(match pending_height.take() {
                Some(height) => resize_vertical(&image, height, Some(to_width), threads, kernel),
                None => resize_horizontal(&image, to_width, threads, kernel),
            });
        }
        if to_height != pending_height.unwrap_or(image.height()) {
            // Two vertical passes in a row cannot run as one: the first runs now.
            if let Some(height) = pending_height {
                image = Cow::Owned(resize_vertical(&image, height, None, threads, kernel));
            }
            pending_height = Some(to_height);
        }
    }
    match pending_height {
        Some(height) => Cow::Owned(resize_vertical(&image, height, None, threads, kernel)),
        None => image,
    }
}

fn resize_horizontal(image: &RgbImage, width: u32, threads: usize, kernel: Kernel) -> RgbImage {
    let taps = kept_taps(image.width(), width);
    let in_len = image.width() as usize * 3;
    let out_len = width as usize * 3;
    let mut out = vec![0u8; out_len * image.height() as usize];
    in_bands(&mut out, out_len, threads, |first_row, band| {
        let rows = band.len() / out_len;
        kernel.fill(HorizontalBand {
            band,
            inputs: &image.as_raw()[first_row * in_len..][..rows * in_len],
            in_len,
            taps: &taps,
        });
    });
    RgbImage::from_raw(width, image.height(), out).expect("sized above")
}

/// Rows of the horizontal pass, written into `band` from `inputs`, the same rows of the source.
struct HorizontalBand<'a> {
    band: &'a mut [u8],
    inputs: &'a [u8],
    in_len: usize,
    taps: &'a Taps,
}

/// Rows the horizontal pass resamples together: transposed, one tap's bytes of all of them are one
/// contiguous vector with one weight, as in the vertical pass. Of 8, 16 and 32, 16 was the fastest
/// (with the portable kernel, when the rows were interleaved pixel by pixel: both horizontal passes of
/// a 640x480 frame took 18 ms at 8, 10 at 16 and 12 at 32 on 2 threads).
const ROWS_TOGETHER: usize = 16;

impl Band for HorizontalBand<'_> {
    #[inline(always)]
    fn fill<K: WeightedSums>(self, kernel: K) {
        let out_len = self.taps.starts.len() * 3;
        let mut scratch = Scratch::default();
        let out_groups = self.band.chunks_mut(ROWS_TOGETHER * out_len);
        let input_groups = self.inputs.chunks(ROWS_TOGETHER * self.in_len);
        for (out_rows, inputs) in out_groups.zip(input_groups) {
            let group = (out_rows, inputs, self.in_len);
            horizontal_group(kernel, group, self.taps, &mut scratch);
        }
    }
}

/// Up to `ROWS_TOGETHER` rows of the horizontal pass: `out_rows` from `inputs`, rows of `in_len` bytes.
#[inline(always)]
fn horizontal_group(
    kernel: impl WeightedSums,
    (out_rows, inputs, in_len): (&mut [u8], &[u8], usize),
    taps: &Taps,
    scratch: &mut Scratch,
) {
    let out_len = taps.starts.len() * 3;
    if out_rows.len() == ROWS_TOGETHER * out_len {
        horizontal_rows::<{ ROWS_TOGETHER * 3 }>(kernel, out_rows, inputs, taps, scratch);
    } else {
        for (out_row, input) in out_rows
            .chunks_exact_mut(out_len)
            .zip(inputs.chunks(in_len))
        {
            horizontal_rows::<3>(kernel, out_row, input, taps, scratch);
        }
    }
}

/// The buffers of the horizontal pass, reused from group to group of rows.
#[derive(Default)]
struct Scratch {
    /// The group's input rows, transposed.
    interleaved: Vec<u8>,
    /// The group's output rows, transposed.
    sums: Vec<u8>,
}

/// `LANES / 3` rows of the horizontal pass (`out_rows` and `inputs` hold that many), transposed so
/// that byte `j` of row `r` is at `j * rows + r`: then a pixel's bytes of all the rows are one
/// `LANES`-byte vector (channel by channel, row by row), and each output pixel of all of them is one
/// weighted sum of such vectors, the kernel's 16-byte blocks when the rows are a full group, else the
/// portable kernel's. The sums come out transposed the same way and are transposed back.
#[inline(always)]
fn horizontal_rows<const LANES: usize>(
    kernel: impl WeightedSums,
    out_rows: &mut [u8],
    inputs: &[u8],
    taps: &Taps,
    scratch: &mut Scratch,
) {
    let rows = LANES / 3;
    let Scratch { interleaved, sums } = scratch;
    interleaved.resize(inputs.len(), 0);
    transpose(inputs, rows, interleaved);
    sums.resize(out_rows.len(), 0);
    for ((start, weights), values) in taps.iter().zip(sums.chunks_exact_mut(LANES)) {
        let vectors = &interleaved[start * LANES..];
        if LANES == ROWS_TOGETHER * 3 {
            let blocks = kernel.weighted_sums::<{ ROWS_TOGETHER * 3 / 16 }>(
                vectors,
                LANES,
                weights,
                taps.precision,
            );
            values.copy_from_slice(blocks.as_flattened());
        } else {
            let sum = weighted_sum::<LANES>(vectors, LANES, weights, taps.precision);
            values.copy_from_slice(&sum);
        }
    }
    transpose(sums, out_rows.len() / rows, out_rows);
}

/// `to[column * rows + row] = from[row * columns + column]`: the `rows` x `columns` matrix `from`
/// transposed, 16 x 16 blocks at a time where both sides are at least 16 (the last block of a side is
/// aligned to its end and may overlap the one before: it rewrites the same bytes).
#[inline(always)]
fn transpose(from: &[u8], rows: usize, to: &mut [u8]) {
    let columns = from.len() / rows;
    if rows < 16 || columns < 16 {
        for (row, bytes) in from.chunks_exact(columns).enumerate() {
            for (column, byte) in bytes.iter().enumerate() {
                to[column * rows + row] = *byte;
            }
        }
        return;
    }
    let offsets = |len: usize| (0..len - 16).step_by(16).chain([len - 16]);
    for row in offsets(rows) {
        for column in offsets(columns) {
            let block = &from[row * columns + column..];
            transpose_16(block, columns, &mut to[column * rows + row..], rows);
        }
    }
}

/// `to[column * to_stride + row] = from[row * from_stride + column]` for a 16 x 16 block: four rounds
/// of interleaving rows `i` and `i + 8` byte by byte, which the compiler makes 64 byte-unpack
/// instructions (`punpcklbw`, `punpckhbw`) rather than 256 byte moves.
#[inline(always)]
fn transpose_16(from: &[u8], from_stride: usize, to: &mut [u8], to_stride: usize) {
    let mut block = [[0u8; 16]; 16];
    for (row, bytes) in block.iter_mut().enumerate() {
        bytes.copy_from_slice(&from[row * from_stride..][..16]);
    }
    for _ in 0..4 {
        let mut next = [[0u8; 16]; 16];
        for i in 0..8 {
            for k in 0..8 {
                next[2 * i][2 * k] = block[i][k];
                next[2 * i][2 * k + 1] = block[i + 8][k];
                next[2 * i + 1][2 * k] = block[i][k + 8];
                next[2 * i + 1][2 * k + 1] = block[i + 8][k + 8];
            }
        }
        block = next;
    }
    for (column, bytes) in block.iter().enumerate() {
        to[column * to_stride..][..16].copy_from_slice(bytes);
    }
}

/// The vertical pass to `height`. With `then_width`, each group of `ROWS_TOGETHER` rows it makes goes
/// straight on through the horizontal pass to that width: the rows stay in cache and are never stored.
fn resize_vertical(
    image: &RgbImage,
    height: u32,
    then_width: Option<u32>,
    threads: usize,
    kernel: Kernel,
) -> RgbImage {
    let vertical = kept_taps(image.height(), height);
    let horizontal = then_width.map(|width| kept_taps(image.width(), width));
    let row_len = image.width() as usize * 3;
    let width = then_width.unwrap_or(image.width());
    let out_len = width as usize * 3;
    let mut out = vec![0u8; out_len * height as usize];
    in_bands(&mut out, out_len, threads, |first_row, band| {
        kernel.fill(VerticalBand {
            band,
            first_row,
            source: image.as_raw(),
            row_len,
            vertical: &vertical,
            horizontal: horizontal.as_deref(),
        });
    });
    RgbImage::from_raw(width, height, out).expect("sized above")
}

/// Output rows `first_row..` of the vertical pass, and of the horizontal pass after it if any, written
/// into `band`.
struct VerticalBand<'a> {
    band: &'a mut [u8],
    first_row: usize,
    source: &'a [u8],
    row_len: usize,
    vertical: &'a Taps,
    horizontal: Option<&'a Taps>,
}

impl Band for VerticalBand<'_> {
    #[inline(always)]
    fn fill<K: WeightedSums>(self, kernel: K) {
        let Some(horizontal) = self.horizontal else {
            vertical_rows(
                kernel,
                self.band,
                self.first_row,
                self.source,
                self.row_len,
                self.vertical,
            );
            return;
        };
        let out_len = horizontal.starts.len() * 3;
        let mut rows = vec![0u8; ROWS_TOGETHER * self.row_len];
        let mut scratch = Scratch::default();
        for (group, out_rows) in self.band.chunks_mut(ROWS_TOGETHER * out_len).enumerate() {
            let rows = &mut rows[..out_rows.len() / out_len * self.row_len];
            let first_row = self.first_row + group * ROWS_TOGETHER;
            vertical_rows(
                kernel,
                rows,
                first_row,
                self.source,
                self.row_len,
                self.vertical,
            );
            let group = (out_rows, &*rows, self.row_len);
            horizontal_group(kernel, group, horizontal, &mut scratch);
        }
    }
}

/// Blocks of 16 bytes the vertical pass sums at once, sharing each tap's weight and loop step.
const ROW_BLOCKS: usize = 4;

/// Output rows `first_row..` of the vertical pass into `band`, from `source`, rows of `row_len` bytes.
/// Rows shorter than the kernel's 16 bytes (images under 6 pixels wide) are summed a byte at a time.
/// Longer rows are summed `ROW_BLOCKS` blocks of 16 bytes at a time, or one.
#[inline(always)]
fn vertical_rows(
    kernel: impl WeightedSums,
    band: &mut [u8],
    first_row: usize,
    source: &[u8],
    row_len: usize,
    taps: &Taps,
) {
    let precision = taps.precision;
    for (out_row, (start, weights)) in band
        .chunks_exact_mut(row_len)
        .zip(taps.iter().skip(first_row))
    {
        let window = &source[start * row_len..];
        if row_len < 16 {
            vertical_blocks(
                out_row,
                #[inline(always)]
                |offset| weighted_sum::<1>(&window[offset..], row_len, weights, precision),
            );
        } else if row_len < 16 * ROW_BLOCKS {
            vertical_blocks(
                out_row,
                #[inline(always)]
                |offset| {
                    let [block] =
                        kernel.weighted_sums::<1>(&window[offset..], row_len, weights, precision);
                    block
                },
            );
        } else {
            vertical_blocks::<{ 16 * ROW_BLOCKS }>(
                out_row,
                #[inline(always)]
                |offset| {
                    let blocks = kernel.weighted_sums::<ROW_BLOCKS>(
                        &window[offset..],
                        row_len,
                        weights,
                        precision,
                    );
                    blocks.as_flattened().try_into().expect("ROW_BLOCKS blocks")
                },
            );
        }
    }
}

/// One output row of the vertical pass, `N` bytes at a time: `block(offset)` sums the window's bytes
/// at `offset..offset + N`. The last block is aligned to the row's end and may overlap the one before
/// it: it recomputes the same values.
#[inline(always)]
fn vertical_blocks<const N: usize>(out_row: &mut [u8], block: impl Fn(usize) -> [u8; N]) {
    let row_len = out_row.len();
    let offsets = (0..row_len - N).step_by(N).chain([row_len - N]);
    for offset in offsets {
        out_row[offset..offset + N].copy_from_slice(&block(offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::preprocess::kernel::clip8;

    /// Both passes as plainly defined: each output byte is its window's weighted sum, rounded.
    fn plain_resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
        /// One output byte: its window's weighted sum, rounded and clamped.
        fn plain_byte(taps: &Taps, index: u32, byte_at: impl Fn(u32) -> u8) -> u8 {
            let (start, weights) = taps.iter().nth(index as usize).unwrap();
            let half = (1i32 << taps.precision) >> 1;
            let sum = weights
                .iter()
                .zip(start as u32..)
                .fold(half, |sum, (weight, at)| {
                    sum + i32::from(byte_at(at)) * i32::from(*weight)
                });
            clip8(sum, taps.precision)
        }
        let horizontal = taps(image.width(), width);
        let wide = RgbImage::from_fn(width, image.height(), |x, y| {
            image::Rgb(std::array::from_fn(|channel| {
                plain_byte(&horizontal, x, |at| image.get_pixel(at, y)[channel])
            }))
        });
        let vertical = taps(image.height(), height);
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb(std::array::from_fn(|channel| {
                plain_byte(&vertical, y, |at| wide.get_pixel(x, at)[channel])
            }))
        })
    }

    /// One and two threads, with each kernel this CPU runs.
    fn threads_and_kernels() -> impl Iterator<Item = (usize, Kernel)> {
        let kernels = Kernel::available();
        [1, 2].into_iter().flat_map(move |threads| {
            kernels
                .clone()
                .into_iter()
                .map(move |kernel| (threads, kernel))
        })
    }

    #[test]
    fn the_vectorised_passes_equal_the_plain_definition() {
        let sizes = [(1, 1), (3, 7), (37, 11), (640, 480), (1500, 90), (90, 1500)];
        for (width, height) in sizes {
            let image = RgbImage::from_fn(width, height, |x, y| {
                image::Rgb([
                    (x * 31 + y) as u8,
                    (y * 17 + 3) as u8,
                    ((x ^ y) % 251) as u8,
                ])
            });
            for (to_width, to_height) in [(2048, 1536), (512, 512), (5, 3), (1, 1)] {
                let plain = plain_resize(&image, to_width, to_height);
                for (threads, kernel) in threads_and_kernels() {
                    let fast = resize(
                        Cow::Borrowed(&image),
                        (to_width, to_height),
                        threads,
                        kernel,
                    );
                    assert!(
                        fast.as_raw() == plain.as_raw(),
                        "{width}x{height} to {to_width}x{to_height} on {threads} threads, {kernel:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn taps_are_computed_once_per_pair_of_sizes_and_only_the_recent_kept() {
        let first = kept_taps(640, 2048);
        assert!(Arc::ptr_eq(&first, &kept_taps(640, 2048)));
        for out_size in 1..=2 * TAPS_KEPT as u32 {
            kept_taps(97, out_size);
        }
        assert!(KEPT_TAPS.lock().unwrap().len() <= TAPS_KEPT);
        let again = kept_taps(640, 2048);
        assert!(!Arc::ptr_eq(&first, &again), "dropped, then computed anew");
        assert_eq!(
            (&first.starts, &first.weights, first.precision),
            (&again.starts, &again.weights, again.precision)
        );
    }

    #[test]
    fn resizing_through_several_sizes_equals_resizing_to_each_in_turn() {
        let image = RgbImage::from_fn(640, 480, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y % 253) as u8, (y * 29) as u8])
        });
        // The frame's own two steps (a vertical pass runs with the next horizontal one), row counts
        // that are no multiple of the rows resampled together, a 1-pixel passage, and two vertical
        // passes in a row.
        let chains: [&[(u32, u32)]; 4] = [
            &[(2048, 1536), (512, 512)],
            &[(90, 1500), (37, 11), (700, 301)],
            &[(1, 1), (5, 3)],
            &[(640, 300), (640, 200)],
        ];
        for chain in chains {
            let plain = chain.iter().fold(image.clone(), |image, (width, height)| {
                plain_resize(&image, *width, *height)
            });
            for (threads, kernel) in threads_and_kernels() {
                let fast = resize_through(Cow::Borrowed(&image), chain, threads, kernel);
                assert!(
                    fast.as_raw() == plain.as_raw(),
                    "{chain:?} on {threads} threads, {kernel:?}"
                );
            }
        }
    }
}
