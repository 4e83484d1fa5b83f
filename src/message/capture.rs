//! Cloud answers on their way to the dataset: the escalation stage offers each answer the cloud gave
//! with the images and prompt it was given, and the dataset stage saves those that are opted in. The
//! sink says which are wanted without the escalation stage knowing the dataset's config.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::stats::Stats;

use super::Answer;

/// One escalation the cloud answered, as it is to be saved.
#[derive(Debug, Clone)]
pub struct Capture {
    /// The cloud's answer, with the local one it replaced in `local`.
    pub answer: Answer,
    /// The JPEGs as sent, oldest first: at least one.
    pub images: Vec<Vec<u8>>,
    /// The text sent with them.
    pub prompt: String,
}

/// Whether the escalations of a task on a camera are wanted now: `(camera, task)`.
pub type Wanted = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The escalation stage's side of the channel: says which answers are wanted and hands them over
/// without waiting.
#[derive(Clone)]
pub struct CaptureSink {
    wanted: Wanted,
    captures: mpsc::Sender<Capture>,
    stats: Arc<Stats>,
}

impl CaptureSink {
    pub fn new(wanted: Wanted, captures: mpsc::Sender<Capture>, stats: Arc<Stats>) -> CaptureSink {
        CaptureSink {
            wanted,
            captures,
            stats,
        }
    }

    /// Whether the escalations of `task` on `camera` are kept now.
    pub(crate) fn wants(&self, camera: &str, task: &str) -> bool {
        (self.wanted)(camera, task)
    }

    /// Hands `capture` to the stage; when it is behind, the capture is dropped and counted.
    pub(crate) fn offer(&self, capture: Capture) {
        match self.captures.try_send(capture) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dataset.count_dropped("busy");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.dataset.count_dropped("stopped");
            }
        }
    }
}
