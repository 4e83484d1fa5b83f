//! Cheap change detection: a frame is reduced to a tiny grey thumbnail and compared with the thumbnail
//! of the last frame a task analysed. The mean absolute difference (0 = identical, 1 = black vs white)
//! ignores sensor noise that a pixel-exact comparison would trip on, and costs one pass over the pixels.

use image::RgbImage;

const WIDTH: usize = 32;
const HEIGHT: usize = 24;

/// A 32x24 grey thumbnail of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail([u8; WIDTH * HEIGHT]);

impl Thumbnail {
    /// Box-averages `image` into the thumbnail grid (luma from Rec. 601 weights).
    pub fn of(image: &RgbImage) -> Thumbnail {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let mut sums = [0u64; WIDTH * HEIGHT];
        let mut counts = [0u64; WIDTH * HEIGHT];
        for (x, y, pixel) in image.enumerate_pixels() {
            let cell =
                (y as usize * HEIGHT / height.max(1)) * WIDTH + (x as usize * WIDTH / width.max(1));
            let [r, g, b] = pixel.0;
            sums[cell] += (299 * u64::from(r) + 587 * u64::from(g) + 114 * u64::from(b)) / 1000;
            counts[cell] += 1;
        }
        let mut cells = [0u8; WIDTH * HEIGHT];
        for (cell, (sum, count)) in cells.iter_mut().zip(sums.iter().zip(counts.iter())) {
            *cell = sum.checked_div(*count).unwrap_or(0) as u8;
        }
        Thumbnail(cells)
    }

    /// Mean absolute difference in [0, 1].
    pub fn difference(&self, other: &Thumbnail) -> f64 {
        let total: u64 = self
            .0
            .iter()
            .zip(other.0.iter())
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        total as f64 / (255.0 * (WIDTH * HEIGHT) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_frames_do_not_differ_and_opposites_differ_fully() {
        let black = RgbImage::new(64, 48);
        let white = RgbImage::from_pixel(64, 48, image::Rgb([255, 255, 255]));
        assert_eq!(
            Thumbnail::of(&black).difference(&Thumbnail::of(&black)),
            0.0
        );
        assert!((Thumbnail::of(&black).difference(&Thumbnail::of(&white)) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_small_object_moves_the_score_a_little() {
        let background = RgbImage::from_pixel(320, 240, image::Rgb([100, 100, 100]));
        let mut with_object = background.clone();
        for x in 0..80 {
            for y in 0..60 {
                with_object.put_pixel(x, y, image::Rgb([250, 250, 250]));
            }
        }
        let score = Thumbnail::of(&background).difference(&Thumbnail::of(&with_object));
        // A sixteenth of the picture changed by 150 of 255 levels.
        assert!((score - 150.0 / 255.0 / 16.0).abs() < 0.01, "{score}");
    }

    #[test]
    fn tiny_images_work() {
        let one = RgbImage::from_pixel(1, 1, image::Rgb([9, 9, 9]));
        assert_eq!(Thumbnail::of(&one).difference(&Thumbnail::of(&one)), 0.0);
    }
}
