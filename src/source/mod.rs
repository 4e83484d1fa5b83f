//! Frame sources: where pictures come from, and the capture loop that turns them into `Frame`s.
//!
//! Every source (a camera device, an HTTP snapshot URL, image files, a synthetic pattern) sits behind
//! `FrameSource`, which only knows how to produce the next RGB picture. The capture loop around it owns
//! pacing, numbering, timestamps, error handling and backoff, so a new kind of source is one small file.
//!
//! The loop hands frames to the gate through a `watch` channel: it holds only the newest frame, so a slow
//! consumer never makes capture fall behind or memory grow; frames nobody looked at are counted as
//! replaced, not queued.

mod camera;
pub mod decode;
mod files;
mod http;
pub mod picture;
mod synthetic;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::message::Frame;
use crate::stats::Stats;
use crate::validate::{self, Problems};

pub use decode::DecodeError;
pub use http::HttpAuth;

/// The newest frame of a camera, or `None` before the first one.
pub(crate) type LatestFrame = watch::Receiver<Option<Arc<Frame>>>;

/// A boxed future, so sources can be chosen from config at run time.
pub(crate) type SourceFuture<'a> =
    Pin<Box<dyn Future<Output = Result<RgbImage, SourceError>> + Send + 'a>>;

/// Something that produces pictures. Pacing, retries and numbering belong to the capture loop.
pub(crate) trait FrameSource: Send {
    /// Produces the next picture (waiting for the device or the network as needed).
    fn next_image(&mut self) -> SourceFuture<'_>;
}

/// Why a source gave no picture this time.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    /// The device or server is not there or failing: the loop backs off before trying again.
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// This one picture was bad (corrupt, not an image, too large): skipped and counted.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// A finite source (files without looping) has nothing more to give.
    #[error("no more frames")]
    Exhausted,
}

/// One camera: its id and where its frames come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub id: String,
    pub source: SourceConfig,
}

/// Which kind of source, with its settings. See the embedded default config for the documentation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    Auto {
        #[serde(default = "default_fps")]
        fps: f64,
    },
    Camera {
        device: DeviceSelector,
        width: Option<u32>,
        height: Option<u32>,
        #[serde(default = "default_fps")]
        fps: f64,
    },
    Http {
        url: String,
        #[serde(default = "default_http_interval")]
        interval_secs: f64,
        #[serde(default = "default_http_timeout")]
        timeout_secs: f64,
        auth: Option<http::HttpAuth>,
    },
    Files {
        path: PathBuf,
        #[serde(default = "default_fps")]
        fps: f64,
        #[serde(default)]
        looping: bool,
    },
    Synthetic {
        #[serde(default = "default_width")]
        width: u32,
        #[serde(default = "default_height")]
        height: u32,
        #[serde(default = "default_fps")]
        fps: f64,
    },
}

/// A camera device by index (`device = 0`) or by a substring of its name (`device = "Logitech"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum DeviceSelector {
    Index(u32),
    Name(String),
}

fn default_fps() -> f64 {
    2.0
}
fn default_http_interval() -> f64 {
    5.0
}
fn default_http_timeout() -> f64 {
    10.0
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}

/// The largest side a camera or synthetic source may be configured to.
const MAX_CONFIGURED_SIDE: u32 = 16_384;

impl CameraConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        validate::topic_segment(problems, &format!("{path}.id"), &self.id);
        let at = |field: &str| format!("{path}.source.{field}");
        let check_size = |problems: &mut Problems, width: u32, height: u32| {
            for (field, value) in [("width", width), ("height", height)] {
                if value == 0 || value > MAX_CONFIGURED_SIDE {
                    problems.push(
                        at(field),
                        format!("must be 1 to {MAX_CONFIGURED_SIDE} pixels, not {value}"),
                    );
                }
            }
        };
        match &self.source {
            SourceConfig::Auto { fps } => validate::fps(problems, &at("fps"), *fps),
            SourceConfig::Camera {
                device,
                width,
                height,
                fps,
            } => {
                validate::fps(problems, &at("fps"), *fps);
                match (width, height) {
                    (Some(width), Some(height)) => check_size(problems, *width, *height),
                    (None, None) => {}
                    _ => problems.push(at("width"), "give both width and height, or neither"),
                }
                if matches!(device, DeviceSelector::Name(name) if name.trim().is_empty()) {
                    problems.push(at("device"), "a device name must not be empty");
                }
            }
            SourceConfig::Http {
                url,
                interval_secs,
                timeout_secs,
                ..
            } => {
                validate::seconds(problems, &at("interval_secs"), *interval_secs);
                validate::seconds(problems, &at("timeout_secs"), *timeout_secs);
                match url::Url::parse(url) {
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                    Ok(parsed) => problems.push(
                        at("url"),
                        format!("scheme {:?} is not http or https", parsed.scheme()),
                    ),
                    Err(error) => problems.push(at("url"), format!("not a URL: {error}")),
                }
            }
            SourceConfig::Files {
                path: files, fps, ..
            } => {
                validate::fps(problems, &at("fps"), *fps);
                if !files.exists() {
                    problems.push(at("path"), format!("{} does not exist", files.display()));
                }
            }
            SourceConfig::Synthetic { width, height, fps } => {
                validate::fps(problems, &at("fps"), *fps);
                check_size(problems, *width, *height);
            }
        }
    }

    /// Seconds between two capture attempts.
    fn period(&self) -> Duration {
        let seconds = match &self.source {
            SourceConfig::Http { interval_secs, .. } => *interval_secs,
            SourceConfig::Auto { fps }
            | SourceConfig::Camera { fps, .. }
            | SourceConfig::Files { fps, .. }
            | SourceConfig::Synthetic { fps, .. } => 1.0 / fps,
        };
        Duration::from_secs_f64(seconds)
    }
}

/// Builds the source a camera's config asks for. Opening devices happens lazily, in the capture loop.
fn open(config: &CameraConfig) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(match &config.source {
        SourceConfig::Auto { .. } => {
            if camera::any_device_present() {
                info!(camera = %config.id, "Found a camera device; using the first one.");
                Box::new(camera::CameraSource::new(
                    DeviceSelector::Index(0),
                    None,
                    30,
                ))
            } else {
                info!(camera = %config.id, "No camera device found; using a synthetic moving pattern.");
                Box::new(synthetic::SyntheticSource::new(
                    default_width(),
                    default_height(),
                ))
            }
        }
        SourceConfig::Camera {
            device,
            width,
            height,
            fps,
        } => {
            let size = width.zip(*height);
            Box::new(camera::CameraSource::new(
                device.clone(),
                size,
                fps.ceil() as u32,
            ))
        }
        SourceConfig::Http {
            url,
            timeout_secs,
            auth,
            ..
        } => Box::new(http::HttpSource::new(
            url,
            Duration::from_secs_f64(*timeout_secs),
            auth.clone(),
        )?),
        SourceConfig::Files { path, looping, .. } => {
            Box::new(files::FilesSource::new(path, *looping))
        }
        SourceConfig::Synthetic { width, height, .. } => {
            Box::new(synthetic::SyntheticSource::new(*width, *height))
        }
    })
}

/// Captures frames from one camera until `shutdown` or until a finite source runs out, publishing each
/// into `output` (which keeps only the newest).
pub async fn run(
    config: CameraConfig,
    output: watch::Sender<Option<Arc<Frame>>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let camera: Arc<str> = Arc::from(config.id.as_str());
    let mut source = match open(&config) {
        Ok(source) => source,
        Err(error) => {
            warn!(camera = %camera, error = %error, "Cannot set up the frame source; this camera is off.");
            stats.source_errors.inc();
            return;
        }
    };
    let mut ticks = tokio::time::interval(config.period());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::new();
    let mut seq = 0u64;
    info!(camera = %camera, "Capture started.");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        // A device that never returns a picture (a wedged driver) shows as this camera's stage stuck.
        let working = stats.progress.working(format!("camera {camera}"));
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            result = source.next_image() => result,
        };
        drop(working);
        match result {
            Ok(image) => {
                if backoff.failures() > 0 {
                    info!(camera = %camera, "Source is delivering frames again.");
                }
                backoff.reset();
                seq += 1;
                let frame = Frame {
                    camera: camera.clone(),
                    seq,
                    captured_at: SystemTime::now(),
                    capture_time: started.elapsed(),
                    image,
                };
                stats.frames_captured.inc();
                output.send_replace(Some(Arc::new(frame)));
            }
            Err(SourceError::BadFrame(reason)) => {
                stats.frames_bad.inc();
                warn!(camera = %camera, reason = %reason, "Skipped a bad frame.");
            }
            Err(SourceError::Unavailable(reason)) => {
                stats.source_errors.inc();
                let delay = backoff.next_delay();
                if backoff.is_first_failure() {
                    warn!(camera = %camera, reason = %reason, "Source unavailable; retrying with backoff.");
                } else {
                    debug!(camera = %camera, reason = %reason, delay_ms = delay.as_millis() as u64, "Source still unavailable.");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(SourceError::Exhausted) => {
                info!(camera = %camera, frames = seq, "Source has no more frames.");
                break;
            }
        }
    }
    info!(camera = %camera, frames = seq, "Capture stopped.");
}
