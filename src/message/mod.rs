//! The words the stages pass and publish: frames, clips and requests on the way to the model
//! (`request`), the tasks and asks that make the questions (`task`, `ask`), the answer as published
//! (`answer`), cloud answers on their way to the dataset (`capture`) and the answer to a pushed config
//! (`ack`).
//!
//! A leaf: it names no stage. A stage takes the words it shares with another from here, so no stage
//! imports a later one or skips one to borrow its types, and a newcomer finds the published schema in
//! one place.

mod ack;
mod answer;
mod ask;
mod capture;
mod request;
mod task;

pub use ack::{Ack, version_of};
pub use answer::{
    Answer, Failure, FrameInfo, LocalVerdict, Outcome, Output, StageTimings, Tier, Timings, Usage,
};
pub use ask::{
    ASK_TASK, Ask, AskError, AskRouter, Asked, CameraAsks, MAX_ASKS_IN_FLIGHT, PermittedAsk,
};
pub use capture::{Capture, CaptureSink, Wanted};
pub use request::{
    Clip, ClipFrame, ClipFrameInfo, ClipInfo, ClipRequest, Frame, MAX_CLIP_FRAMES, Origin, Request,
};
pub use task::{
    AnswerKind, ClipConfig, MAX_CLIP_SECONDS, MAX_QUESTION_CHARS, TaskConfig, Trigger,
    check_question,
};
