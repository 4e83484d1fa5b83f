//! A synthetic moving pattern: a colour gradient with a bright square that travels across it. It lets
//! a box with no camera run the whole pipeline, and gives change detection something that changes.

use image::{Rgb, RgbImage};

use super::{FrameSource, SourceError, SourceFuture};

pub(crate) struct SyntheticSource {
    width: u32,
    height: u32,
    step: u32,
}

impl SyntheticSource {
    pub fn new(width: u32, height: u32) -> SyntheticSource {
        SyntheticSource {
            width,
            height,
            step: 0,
        }
    }

    fn render(&self) -> RgbImage {
        let side = (self.width.min(self.height) / 4).max(1);
        let travel = self.width.saturating_sub(side).max(1);
        let left = (self.step * 16) % travel;
        let top = (self.height.saturating_sub(side)) / 2;
        RgbImage::from_fn(self.width, self.height, |x, y| {
            if (left..left + side).contains(&x) && (top..top + side).contains(&y) {
                Rgb([250, 240, 40])
            } else {
                let red = (x * 255 / self.width.max(1)) as u8;
                let blue = (y * 255 / self.height.max(1)) as u8;
                Rgb([red, 60, blue])
            }
        })
    }
}

impl FrameSource for SyntheticSource {
    fn next_image(&mut self) -> SourceFuture<'_> {
        let image = self.render();
        self.step = self.step.wrapping_add(1);
        Box::pin(async move { Ok::<_, SourceError>(image) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn consecutive_frames_differ_and_have_the_configured_size() {
        let mut source = SyntheticSource::new(64, 48);
        let first = source.next_image().await.unwrap();
        let second = source.next_image().await.unwrap();
        assert_eq!(first.dimensions(), (64, 48));
        assert_ne!(first, second);
    }
}
