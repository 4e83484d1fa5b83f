//! Turning a frame into the vision encoder's input, the way transformers' `SmolVLMImageProcessor` does:
//! the reference our answers must agree with.
//!
//! 1. Resize so the longest edge is `size.longest_edge` (2048; small frames are upscaled), the other side
//!    scaled by the aspect ratio, truncated and rounded up to even.
//! 2. With splitting: resize each side up to a multiple of the tile (512), cut rows x cols tiles in
//!    row-major order, and append the whole picture resized to one tile (the global image). Without: the
//!    whole picture resized to one tile.
//! 3. Scale to [0, 1], normalise with the configured mean and std, lay out channels first.
//!
//! A clip's frames (SmolVLM2's video input) are never split: the reference's video processor resizes
//! each as an unsplit image (step 1, then squared to one tile), then step 3.
//!
//! Resampling is Lanczos (a = 3), separable, horizontal pass first, rounded to bytes after each pass, in
//! integers exactly as the reference computes it (PyTorch's CPU `interpolate` for 8-bit images, which
//! torchvision's Lanczos runs): each pass's weights are 16-bit fixed point with as many fractional bits as
//! keep its largest weight within 16 bits, and each output byte is its window's integer weighted sum,
//! rounded and clamped. So the bytes, and after step 3 the values, are the reference's bit for bit; the
//! conformance tests hold them equal.
//!
//! Speed: a 640x480 frame is upscaled to 2048x1536 and back down, about 165 million multiply-adds, on
//! every frame. Both passes are one kernel, a weighted sum of byte vectors (`kernel`): the vertical
//! pass sums blocks of a row, the horizontal pass first transposes groups of 16 rows so that a pixel's
//! bytes of all 16 are one vector too. The kernel is written out for AVX-512 and AVX2 (detected at run
//! time: one binary for every x86-64 box) and in plain Rust for other CPUs; `pulp` compiles step 3 for
//! the CPU's instruction set. Every kernel's results are the plain per-byte definition's exactly; unit
//! tests hold them equal.
//! Where one resize follows another and the image between them is not needed (an unsplit image, a clip
//! frame), the first's vertical pass and the second's horizontal pass run together, so the 2048-pixel-wide
//! image is never stored (`resize_through`). Each pass's weights are computed once per pair of sizes
//! (`kept_taps`). Preprocessing writes its values into a buffer the caller passes back in.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use image::RgbImage;

use kernel::{Band, Kernel, WeightedSums, weighted_sum};

mod kernel;

/// The processor settings read from the model's `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSettings {
    /// `size.longest_edge`: the first resize target.
    pub longest_edge: u32,
    /// `max_image_size.longest_edge`: the side of a tile and of the global image.
    pub tile: u32,
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageSettings {
    /// The processor settings of SmolVLM2-256M and -500M, for where no model folder is at hand to read
    /// them from (a clip buffer started before its model is fetched).
    pub const SMOLVLM2: ImageSettings = ImageSettings {
        longest_edge: 2048,
        tile: 512,
        rescale_factor: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.5; 3],
    };
}

/// The encoder input for one frame.
#[derive(Debug, Clone)]
pub struct Pixels {
    /// `[images, 3, tile, tile]`, row-major, tiles first and the global image last.
    pub values: Vec<f32>,
    pub images: usize,
    /// Tile rows and columns; both 0 when the frame is one unsplit image.
    pub rows: usize,
    pub cols: usize,
}

/// `threads` as configured, 0 meaning one per core.
fn worker_threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        threads
    }
}

/// Preprocesses `image`, split into tiles or not, resampling on up to `threads` threads (0: one per core).
/// The values are written into `buffer` (any contents, reused: see `normalise`).
pub fn preprocess(
    image: &RgbImage,
    settings: &ImageSettings,
    split: bool,
    threads: usize,
    buffer: Vec<f32>,
) -> Pixels {
    let threads = worker_threads(threads);
    let kernel = Kernel::detect();
    let first = longest_edge_size(image.width(), image.height(), settings.longest_edge);
    let tile = settings.tile;
    if !split {
        let global = resize_through(
            Cow::Borrowed(image),
            &[first, (tile, tile)],
            threads,
            kernel,
        );
        return normalised(&[(&global, (0, 0))], (0, 0), settings, threads, buffer);
    }
    let (width, height) = multiple_of_tile_size(first.0, first.1, tile);
    let grid = resize_through(
        Cow::Borrowed(image),
        &[first, (width, height)],
        threads,
        kernel,
    );
    let global = resize(Cow::Borrowed(grid.as_ref()), (tile, tile), threads, kernel);
    let (rows, cols) = if width > tile || height > tile {
        (height.div_ceil(tile), width.div_ceil(tile))
    } else {
        (0, 0)
    };
    // Tiles of the grid in row-major order, then the global image.
    let tiles = (0..rows).flat_map(|row| (0..cols).map(move |col| (col * tile, row * tile)));
    let squares: Vec<(&RgbImage, (u32, u32))> = tiles
        .map(|origin| (grid.as_ref(), origin))
        .chain([(global.as_ref(), (0, 0))])
        .collect();
    normalised(&squares, (rows, cols), settings, threads, buffer)
}

/// The instruction set preprocessing resamples with on this CPU: "AVX-512", "AVX2" or "portable".
pub fn resampling_kernel() -> &'static str {
    Kernel::detect().name()
}

/// A frame as the video processor resizes it, which is how the image processor resizes an unsplit image:
/// step 1, then squared to one tile. This is what a clip keeps of each frame, so that its memory does not
/// depend on the camera's resolution.
pub fn clip_frame(image: &RgbImage, settings: &ImageSettings, threads: usize) -> RgbImage {
    let threads = worker_threads(threads);
    let first = longest_edge_size(image.width(), image.height(), settings.longest_edge);
    let square = (settings.tile, settings.tile);
    resize_through(
        Cow::Borrowed(image),
        &[first, square],
        threads,
        Kernel::detect(),
    )
    .into_owned()
}

/// The encoder input for a clip: every frame one unsplit image, in order. Tile-sized frames are taken as
/// `clip_frame` made them; any other size is resized by it first. The values are written into `buffer`.
pub fn preprocess_clip(
    frames: &[&RgbImage],
    settings: &ImageSettings,
    threads: usize,
    buffer: Vec<f32>,
) -> Pixels {
    let threads = worker_threads(threads);
    let tile = settings.tile;
    let squares: Vec<Cow<'_, RgbImage>> = frames
        .iter()
        .map(|frame| {
            if frame.dimensions() == (tile, tile) {
                Cow::Borrowed(*frame)
            } else {
                Cow::Owned(clip_frame(frame, settings, threads))
            }
        })
        .collect();
    let squares: Vec<(&RgbImage, (u32, u32))> = squares
        .iter()
        .map(|square| (square.as_ref(), (0, 0)))
        .collect();
    normalised(&squares, (0, 0), settings, threads, buffer)
}

/// The encoder input of `squares`, the tiles of a `rows` x `cols` grid (none: 0 x 0) and the global image.
fn normalised(
    squares: &[(&RgbImage, (u32, u32))],
    (rows, cols): (u32, u32),
    settings: &ImageSettings,
    threads: usize,
    buffer: Vec<f32>,
) -> Pixels {
    Pixels {
        values: normalise(squares, settings, threads, buffer),
        images: squares.len(),
        rows: rows as usize,
        cols: cols as usize,
    }
}

/// Step 3 for each tile-sized square (an image and the square's top-left corner in it), channels first,
/// into `values`, whose old contents are all overwritten. A buffer passed back in is worth keeping: 13
/// tiles are 41 MB of values, and a fresh allocation of that size comes from the kernel page by page
/// (about 30 ms of page faults, as long as the rest of preprocessing).
fn normalise(
    squares: &[(&RgbImage, (u32, u32))],
    settings: &ImageSettings,
    threads: usize,
    mut values: Vec<f32>,
) -> Vec<f32> {
    let side = settings.tile as usize;
    values.resize(squares.len() * 3 * side * side, 0.0);
    let normaliser = Normaliser::new(settings);
    // A unit is one row of one channel's plane, so that even a single square spreads over the threads.
    in_bands(&mut values, side, threads, |first_row, band| {
        pulp::Arch::new().dispatch(NormaliseBand {
            band,
            first_row,
            side,
            squares,
            normaliser: &normaliser,
        });
    });
    values
}

/// Step 1's size: longest edge to `longest`, the other side truncated then made even, at least 1.
fn longest_edge_size(width: u32, height: u32, longest: u32) -> (u32, u32) {
    let aspect = f64::from(width) / f64::from(height);
    let (mut width, mut height) = if width >= height {
        let mut short = (f64::from(longest) / aspect) as u32;
        short += short % 2;
        (longest, short)
    } else {
        let mut short = (f64::from(longest) * aspect) as u32;
        short += short % 2;
        (short, longest)
    };
    width = width.max(1);
    height = height.max(1);
    (width, height)
}

/// Step 2's size: the longer side rounded up to a multiple of `tile`, the other scaled, then rounded up.
fn multiple_of_tile_size(width: u32, height: u32, tile: u32) -> (u32, u32) {
    let aspect = f64::from(width) / f64::from(height);
    if width >= height {
        let width = width.div_ceil(tile) * tile;
        let height = ((f64::from(width) / aspect) as u32).div_ceil(tile) * tile;
        (width, height.max(tile))
    } else {
        let height = height.div_ceil(tile) * tile;
        let width = ((f64::from(height) * aspect) as u32).div_ceil(tile) * tile;
        (width.max(tile), height)
    }
}

/// Step 3 with the reference's arithmetic, so that the values are the reference's bit for bit: it folds
/// the rescale into the normalisation (mean and std divided by the rescale factor, in f32) and computes
/// `(byte - mean) / std` in f32.
struct Normaliser {
    mean: [f32; 3],
    std: [f32; 3],
}

impl Normaliser {
    fn new(settings: &ImageSettings) -> Normaliser {
        let inverse = (1.0 / settings.rescale_factor) as f32;
        Normaliser {
            mean: settings.mean.map(|mean| mean * inverse),
            std: settings.std.map(|std| std * inverse),
        }
    }
}

/// Plane rows `first_row..` of the encoder input (each `side` values: the rows of every channel plane of
/// every square, in order), written into `band`.
struct NormaliseBand<'a> {
    band: &'a mut [f32],
    first_row: usize,
    side: usize,
    squares: &'a [(&'a RgbImage, (u32, u32))],
    normaliser: &'a Normaliser,
}

impl pulp::WithSimd for NormaliseBand<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let side = self.side;
        let Normaliser { mean, std } = self.normaliser;
        for (out, row) in self.band.chunks_exact_mut(side).zip(self.first_row..) {
            let (plane, y) = (row / side, row % side);
            let channel = plane % 3;
            let (image, (left, top)) = self.squares[plane / 3];
            let row_len = image.width() as usize * 3;
            let first = (top as usize + y) * row_len + left as usize * 3;
            let pixels = &image.as_raw()[first..][..side * 3];
            let (mean, std) = (mean[channel], std[channel]);
            for (value, pixel) in out.iter_mut().zip(pixels.chunks_exact(3)) {
                *value = (f32::from(pixel[channel]) - mean) / std;
            }
        }
    }
}

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
fn resize(
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
fn resize_through<'a>(
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

/// Fills `out`, a sequence of `unit_len`-long units (image rows, squares), in bands of whole units on
/// up to `threads` scoped threads; `fill(first_unit, band)` computes one band. Every stage here is
/// independent per output row, so the bands need no coordination.
fn in_bands<T: Send>(
    out: &mut [T],
    unit_len: usize,
    threads: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) {
    let units = out.len() / unit_len;
    // Below a few hundred kilobytes a thread costs more than it saves.
    let threads = threads
        .min(size_of_val(out) / (256 * 1024))
        .min(units)
        .max(1);
    if threads == 1 {
        fill(0, out);
        return;
    }
    let band_units = units.div_ceil(threads);
    let (first, rest) = out.split_at_mut(band_units * unit_len);
    std::thread::scope(|scope| {
        for (band, chunk) in rest.chunks_mut(band_units * unit_len).enumerate() {
            let fill = &fill;
            scope.spawn(move || fill((band + 1) * band_units, chunk));
        }
        // The calling thread computes the first band rather than wait idle.
        fill(0, first);
    });
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
    use super::kernel::clip8;
    use super::*;

    fn settings() -> ImageSettings {
        ImageSettings {
            longest_edge: 2048,
            tile: 512,
            rescale_factor: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    #[test]
    fn sizes_follow_the_reference_rules() {
        assert_eq!(longest_edge_size(640, 480, 2048), (2048, 1536));
        assert_eq!(longest_edge_size(1, 1, 2048), (2048, 2048));
        assert_eq!(longest_edge_size(300, 301, 2048), (2042, 2048));
        assert_eq!(longest_edge_size(20000, 100, 2048), (2048, 10));
        assert_eq!(multiple_of_tile_size(2048, 1536, 512), (2048, 1536));
        assert_eq!(multiple_of_tile_size(2048, 274, 512), (2048, 512));
        assert_eq!(multiple_of_tile_size(410, 2048, 512), (512, 2048));
    }

    #[test]
    fn a_640x480_frame_makes_12_tiles_and_a_global_image() {
        let pixels = preprocess(&RgbImage::new(640, 480), &settings(), true, 2, Vec::new());
        assert_eq!((pixels.rows, pixels.cols, pixels.images), (3, 4, 13));
        assert_eq!(pixels.values.len(), 13 * 3 * 512 * 512);
        let single = preprocess(&RgbImage::new(640, 480), &settings(), false, 2, Vec::new());
        assert_eq!((single.rows, single.cols, single.images), (0, 0, 1));
    }

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

    #[test]
    fn a_flat_colour_stays_flat_and_is_normalised_over_a_reused_buffer() {
        let image = RgbImage::from_pixel(37, 11, image::Rgb([255, 0, 51]));
        let plane = 512 * 512;
        let stale = vec![7.0; 5 * 3 * plane];
        let pixels = preprocess(&image, &settings(), false, 2, stale);
        assert_eq!(pixels.values.len(), 3 * plane);
        assert!(
            pixels.values[..plane]
                .iter()
                .all(|v| (*v - 1.0).abs() < 1e-6)
        );
        assert!(
            pixels.values[plane..2 * plane]
                .iter()
                .all(|v| (*v + 1.0).abs() < 1e-6)
        );
        assert!(
            pixels.values[2 * plane..]
                .iter()
                .all(|v| (*v + 0.6).abs() < 1e-6)
        );
    }
}
