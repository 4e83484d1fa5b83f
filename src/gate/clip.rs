//! A camera's recent frames for its clip tasks: "did someone leave a parcel in the last 20 seconds?" needs
//! frames from the past, which the newest-frame channel does not keep.
//!
//! Memory stays fixed whatever the camera's resolution and frame rate:
//! - a frame is kept only once the finest spacing any clip task needs (the smallest seconds / frames) has
//!   passed since the last kept one, so a 30 fps camera costs no more than a 1 fps one;
//! - it is stored already resized to what the model takes of a video frame (one tile, 512x512 for
//!   SmolVLM2, by the resize `app` hands the gate), so a 4K camera costs no more than a VGA one;
//! - the buffer holds enough frames to cover the longest window at that spacing, at most
//!   `MAX_BUFFERED_FRAMES`; the oldest frame goes first.
//!
//! A clip task samples its frames evenly over its window, as the reference's video sampling does (frame
//! indices spread from the first to the last, truncated); with fewer frames buffered than it asks for
//! (a camera that just started) it gets what there is, and its answer says so.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use image::RgbImage;
use tokio::time::Instant;

use crate::message::{Clip, ClipConfig, ClipFrame, ClipFrameInfo, ClipInfo};

/// The most frames a camera's clip buffer holds (192 MiB of 512x512 frames).
pub const MAX_BUFFERED_FRAMES: usize = 256;
/// One kept frame.
struct Buffered {
    image: Arc<RgbImage>,
    seq: u64,
    captured_at: SystemTime,
    seen: Instant,
}

/// A camera's recent frames, resized for the model.
pub struct ClipBuffer {
    frames: VecDeque<Buffered>,
    spacing: Duration,
    capacity: usize,
}

impl ClipBuffer {
    /// The buffer `clips` need, or `None` when there are none.
    pub(crate) fn for_clips<'a>(
        clips: impl IntoIterator<Item = &'a ClipConfig>,
    ) -> Option<ClipBuffer> {
        let clips: Vec<&ClipConfig> = clips.into_iter().collect();
        let spacing = clips.iter().map(|clip| clip.spacing()).min()?;
        let longest = clips.iter().map(|clip| clip.seconds).fold(0.0, f64::max);
        let capacity = (longest / spacing.as_secs_f64().max(1e-3)).ceil() as usize + 1;
        Some(ClipBuffer {
            frames: VecDeque::new(),
            spacing,
            capacity: capacity.clamp(1, MAX_BUFFERED_FRAMES),
        })
    }

    /// Whether a frame seen at `now` is to be kept (the spacing has passed since the last kept one).
    pub(crate) fn wants(&self, now: Instant) -> bool {
        self.frames
            .back()
            .is_none_or(|last| now - last.seen >= self.spacing)
    }

    /// Keeps `image` (already resized for the model), dropping the oldest frame when full.
    pub fn push(&mut self, image: RgbImage, seq: u64, captured_at: SystemTime, seen: Instant) {
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(Buffered {
            image: Arc::new(image),
            seq,
            captured_at,
            seen,
        });
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The pixel bytes held.
    pub fn bytes(&self) -> u64 {
        self.frames
            .iter()
            .map(|frame| frame.image.as_raw().len() as u64)
            .sum()
    }

    /// The clip `wanted` asks for at `now`: its frames evenly over the window, or every frame of the
    /// window when there are no more than it asks for. `None` when the window holds no frame.
    pub fn sample(&self, wanted: &ClipConfig, now: Instant) -> Option<(Clip, ClipInfo)> {
        let window = Duration::from_secs_f64(wanted.seconds);
        let candidates: Vec<&Buffered> = self
            .frames
            .iter()
            .filter(|frame| now.saturating_duration_since(frame.seen) <= window)
            .collect();
        let last = candidates.len().checked_sub(1)?;
        let chosen: Vec<&Buffered> = if candidates.len() <= wanted.frames {
            candidates
        } else if wanted.frames == 1 {
            // One frame over a window: the newest, which is what a one-frame question is about.
            vec![candidates[last]]
        } else {
            (0..wanted.frames)
                .map(|index| candidates[index * last / (wanted.frames - 1)])
                .collect()
        };
        let first = chosen[0].seen;
        let frames: Vec<ClipFrame> = chosen
            .iter()
            .map(|frame| ClipFrame {
                image: frame.image.clone(),
                offset_s: (frame.seen - first).as_secs_f64(),
            })
            .collect();
        let duration_s = (now - first).as_secs_f64().max(self.spacing.as_secs_f64());
        let note = (chosen.len() < wanted.frames).then(|| {
            format!(
                "only {} of {} frames: the camera has not produced more over the last {} s yet",
                chosen.len(),
                wanted.frames,
                wanted.seconds
            )
        });
        let info = ClipInfo {
            seconds: wanted.seconds,
            frames_wanted: wanted.frames,
            duration_s,
            frames: chosen
                .iter()
                .zip(&frames)
                .map(|(buffered, frame)| ClipFrameInfo {
                    seq: buffered.seq,
                    captured_at: humantime::format_rfc3339_millis(buffered.captured_at).to_string(),
                    offset_s: frame.offset_s,
                })
                .collect(),
            note,
        };
        Some((Clip { frames, duration_s }, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Problems;

    fn clip(seconds: f64, frames: usize) -> ClipConfig {
        ClipConfig { seconds, frames }
    }

    /// A buffer for `clips` fed one frame every `every` for `count` frames, from `start`.
    fn fed(clips: &[ClipConfig], every: Duration, count: u64, start: Instant) -> ClipBuffer {
        let mut buffer = ClipBuffer::for_clips(clips).unwrap();
        for seq in 0..count {
            let seen = start + every * seq as u32;
            if buffer.wants(seen) {
                buffer.push(RgbImage::new(4, 4), seq, SystemTime::now(), seen);
            }
        }
        buffer
    }

    #[test]
    fn frames_are_kept_at_the_finest_spacing_and_the_buffer_stays_bounded() {
        let start = Instant::now();
        // 30 fps for ten minutes; the tasks need a frame every 0.5 s over at most 8 s.
        let clips = [clip(8.0, 8), clip(2.0, 4)];
        let buffer = fed(&clips, Duration::from_millis(33), 18_000, start);
        assert_eq!(buffer.capacity(), 17);
        assert_eq!(buffer.len(), 17);
        assert_eq!(buffer.bytes(), 17 * 4 * 4 * 3);
        assert!(ClipBuffer::for_clips(&[]).is_none());
        let huge = ClipBuffer::for_clips(&[clip(3600.0, 64), clip(1.0, 64)]).unwrap();
        assert_eq!(huge.capacity(), MAX_BUFFERED_FRAMES);
    }

    #[test]
    fn a_clip_is_sampled_evenly_over_its_window() {
        let start = Instant::now();
        let buffer = fed(
            &[clip(8.0, 8), clip(4.0, 3)],
            Duration::from_millis(100),
            200,
            start,
        );
        let now = start + Duration::from_millis(19_900);
        let (clip8, info8) = buffer.sample(&clip(8.0, 8), now).unwrap();
        assert_eq!(clip8.frames.len(), 8);
        assert_eq!(info8.note, None);
        let offsets: Vec<f64> = clip8.frames.iter().map(|frame| frame.offset_s).collect();
        for pair in offsets.windows(2) {
            assert!((pair[1] - pair[0] - 1.0).abs() < 0.11, "{offsets:?}");
        }
        assert!((clip8.duration_s - 8.0).abs() < 0.2, "{}", clip8.duration_s);
        // Three frames over the last 4 s: the first, middle and last of that window.
        let (clip3, info3) = buffer.sample(&clip(4.0, 3), now).unwrap();
        let seqs: Vec<u64> = info3.frames.iter().map(|frame| frame.seq).collect();
        assert_eq!(seqs, [160, 170, 190]);
        assert_eq!(clip3.frames[0].offset_s, 0.0);
        // One frame: the newest.
        let (_, info1) = buffer.sample(&clip(4.0, 1), now).unwrap();
        assert_eq!(info1.frames[0].seq, 190);
    }

    #[test]
    fn a_young_buffer_gives_what_it_has_and_says_so() {
        let start = Instant::now();
        let buffer = fed(&[clip(8.0, 8)], Duration::from_millis(100), 25, start);
        let (young, info) = buffer
            .sample(&clip(8.0, 8), start + Duration::from_millis(2_500))
            .unwrap();
        assert_eq!(young.frames.len(), 3);
        assert!(info.note.unwrap().contains("only 3 of 8 frames"));
        let empty = ClipBuffer::for_clips(&[clip(8.0, 8)]).unwrap();
        assert!(empty.sample(&clip(8.0, 8), start).is_none());
    }

    #[test]
    fn bad_clips_are_reported_with_their_paths() {
        let mut problems = Problems::default();
        for (index, bad) in [clip(0.0, 4), clip(5.0, 0), clip(5.0, 65), clip(f64::NAN, 4)]
            .iter()
            .enumerate()
        {
            bad.validate(&format!("tasks[{index}].clip"), &mut problems);
        }
        let text: Vec<String> = problems
            .into_vec()
            .iter()
            .map(ToString::to_string)
            .collect();
        let text = text.join("\n");
        for path in [
            "tasks[0].clip.seconds",
            "tasks[1].clip.frames",
            "tasks[2].clip.frames",
            "tasks[3].clip.seconds",
        ] {
            assert!(text.contains(path), "{path} not in {text}");
        }
    }
}
