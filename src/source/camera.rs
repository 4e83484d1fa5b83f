//! Frames from a camera device through nokhwa (V4L2 on Linux, AVFoundation on macOS, MSMF on Windows).
//!
//! A nokhwa `Camera` is not `Send` and its `frame()` blocks, so it lives on a thread of its own; the
//! async side asks that thread for one picture at a time through a bounded channel and gets the answer
//! on a oneshot. When the device errors or disappears the thread drops it and reports `Unavailable`; the
//! capture loop backs off and the next request opens the device again, so unplugging and replugging a
//! camera needs no restart.

use std::sync::mpsc;

use image::RgbImage;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
    Resolution,
};
use tokio::sync::oneshot;

use super::{DeviceSelector, FrameSource, SourceError, SourceFuture};

type Reply = oneshot::Sender<Result<RgbImage, SourceError>>;

pub(crate) struct CameraSource {
    /// Capacity 1: the capture loop asks for one picture at a time.
    requests: mpsc::SyncSender<Reply>,
}

/// Whether the platform lists at least one camera device.
pub(crate) fn any_device_present() -> bool {
    nokhwa::query(ApiBackend::Auto).is_ok_and(|devices| !devices.is_empty())
}

impl CameraSource {
    pub fn new(device: DeviceSelector, size: Option<(u32, u32)>, fps: u32) -> CameraSource {
        let (requests, incoming) = mpsc::sync_channel::<Reply>(1);
        std::thread::Builder::new()
            .name("camera".to_owned())
            .spawn(move || serve(device, size, fps, incoming))
            .expect("spawning a thread only fails when the OS is out of threads");
        CameraSource { requests }
    }
}

/// The device thread: opens lazily, answers each request with one frame, drops the device on error.
/// It ends when the `CameraSource` (the request sender) is dropped.
fn serve(
    device: DeviceSelector,
    size: Option<(u32, u32)>,
    fps: u32,
    incoming: mpsc::Receiver<Reply>,
) {
    let mut camera: Option<nokhwa::Camera> = None;
    for reply in incoming {
        let _ = reply.send(capture(&mut camera, &device, size, fps));
    }
}

/// One picture. The device is taken out of `camera` while in use and put back only when it delivered,
/// so any device error leaves it closed, to be reopened by the next request.
fn capture(
    camera: &mut Option<nokhwa::Camera>,
    device: &DeviceSelector,
    size: Option<(u32, u32)>,
    fps: u32,
) -> Result<RgbImage, SourceError> {
    let unavailable = |error: nokhwa::NokhwaError| SourceError::Unavailable(error.to_string());
    let mut open = match camera.take() {
        Some(open) => open,
        None => {
            let requested = match size {
                Some((width, height)) => RequestedFormatType::Closest(CameraFormat::new(
                    Resolution::new(width, height),
                    FrameFormat::MJPEG,
                    fps,
                )),
                None => RequestedFormatType::AbsoluteHighestFrameRate,
            };
            let mut opened = nokhwa::Camera::new(
                resolve(device)?,
                RequestedFormat::new::<RgbFormat>(requested),
            )
            .map_err(unavailable)?;
            opened.open_stream().map_err(unavailable)?;
            opened
        }
    };
    let buffer = open.frame().map_err(unavailable)?;
    *camera = Some(open);
    buffer.decode_image::<RgbFormat>().map_err(|error| {
        SourceError::BadFrame(format!("cannot decode the camera's frame: {error}"))
    })
}

/// The nokhwa index for a configured device: an index as is, a name by substring among listed devices.
fn resolve(device: &DeviceSelector) -> Result<CameraIndex, SourceError> {
    match device {
        DeviceSelector::Index(index) => Ok(CameraIndex::Index(*index)),
        DeviceSelector::Name(name) => {
            let devices = nokhwa::query(ApiBackend::Auto).map_err(|error| {
                SourceError::Unavailable(format!("cannot list camera devices: {error}"))
            })?;
            devices
                .into_iter()
                .find(|info| info.human_name().contains(name.as_str()))
                .map(|info| info.index().clone())
                .ok_or_else(|| {
                    SourceError::Unavailable(format!("no camera device named like {name:?}"))
                })
        }
    }
}

impl FrameSource for CameraSource {
    fn next_image(&mut self) -> SourceFuture<'_> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.requests.try_send(reply).map_err(|_| {
                SourceError::Unavailable("the camera thread is busy or gone".to_owned())
            })?;
            answer
                .await
                .map_err(|_| SourceError::Unavailable("the camera thread stopped".to_owned()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine kind has no camera: opening one must be a clear, retryable error, not a panic.
    #[tokio::test]
    async fn a_missing_device_is_unavailable_and_retryable() {
        let mut source = CameraSource::new(DeviceSelector::Index(57), Some((640, 480)), 5);
        for _ in 0..2 {
            match source.next_image().await {
                Err(SourceError::Unavailable(reason)) => assert!(!reason.is_empty()),
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
        let mut named = CameraSource::new(DeviceSelector::Name("no such camera".into()), None, 5);
        assert!(matches!(
            named.next_image().await,
            Err(SourceError::Unavailable(_))
        ));
    }
}
