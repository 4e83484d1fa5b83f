//! The answer as published on MQTT (PRODUCT.md's schema), and what vision hands down the stream: every
//! stage after vision fills in or reads these, and subscribers parse them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AnswerKind, Clip, ClipInfo, Frame};

/// Time spent in each step of producing one answer, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    pub preprocess: f64,
    pub vision: f64,
    pub prefill: f64,
    pub decode: f64,
}

/// An answer as published: the local tier's, or the cloud's that replaced it (then `local` keeps the
/// local one beside it). The cloud fields are plain data filled in by the escalation stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// UUIDv7: unique, time-ordered, the same on every delivery of this answer.
    pub id: Uuid,
    pub camera: Arc<str>,
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask_id: Option<String>,
    pub question: String,
    pub kind: AnswerKind,
    pub answer: String,
    /// From the local model's token probabilities; `null` for a cloud answer (hosted models report
    /// none that can be compared).
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_min: Option<f64>,
    pub tier: Tier,
    pub model: String,
    /// Where a local answer's model ran: `cpu`, `cuda:0`, `openvino:npu`... (`device` names the box).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
    pub escalated: bool,
    /// Why the answer was or was not escalated (`below_threshold`, `confident`, `queued`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
    /// The cloud endpoint (its configured name) that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The inference provider the router chose (`x-inference-provider`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The local answer a cloud answer replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalVerdict>,
    /// The newest frame when the question was asked (for a clip, the frame that was due).
    pub frame: FrameInfo,
    /// For a clip task: the frames the answer is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<ClipInfo>,
    pub timings_ms: Timings,
    pub tokens: Vec<u32>,
}

/// Which model gave an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Local,
    Cloud,
}

/// Tokens a cloud request used, as the endpoint reported them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
}

/// The local answer kept beside the cloud's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalVerdict {
    pub answer: String,
    pub confidence: Option<f64>,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameInfo {
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub captured_at: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timings {
    pub capture: f64,
    #[serde(flatten)]
    pub stages: StageTimings,
    /// The cloud request that produced the answer, retries and failover included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<f64>,
    /// From capture to the answer being ready, queueing and the cloud's answer included (a replayed
    /// escalation's: the local answer's total plus the cloud's).
    pub total: f64,
}

/// A request that could not be answered.
#[derive(Debug, Clone)]
pub struct Failure {
    pub camera: Arc<str>,
    pub task: String,
    pub ask_id: Option<String>,
    pub error: String,
}

/// What the publisher receives, one per request.
#[derive(Debug, Clone)]
pub enum Outcome {
    Answered(Box<Answer>),
    Failed(Failure),
}

impl Outcome {
    /// The camera and task it is about.
    pub(crate) fn camera_and_task(&self) -> (&Arc<str>, &str) {
        match self {
            Outcome::Answered(answer) => (&answer.camera, &answer.task),
            Outcome::Failed(failure) => (&failure.camera, &failure.task),
        }
    }
}

/// What the vision worker sends on: the outcome and the frame (or clip) it is about, which the
/// escalation stage may send to the cloud.
#[derive(Debug, Clone)]
pub struct Output {
    pub outcome: Outcome,
    pub frame: Arc<Frame>,
    /// The clip the answer is about, for a clip task.
    pub clip: Option<Clip>,
}
