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

use image::RgbImage;

use kernel::Kernel;
use normalise::normalise;
use resample::{resize, resize_through};

mod kernel;
mod normalise;
mod resample;

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
    pub(crate) const SMOLVLM2: ImageSettings = ImageSettings {
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

#[cfg(test)]
mod tests {
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
