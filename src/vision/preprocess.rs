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
//! Resampling is Lanczos (a = 3), separable, horizontal pass first, with 8-bit rounding between passes and
//! fixed-point weights, as Pillow computes it (torchvision's CPU Lanczos follows the same scheme). The
//! reference is matched within a tolerance measured by the conformance tests, not bit for bit.

use image::RgbImage;

/// The processor settings read from the model's `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSettings {
    /// `size.longest_edge`: the first resize target.
    pub longest_edge: u32,
    /// `max_image_size.longest_edge`: the side of a tile and of the global image.
    pub tile: u32,
    pub rescale_factor: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
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

/// Preprocesses `image`, split into tiles or not.
pub fn preprocess(image: &RgbImage, settings: &ImageSettings, split: bool) -> Pixels {
    let (width, height) = longest_edge_size(image.width(), image.height(), settings.longest_edge);
    let resized = resize(image, width, height);
    let tile = settings.tile;
    let mut pixels = Pixels {
        values: Vec::new(),
        images: 0,
        rows: 0,
        cols: 0,
    };
    if split {
        let (width, height) = multiple_of_tile_size(width, height, tile);
        let grid = resize(&resized, width, height);
        if width > tile || height > tile {
            pixels.rows = height.div_ceil(tile) as usize;
            pixels.cols = width.div_ceil(tile) as usize;
            for row in 0..pixels.rows as u32 {
                for col in 0..pixels.cols as u32 {
                    let crop = image::imageops::crop_imm(&grid, col * tile, row * tile, tile, tile)
                        .to_image();
                    push_normalised(&mut pixels, &crop, settings);
                }
            }
            push_normalised(&mut pixels, &resize(&grid, tile, tile), settings);
        } else {
            push_normalised(&mut pixels, &resize(&grid, tile, tile), settings);
        }
    } else {
        push_normalised(&mut pixels, &resize(&resized, tile, tile), settings);
    }
    pixels
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

fn push_normalised(pixels: &mut Pixels, image: &RgbImage, settings: &ImageSettings) {
    let plane = (image.width() * image.height()) as usize;
    let start = pixels.values.len();
    pixels.values.resize(start + 3 * plane, 0.0);
    let (scale, mean, std) = (settings.rescale_factor, settings.mean, settings.std);
    let out = &mut pixels.values[start..];
    for (index, pixel) in image.pixels().enumerate() {
        for channel in 0..3 {
            out[channel * plane + index] =
                (f32::from(pixel.0[channel]) * scale - mean[channel]) / std[channel];
        }
    }
    pixels.images += 1;
}

/// Weights are fixed point with this many fractional bits (Pillow's choice for 8-bit images): 255 times
/// the weights' absolute sum (at most about 1.3 for Lanczos) stays within an i32 accumulator.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output position along one axis: the first input index and its fixed-point weights.
struct Taps {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
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
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

fn taps(in_size: u32, out_size: u32) -> Taps {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = 3.0 * filter_scale;
    let mut starts = Vec::with_capacity(out_size as usize);
    let mut weights = Vec::with_capacity(out_size as usize);
    for out in 0..out_size {
        let center = (f64::from(out) + 0.5) * scale;
        // Truncation toward zero, then clamping, as the reference does.
        let first = ((center - support + 0.5) as i64).max(0) as usize;
        let last = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
        let raw: Vec<f64> = (first..last)
            .map(|x| lanczos((x as f64 - center + 0.5) / filter_scale))
            .collect();
        let total: f64 = raw.iter().sum();
        let unit = f64::from(1u32 << PRECISION_BITS);
        let fixed = raw
            .iter()
            .map(|w| {
                let w = if total != 0.0 { w / total } else { *w };
                if w < 0.0 {
                    (w * unit - 0.5) as i32
                } else {
                    (w * unit + 0.5) as i32
                }
            })
            .collect();
        starts.push(first);
        weights.push(fixed);
    }
    Taps { starts, weights }
}

fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Lanczos resize to `width` x `height`: horizontal pass, then vertical, each rounding to 8 bits.
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    let horizontal = if image.width() == width {
        image.clone()
    } else {
        resize_horizontal(image, width)
    };
    if horizontal.height() == height {
        horizontal
    } else {
        resize_vertical(&horizontal, height)
    }
}

fn resize_horizontal(image: &RgbImage, width: u32) -> RgbImage {
    let taps = taps(image.width(), width);
    let source = image.as_raw();
    let row_len = image.width() as usize * 3;
    let mut out = vec![0u8; width as usize * image.height() as usize * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    for (row, out_row) in out.chunks_exact_mut(width as usize * 3).enumerate() {
        let input = &source[row * row_len..(row + 1) * row_len];
        for (x, (start, weights)) in taps.starts.iter().zip(&taps.weights).enumerate() {
            let mut sums = [half; 3];
            for (k, weight) in weights.iter().enumerate() {
                let at = (start + k) * 3;
                for channel in 0..3 {
                    sums[channel] += i32::from(input[at + channel]) * *weight;
                }
            }
            for channel in 0..3 {
                out_row[x * 3 + channel] = clip8(sums[channel]);
            }
        }
    }
    RgbImage::from_raw(width, image.height(), out).expect("sized above")
}

fn resize_vertical(image: &RgbImage, height: u32) -> RgbImage {
    let taps = taps(image.height(), height);
    let source = image.as_raw();
    let row_len = image.width() as usize * 3;
    let mut out = vec![0u8; row_len * height as usize];
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut sums = vec![0i32; row_len];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        sums.fill(half);
        for (k, weight) in taps.weights[y].iter().enumerate() {
            let input = &source[(taps.starts[y] + k) * row_len..][..row_len];
            for (sum, value) in sums.iter_mut().zip(input) {
                *sum += i32::from(*value) * *weight;
            }
        }
        for (value, sum) in out_row.iter_mut().zip(&sums) {
            *value = clip8(*sum);
        }
    }
    RgbImage::from_raw(image.width(), height, out).expect("sized above")
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
        let pixels = preprocess(&RgbImage::new(640, 480), &settings(), true);
        assert_eq!((pixels.rows, pixels.cols, pixels.images), (3, 4, 13));
        assert_eq!(pixels.values.len(), 13 * 3 * 512 * 512);
        let single = preprocess(&RgbImage::new(640, 480), &settings(), false);
        assert_eq!((single.rows, single.cols, single.images), (0, 0, 1));
    }

    #[test]
    fn a_flat_colour_stays_flat_and_is_normalised() {
        let image = RgbImage::from_pixel(37, 11, image::Rgb([255, 0, 51]));
        let pixels = preprocess(&image, &settings(), false);
        let plane = 512 * 512;
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
