//! On-demand asks: the payload an MQTT client sends to `<prefix>/<dev>/<camera>/ask`, and the router
//! that hands an accepted ask back up the stream to its camera's gate. The publisher receives asks and
//! the gate answers them; the router is the one thing both hold, so neither names the other.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{AnswerKind, TaskConfig, check_question};

/// Asks per camera that may wait or run at once; more are rejected as busy.
pub const MAX_ASKS_IN_FLIGHT: usize = 8;
const MAX_ASK_ID_CHARS: usize = 128;

/// The task name on the answer topic of on-demand asks: `<prefix>/<dev>/<camera>/ask/answer`.
pub const ASK_TASK: &str = "ask";

/// An on-demand question from `<prefix>/<dev>/<camera>/ask`: a question of its own, or a configured
/// task of that camera asked now (`{"task": "<id>"}`), whose answer goes to the task's answer topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    /// The asker's correlation id, echoed in the answer; generated when absent.
    pub id: String,
    pub what: Asked,
}

/// What an ask asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    Question {
        question: String,
        kind: AnswerKind,
    },
    /// A configured task, by id: its question, kind and settings.
    Task(String),
}

/// An ask payload as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AskPayload {
    #[serde(default)]
    id: String,
    question: Option<String>,
    kind: Option<AnswerKind>,
    task: Option<String>,
}

/// Why an ask was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(
        "the ask is not valid JSON of the form {{\"id\", \"question\", \"kind\"}} or {{\"id\", \"task\"}}: {0}"
    )]
    Malformed(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no camera has id {0:?}")]
    UnknownCamera(String),
    #[error("camera {camera:?} has no task {task:?}")]
    UnknownTask { camera: String, task: String },
    #[error("camera {0:?} already has {MAX_ASKS_IN_FLIGHT} asks waiting; try again later")]
    Busy(String),
    #[error("camera {0:?} is not running")]
    Stopped(String),
}

impl Ask {
    /// Parses and checks an ask payload.
    pub fn parse(payload: &[u8]) -> Result<Ask, AskError> {
        let payload: AskPayload = serde_json::from_slice(payload)
            .map_err(|error| AskError::Malformed(error.to_string()))?;
        let what = match (payload.task, payload.question, payload.kind) {
            (Some(task), None, None) => Asked::Task(task),
            (Some(_), _, _) => {
                return Err(AskError::Invalid(
                    "an ask names a task, or gives a question and kind, not both".to_owned(),
                ));
            }
            (None, Some(question), kind) => {
                check_question(&question).map_err(AskError::Invalid)?;
                let kind = kind.unwrap_or_default();
                kind.check().map_err(AskError::Invalid)?;
                Asked::Question { question, kind }
            }
            (None, None, _) => {
                return Err(AskError::Invalid(
                    "an ask needs a question, or the task to ask".to_owned(),
                ));
            }
        };
        if payload.id.chars().count() > MAX_ASK_ID_CHARS {
            return Err(AskError::Invalid(format!(
                "the id is longer than {MAX_ASK_ID_CHARS} characters"
            )));
        }
        let id = match payload.id {
            id if id.is_empty() => uuid::Uuid::now_v7().to_string(),
            id => id,
        };
        Ok(Ask { id, what })
    }

    /// The id of an ask that `parse` refused, when it can be read (a JSON object whose `id` is a
    /// string of at most the accepted length), so that the error reply names the ask it answers.
    pub(crate) fn readable_id(payload: &[u8]) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let id = value.get("id")?.as_str()?;
        (!id.is_empty() && id.chars().count() <= MAX_ASK_ID_CHARS).then(|| id.to_owned())
    }
}

/// An accepted ask with its in-flight permit.
#[derive(Debug)]
pub struct PermittedAsk {
    pub ask: Ask,
    /// Released when the ask is answered (or dropped), freeing a place in the camera's pool.
    pub permit: OwnedSemaphorePermit,
}

/// Routes asks to the running cameras' gates. `app` replaces the routes when cameras change.
#[derive(Clone, Default)]
pub struct AskRouter {
    routes: Arc<RwLock<HashMap<String, CameraAsks>>>,
}

#[derive(Clone)]
pub struct CameraAsks {
    sender: mpsc::Sender<PermittedAsk>,
    permits: Arc<Semaphore>,
    /// The camera's tasks, which an ask may name.
    tasks: Arc<[String]>,
}

impl AskRouter {
    /// A channel for the gate of a camera with `tasks`; install the returned `CameraAsks` with
    /// `set_routes`.
    pub fn channel(tasks: &[TaskConfig]) -> (CameraAsks, mpsc::Receiver<PermittedAsk>) {
        // Capacity equals the permit pool, so a permitted ask always fits.
        let (sender, receiver) = mpsc::channel(MAX_ASKS_IN_FLIGHT);
        let permits = Arc::new(Semaphore::new(MAX_ASKS_IN_FLIGHT));
        let tasks = tasks.iter().map(|task| task.id.clone()).collect();
        (
            CameraAsks {
                sender,
                permits,
                tasks,
            },
            receiver,
        )
    }

    pub(crate) fn set_routes(&self, routes: HashMap<String, CameraAsks>) {
        *self
            .routes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = routes;
    }

    /// Hands `ask` to `camera`'s gate.
    pub(crate) fn route(&self, camera: &str, ask: Ask) -> Result<(), AskError> {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let route = routes
            .get(camera)
            .ok_or_else(|| AskError::UnknownCamera(camera.to_owned()))?;
        if let Asked::Task(task) = &ask.what
            && !route.tasks.contains(task)
        {
            return Err(AskError::UnknownTask {
                camera: camera.to_owned(),
                task: task.clone(),
            });
        }
        let permit = route
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| AskError::Busy(camera.to_owned()))?;
        route
            .sender
            .try_send(PermittedAsk { ask, permit })
            .map_err(|_| AskError::Stopped(camera.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MAX_QUESTION_CHARS;

    #[test]
    fn bad_asks_are_refused_with_a_reason() {
        assert!(matches!(
            Ask::parse(b"not json"),
            Err(AskError::Malformed(_))
        ));
        assert!(matches!(
            Ask::parse(br#"{"question":"  "}"#),
            Err(AskError::Invalid(_))
        ));
        assert!(matches!(
            Ask::parse(br#"{"question":"q","kind":{"one_of":["a"]}}"#),
            Err(AskError::Invalid(_))
        ));
        assert!(matches!(
            Ask::parse(br#"{"question":"q","extra":1}"#),
            Err(AskError::Malformed(_))
        ));
        let long = format!(r#"{{"question":"{}"}}"#, "x".repeat(MAX_QUESTION_CHARS + 1));
        assert!(matches!(
            Ask::parse(long.as_bytes()),
            Err(AskError::Invalid(_))
        ));
        for both in [
            r#"{"task":"t","question":"q"}"#,
            r#"{"task":"t","kind":"yes_no"}"#,
            r#"{"id":"x"}"#,
        ] {
            assert!(
                matches!(Ask::parse(both.as_bytes()), Err(AskError::Invalid(_))),
                "{both}"
            );
        }
        assert_eq!(
            Ask::parse(br#"{"id":"x","task":"t"}"#).unwrap().what,
            Asked::Task("t".to_owned())
        );
        let ask = Ask::parse(br#"{"question":"What is here?"}"#).unwrap();
        assert!(
            !ask.id.is_empty(),
            "an id is generated when the asker gives none"
        );
    }

    #[test]
    fn asks_beyond_the_in_flight_limit_are_busy_and_unknown_cameras_are_named() {
        let router = AskRouter::default();
        let (route, _receiver) = AskRouter::channel(&[]);
        router.set_routes(HashMap::from([("cam".to_owned(), route)]));
        let ask = || Ask::parse(br#"{"question":"q"}"#).unwrap();
        for _ in 0..MAX_ASKS_IN_FLIGHT {
            router.route("cam", ask()).unwrap();
        }
        assert!(matches!(router.route("cam", ask()), Err(AskError::Busy(_))));
        assert!(
            matches!(router.route("nope", ask()), Err(AskError::UnknownCamera(name)) if name == "nope")
        );
        let named = Ask::parse(br#"{"id":"t","task":"nope"}"#).unwrap();
        assert!(
            matches!(router.route("cam", named), Err(AskError::UnknownTask { task, .. }) if task == "nope")
        );
    }
}
