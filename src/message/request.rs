//! What travels from the cameras to the model: a frame, a clip of recent frames, and the questions
//! asked about them with who asked each.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use image::RgbImage;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use super::{ASK_TASK, AnswerKind};

/// One picture from one camera, as it travels down the pipeline.
#[derive(Debug)]
pub struct Frame {
    pub camera: Arc<str>,
    /// Counts frames of this camera from 1 since its source (re)started.
    pub seq: u64,
    pub captured_at: SystemTime,
    /// How long the source took to deliver the picture.
    pub capture_time: Duration,
    pub image: RgbImage,
}

/// The most frames one clip may have: SmolVLM2 was trained on videos of up to 64.
pub const MAX_CLIP_FRAMES: usize = 64;

/// Frames taken as one video, oldest first.
#[derive(Debug, Clone)]
pub struct Clip {
    pub frames: Vec<ClipFrame>,
    /// The time the clip covers, in seconds; the prompt states it.
    pub duration_s: f64,
}

/// One frame of a clip and when it was taken, in seconds from the clip's start.
#[derive(Debug, Clone)]
pub struct ClipFrame {
    pub image: Arc<image::RgbImage>,
    pub offset_s: f64,
}

/// What an answer about a clip says about the clip: the window asked for and the frames used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipInfo {
    /// The window the task asks about.
    pub seconds: f64,
    pub frames_wanted: usize,
    /// From the first frame used to the moment the clip was taken.
    pub duration_s: f64,
    pub frames: Vec<ClipFrameInfo>,
    /// Set when fewer frames than wanted were available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipFrameInfo {
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub captured_at: String,
    /// Seconds from the clip's first frame.
    pub offset_s: f64,
}

/// Who asked a question.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Task(Arc<str>),
    /// An ask, of its own question or of a configured task (`task`), whose answer then goes to
    /// that task's topic.
    Ask {
        id: String,
        task: Option<Arc<str>>,
    },
}

impl Origin {
    /// The task an answer is published under, and the ask it answers, if any.
    pub(crate) fn task_and_ask_id(&self) -> (&str, Option<&str>) {
        match self {
            Origin::Task(task) => (task, None),
            Origin::Ask { id, task } => (task.as_deref().unwrap_or(ASK_TASK), Some(id)),
        }
    }
}

/// One question to answer about a job's frame.
#[derive(Debug)]
pub struct Request {
    pub origin: Origin,
    pub question: String,
    pub kind: AnswerKind,
    pub split: bool,
    pub max_new_tokens: u32,
    /// Held by asks until they are answered (dropping the request releases it).
    pub permit: Option<OwnedSemaphorePermit>,
    /// For a clip task: the frames to answer about instead of the job's frame.
    pub clip: Option<Box<ClipRequest>>,
}

impl Request {
    /// A question asked once from the command line: an ask with the id `cli` and no task.
    pub fn asked_once(
        question: String,
        kind: AnswerKind,
        split: bool,
        max_new_tokens: u32,
    ) -> Request {
        Request {
            origin: Origin::Ask {
                id: "cli".to_owned(),
                task: None,
            },
            question,
            kind,
            split,
            max_new_tokens,
            permit: None,
            clip: None,
        }
    }
}

/// A clip sampled for a request, and what its answer will say about it.
#[derive(Debug)]
pub struct ClipRequest {
    pub clip: Clip,
    pub info: ClipInfo,
}
