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

use std::sync::Arc;
use std::time::Duration;

use image::RgbImage;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::message::{
    Ask, Asked, ClipRequest, Frame, Origin, PermittedAsk, Request, TaskConfig, Trigger,
};
use crate::source::LatestFrame;
use crate::stats::Stats;

pub use change::Thumbnail;
pub use clip::{ClipBuffer, MAX_BUFFERED_FRAMES};
pub use queue::{JobQueue, Pushed};

/// How a clip buffer keeps a frame: resized to the model's video input, so that a clip's memory does
/// not depend on the camera's resolution. The model's stage knows the size; `app` hands its resize in.
pub(crate) type ClipResize = Arc<dyn Fn(&RgbImage) -> RgbImage + Send + Sync>;

/// Tokens an ask's answer may take: asks name no limit of their own.
const ASK_MAX_NEW_TOKENS: u32 = 64;

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
/// camera's clip buffer, its frames resized by `resize`.
pub async fn run(
    camera: Arc<str>,
    tasks: Vec<TaskConfig>,
    mut frames: LatestFrame,
    mut asks: mpsc::Receiver<PermittedAsk>,
    queue: JobQueue,
    stats: Arc<Stats>,
    resize: ClipResize,
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
                    keep_for_clips(buffer, &frame, &resize, now).await;
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
    resize: &ClipResize,
    now: Instant,
) {
    let (source, resize) = (frame.clone(), resize.clone());
    let resized = tokio::task::spawn_blocking(move || resize(&source.image)).await;
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
    use std::collections::HashMap;
    use std::time::SystemTime;

    use super::*;
    use crate::message::{AnswerKind, AskRouter};

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
            Arc::new(|image: &RgbImage| image.clone()),
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
}
