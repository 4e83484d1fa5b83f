//! Step 3: bytes to the encoder's values, scaled and normalised with the reference's f32 arithmetic
//! and laid out channels first, one plane row per unit of work so that even one square spreads over
//! the threads; `pulp` compiles the loop for the CPU's instruction set.

use image::RgbImage;

use super::{ImageSettings, in_bands};

/// Step 3 for each tile-sized square (an image and the square's top-left corner in it), channels first,
/// into `values`, whose old contents are all overwritten. A buffer passed back in is worth keeping: 13
/// tiles are 41 MB of values, and a fresh allocation of that size comes from the kernel page by page
/// (about 30 ms of page faults, as long as the rest of preprocessing).
pub(super) fn normalise(
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
