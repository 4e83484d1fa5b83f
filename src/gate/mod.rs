//! The gate decides which frames are worth a look: each camera's gate watches its newest frame and,
//! per task, asks for an answer every N seconds, when the picture changed enough, or on demand.
//!
//! Looking is the expensive part (a model run takes hundreds of milliseconds to seconds), capturing is
//! cheap. So the gate never waits for the analyser: it puts a `Job` (one frame, the questions due on it)
//! into the `JobQueue`, which keeps at most one per camera. On-demand asks arrive from MQTT through the
//! `AskRouter`; each holds a permit from a small per-camera pool until it is answered, which bounds the
//! asks in flight without any queue that could grow.
//!
//! A clip task asks about the last seconds rather than the newest frame: its camera's gate keeps a
//! bounded buffer of recent frames (`clip.rs`), and the task's request carries the frames sampled from
//! it when the task is due.

mod change;
mod clip;
mod queue;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{Problems, validate};
use crate::source::{Frame, LatestFrame};
use crate::stats::Stats;
use crate::vision::preprocess::{ImageSettings, clip_frame};
use crate::vision::{Clip, ClipInfo};

pub use change::Thumbnail;
pub use clip::{ClipBuffer, ClipConfig, MAX_BUFFERED_FRAMES};
pub use queue::{JobQueue, Pushed};

/// The longest question accepted, in characters (a prompt, not a document).
pub const MAX_QUESTION_CHARS: usize = 2_000;
/// Asks per camera that may wait or run at once; more are rejected as busy.
pub const MAX_ASKS_IN_FLIGHT: usize = 8;
const MAX_ASK_ID_CHARS: usize = 128;
const MAX_NEW_TOKENS_LIMIT: u32 = 1_024;
const ASK_MAX_NEW_TOKENS: u32 = 64;

/// A question asked about a camera's frames.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub id: String,
    pub camera: String,
    pub question: String,
    #[serde(default)]
    pub kind: AnswerKind,
    pub trigger: Trigger,
    /// Cut large frames into tiles (slower, more detail).
    #[serde(default)]
    pub split: bool,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: u32,
    /// Ask about the last seconds of video instead of the newest frame.
    #[serde(default)]
    pub clip: Option<ClipConfig>,
}

fn default_max_new_tokens() -> u32 {
    64
}

/// What shape of answer a question wants.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AnswerKind {
    #[default]
    Text,
    YesNo,
    OneOf(Vec<String>),
}

/// The command line's spelling: `text`, `yes_no` or `one_of:label,label,...` (also the dataset's).
impl std::fmt::Display for AnswerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnswerKind::Text => f.write_str("text"),
            AnswerKind::YesNo => f.write_str("yes_no"),
            AnswerKind::OneOf(labels) => write!(f, "one_of:{}", labels.join(",")),
        }
    }
}

impl std::str::FromStr for AnswerKind {
    type Err = String;

    fn from_str(text: &str) -> Result<AnswerKind, String> {
        match text {
            "text" => Ok(AnswerKind::Text),
            "yes_no" => Ok(AnswerKind::YesNo),
            other => match other.strip_prefix("one_of:") {
                Some(labels) => Ok(AnswerKind::OneOf(
                    labels
                        .split(',')
                        .map(|label| label.trim().to_owned())
                        .collect(),
                )),
                None => Err("expected text, yes_no or one_of:label,label,...".to_owned()),
            },
        }
    }
}

/// When a task asks its question.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    Interval {
        secs: f64,
    },
    OnChange {
        #[serde(default = "default_threshold")]
        threshold: f64,
        #[serde(default = "default_min_interval")]
        min_interval_secs: f64,
    },
    OnDemand,
}

fn default_threshold() -> f64 {
    0.05
}
fn default_min_interval() -> f64 {
    1.0
}

impl TaskConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        validate::topic_segment(problems, &format!("{path}.id"), &self.id);
        if self.id == ASK_TASK {
            problems.push(
                format!("{path}.id"),
                format!("{ASK_TASK:?} is reserved for on-demand asks"),
            );
        }
        if let Err(reason) = check_question(&self.question) {
            problems.push(format!("{path}.question"), reason);
        }
        if let Err(reason) = self.kind.check() {
            problems.push(format!("{path}.kind"), reason);
        }
        if !(1..=MAX_NEW_TOKENS_LIMIT).contains(&self.max_new_tokens) {
            problems.push(
                format!("{path}.max_new_tokens"),
                format!(
                    "must be 1 to {MAX_NEW_TOKENS_LIMIT}, not {}",
                    self.max_new_tokens
                ),
            );
        }
        if let Some(clip) = &self.clip {
            clip.validate(&format!("{path}.clip"), problems);
            if self.split {
                problems.push(
                    format!("{path}.split"),
                    "a clip's frames are never split into tiles; remove split or clip",
                );
            }
        }
        match &self.trigger {
            Trigger::Interval { secs } => {
                validate::seconds(problems, &format!("{path}.trigger.secs"), *secs)
            }
            Trigger::OnChange {
                threshold,
                min_interval_secs,
            } => {
                if !(threshold.is_finite() && *threshold > 0.0 && *threshold <= 1.0) {
                    problems.push(
                        format!("{path}.trigger.threshold"),
                        format!("must be above 0 and at most 1, not {threshold}"),
                    );
                }
                validate::seconds(
                    problems,
                    &format!("{path}.trigger.min_interval_secs"),
                    *min_interval_secs,
                );
            }
            Trigger::OnDemand => {}
        }
    }
}

impl AnswerKind {
    /// Checks the labels of `one_of`: at least two, none empty, none repeated.
    pub fn check(&self) -> Result<(), String> {
        let AnswerKind::OneOf(labels) = self else {
            return Ok(());
        };
        if labels.len() < 2 {
            return Err("one_of needs at least two labels".to_owned());
        }
        if labels.iter().any(|label| label.trim().is_empty()) {
            return Err("one_of labels must not be empty".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(repeated) = labels.iter().find(|label| !seen.insert(label.as_str())) {
            return Err(format!("one_of label {repeated:?} appears twice"));
        }
        Ok(())
    }
}

pub fn check_question(question: &str) -> Result<(), String> {
    if question.trim().is_empty() {
        return Err("the question is empty".to_owned());
    }
    let chars = question.chars().count();
    if chars > MAX_QUESTION_CHARS {
        return Err(format!(
            "the question has {chars} characters; at most {MAX_QUESTION_CHARS} are accepted"
        ));
    }
    Ok(())
}

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
    pub fn readable_id(payload: &[u8]) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let id = value.get("id")?.as_str()?;
        (!id.is_empty() && id.chars().count() <= MAX_ASK_ID_CHARS).then(|| id.to_owned())
    }
}

/// An accepted ask with its in-flight permit.
#[derive(Debug)]
pub struct PermittedAsk {
    ask: Ask,
    permit: OwnedSemaphorePermit,
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

    pub fn set_routes(&self, routes: HashMap<String, CameraAsks>) {
        *self
            .routes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = routes;
    }

    /// Hands `ask` to `camera`'s gate.
    pub fn route(&self, camera: &str, ask: Ask) -> Result<(), AskError> {
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
    pub fn task_and_ask_id(&self) -> (&str, Option<&str>) {
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

/// A clip sampled for a request, and what its answer will say about it.
#[derive(Debug)]
pub struct ClipRequest {
    pub clip: Clip,
    pub info: ClipInfo,
}

/// A frame and the questions due on it.
#[derive(Debug)]
pub struct Job {
    pub frame: Arc<Frame>,
    pub requests: Vec<Request>,
}

/// A task with what the gate remembers about its last look.
struct Scheduled {
    task: TaskConfig,
    origin: Origin,
    last_run: Option<Instant>,
    last_thumbnail: Option<Thumbnail>,
}

impl Scheduled {
    /// The task's request on a frame seen at `now`; a clip task's carries its clip from `buffer`, or is
    /// `None` while the buffer has no frame of its window.
    fn request(&self, buffer: Option<&ClipBuffer>, now: Instant) -> Option<Request> {
        let clip = match (&self.task.clip, buffer) {
            (Some(wanted), Some(buffer)) => {
                let (clip, info) = buffer.sample(wanted, now)?;
                Some(Box::new(ClipRequest { clip, info }))
            }
            _ => None,
        };
        Some(Request {
            origin: self.origin.clone(),
            question: self.task.question.clone(),
            kind: self.task.kind.clone(),
            split: self.task.split,
            max_new_tokens: self.task.max_new_tokens,
            permit: None,
            clip,
        })
    }

    /// Whether the task is due on a frame seen at `now`; `thumbnail` is computed on first need.
    fn is_due(&self, now: Instant, thumbnail: &mut impl FnMut() -> Thumbnail) -> bool {
        let since_last = |secs: f64| {
            self.last_run
                .is_none_or(|last| now - last >= Duration::from_secs_f64(secs))
        };
        match &self.task.trigger {
            Trigger::Interval { secs } => since_last(*secs),
            Trigger::OnChange {
                threshold,
                min_interval_secs,
            } => {
                since_last(*min_interval_secs)
                    && self
                        .last_thumbnail
                        .as_ref()
                        .is_none_or(|last| last.difference(&thumbnail()) >= *threshold)
            }
            Trigger::OnDemand => false,
        }
    }
}

/// Gates one camera until its frames stop (the source ended or shut down). With clip tasks it keeps the
/// camera's clip buffer, its frames resized as `clip_settings` says (the model's video input).
pub async fn run(
    camera: Arc<str>,
    tasks: Vec<TaskConfig>,
    mut frames: LatestFrame,
    mut asks: mpsc::Receiver<PermittedAsk>,
    queue: JobQueue,
    stats: Arc<Stats>,
    clip_settings: ImageSettings,
) {
    let mut buffer = ClipBuffer::for_clips(tasks.iter().filter_map(|task| task.clip.as_ref()));
    if let Some(buffer) = &buffer {
        info!(camera = %camera, capacity = buffer.capacity(), "Clip buffer ready.");
    }
    let mut scheduled: Vec<Scheduled> = tasks
        .into_iter()
        .map(|task| Scheduled {
            origin: Origin::Task(Arc::from(task.id.as_str())),
            task,
            last_run: None,
            last_thumbnail: None,
        })
        .collect();
    // Asks that arrived before the camera's first frame.
    let mut waiting: Vec<PermittedAsk> = Vec::new();
    let mut asks_open = true;
    info!(camera = %camera, tasks = scheduled.len(), "Gate started.");
    loop {
        let mut requests = Vec::new();
        tokio::select! {
            changed = frames.changed() => {
                if changed.is_err() {
                    break;
                }
                stats.frames_considered.inc();
                let Some(frame) = frames.borrow_and_update().clone() else { continue };
                let now = Instant::now();
                if let Some(buffer) = buffer.as_mut().filter(|buffer| buffer.wants(now)) {
                    keep_for_clips(buffer, &frame, &clip_settings, now).await;
                    stats.set_clip_buffer(&camera, buffer.len() as u64, buffer.bytes());
                }
                let mut cached: Option<Thumbnail> = None;
                let mut thumbnail = || cached.get_or_insert_with(|| Thumbnail::of(&frame.image)).clone();
                for task in scheduled.iter_mut() {
                    if task.is_due(now, &mut thumbnail) {
                        let Some(request) = task.request(buffer.as_ref(), now) else { continue };
                        requests.push(request);
                        task.last_run = Some(now);
                        if matches!(task.task.trigger, Trigger::OnChange { .. }) {
                            task.last_thumbnail = Some(thumbnail());
                        }
                    }
                }
                waiting = take_asks(waiting, &scheduled, buffer.as_ref(), now, &mut requests);
            }
            ask = asks.recv(), if asks_open => match ask {
                Some(ask) if frames.borrow().is_some() => {
                    let now = Instant::now();
                    waiting.extend(take_asks(vec![ask], &scheduled, buffer.as_ref(), now, &mut requests));
                }
                Some(ask) => waiting.push(ask),
                None => asks_open = false,
            },
        }
        if requests.is_empty() {
            continue;
        }
        let Some(frame) = frames.borrow().clone() else {
            continue;
        };
        debug!(camera = %camera, seq = frame.seq, requests = requests.len(), "Frame is due for a look.");
        if queue.push(Job { frame, requests }) == Pushed::Closed {
            break;
        }
    }
    stats.set_clip_buffer(&camera, 0, 0);
    info!(camera = %camera, "Gate stopped.");
}

/// Resizes `frame` for the model's video input (off the async threads: a large frame takes tens of
/// milliseconds) and keeps it in `buffer`.
async fn keep_for_clips(
    buffer: &mut ClipBuffer,
    frame: &Arc<Frame>,
    settings: &ImageSettings,
    now: Instant,
) {
    let (source, settings) = (frame.clone(), settings.clone());
    let resized =
        tokio::task::spawn_blocking(move || clip_frame(&source.image, &settings, 1)).await;
    match resized {
        Ok(resized) => buffer.push(resized, frame.seq, frame.captured_at, now),
        Err(error) => {
            warn!(camera = %frame.camera, error = %error, "Could not resize a frame for clips.")
        }
    }
}

/// Turns asks into requests on a frame seen at `now`, returning those that must wait for a later
/// frame: an ask of a clip task whose buffer has no frame of its window yet.
fn take_asks(
    asks: Vec<PermittedAsk>,
    scheduled: &[Scheduled],
    buffer: Option<&ClipBuffer>,
    now: Instant,
    requests: &mut Vec<Request>,
) -> Vec<PermittedAsk> {
    let mut later = Vec::new();
    for PermittedAsk { ask, permit } in asks {
        let request = match ask.what {
            Asked::Question { question, kind } => Request {
                origin: Origin::Ask {
                    id: ask.id,
                    task: None,
                },
                question,
                kind,
                split: false,
                max_new_tokens: ASK_MAX_NEW_TOKENS,
                permit: Some(permit),
                clip: None,
            },
            Asked::Task(task_id) => {
                // The router checked the id against this gate's tasks.
                let Some(task) = scheduled.iter().find(|task| task.task.id == task_id) else {
                    warn!(task = %task_id, ask_id = %ask.id, "An ask named a task this gate does not have; dropped.");
                    continue;
                };
                let Some(mut request) = task.request(buffer, now) else {
                    later.push(PermittedAsk {
                        ask: Ask {
                            id: ask.id,
                            what: Asked::Task(task_id),
                        },
                        permit,
                    });
                    continue;
                };
                request.origin = Origin::Ask {
                    id: ask.id,
                    task: Some(Arc::from(task_id.as_str())),
                };
                request.permit = Some(permit);
                request
            }
        };
        requests.push(request);
    }
    later
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn frame(seq: u64, shade: u8) -> Arc<Frame> {
        Arc::new(Frame {
            camera: Arc::from("cam"),
            seq,
            captured_at: SystemTime::now(),
            capture_time: Duration::ZERO,
            image: image::RgbImage::from_pixel(64, 48, image::Rgb([shade, shade, shade])),
        })
    }

    fn task(id: &str, trigger: Trigger) -> TaskConfig {
        TaskConfig {
            id: id.into(),
            camera: "cam".into(),
            question: "What?".into(),
            kind: AnswerKind::Text,
            trigger,
            split: false,
            max_new_tokens: 16,
            clip: None,
        }
    }

    /// Runs a gate over frames sent at the given paused-clock times and returns which tasks and asks
    /// each queued job carried.
    async fn gate_over(
        tasks: Vec<TaskConfig>,
        frames_at: &[(u64, u8)],
        asks_before_first_frame: &[&str],
    ) -> Vec<Vec<String>> {
        let stats = Arc::new(Stats::default());
        let queue = JobQueue::new(stats.clone());
        let (sender, receiver) = tokio::sync::watch::channel(None);
        let router = AskRouter::default();
        let (route, asks) = AskRouter::channel(&tasks);
        router.set_routes(HashMap::from([("cam".to_owned(), route)]));
        let gate = tokio::spawn(run(
            Arc::from("cam"),
            tasks,
            receiver,
            asks,
            queue.clone(),
            stats,
            ImageSettings::SMOLVLM2,
        ));
        for ask in asks_before_first_frame {
            router
                .route("cam", Ask::parse(ask.as_bytes()).unwrap())
                .unwrap();
        }
        let started = Instant::now();
        let mut jobs = Vec::new();
        for (seq, (at_ms, shade)) in frames_at.iter().enumerate() {
            tokio::time::sleep_until(started + Duration::from_millis(*at_ms)).await;
            sender.send_replace(Some(frame(seq as u64 + 1, *shade)));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            // Take what was queued for this frame (the test stands in for the analyser).
            jobs.extend(std::iter::from_fn(|| queue.try_pop()).map(|job| {
                job.requests
                    .iter()
                    .map(|r| match &r.origin {
                        Origin::Task(id) => id.to_string(),
                        Origin::Ask { id, task: None } => format!("ask:{id}"),
                        Origin::Ask {
                            id,
                            task: Some(task),
                        } => format!("ask:{id}:{task}"),
                    })
                    .collect()
            }));
        }
        drop(sender);
        gate.await.unwrap();
        jobs
    }

    #[tokio::test(start_paused = true)]
    async fn interval_tasks_run_on_the_first_frame_then_every_n_seconds() {
        let jobs = gate_over(
            vec![task("every2", Trigger::Interval { secs: 2.0 })],
            &[(0, 0), (500, 0), (1999, 0), (2100, 0), (3000, 0), (4200, 0)],
            &[],
        )
        .await;
        assert_eq!(jobs, vec![vec!["every2"], vec!["every2"], vec!["every2"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn change_tasks_run_when_the_picture_changes_enough() {
        let trigger = Trigger::OnChange {
            threshold: 0.1,
            min_interval_secs: 1.0,
        };
        let jobs = gate_over(
            vec![task("moved", trigger)],
            // first look; small change; big change too soon; big change later; same again
            &[(0, 0), (1500, 10), (1800, 200), (3000, 200), (5000, 200)],
            &[],
        )
        .await;
        assert_eq!(jobs, vec![vec!["moved"], vec!["moved"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ask_before_the_first_frame_is_answered_on_it_and_on_demand_tasks_wait() {
        let jobs = gate_over(
            vec![task("manual", Trigger::OnDemand)],
            &[(0, 0), (100, 0)],
            &[
                r#"{"id":"a1","question":"Is it on?","kind":"yes_no"}"#,
                r#"{"id":"a2","task":"manual"}"#,
            ],
        )
        .await;
        assert_eq!(jobs, vec![vec!["ask:a1", "ask:a2:manual"]]);
    }

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
