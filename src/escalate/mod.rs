//! Escalation: the answers the local model is unsure of go to a larger hosted model, and the better
//! answer is published.
//!
//! The stage sits between vision and publish. Each answer is judged by the policy (`policy.rs`); one
//! that is escalated goes to the cloud (`cloud.rs`) with its frame (for a clip task, the clip's frames,
//! at most the endpoint's `max_images`), and the cloud's answer replaces it, the local answer kept
//! beside it. Every answer says what happened (`escalation`).
//!
//! Local answers are never held up by the cloud beyond their own task: answers travel in one lane per
//! camera and task, each lane in order, so an escalation delays only the later answers of its own task
//! (at most the escalation deadline) and answers keep their order per task on the way to the broker.
//! When `BUSY_BACKLOG` answers wait behind a task's escalation, its next answers are not escalated
//! (`busy`, counted) until the lane drains: escalations are what is dropped when the cloud is slower
//! than the task, never answers. A lane holds `LANE_CAPACITY` answers; should one fill anyway, the
//! stage waits, and the wait spreads upstream like any full channel between vision and publish.
//!
//! When every endpoint is unreachable, the local answer is published at once. If the offline queue is
//! on, the escalation (answer and JPEG) is stored in an outbox file in the state directory (bounded
//! in bytes and age) and the replayer sends it again when an endpoint answers; the cloud answer is then
//! published with the same `id`, tier `cloud`. At shutdown escalations in flight give up at once and go
//! to the queue, so the shutdown deadline never costs an answer. An endpoint that refuses (401, 403,
//! 404, 422) is no outage: escalations it turns away are `cloud_failed`, never queued.
//!
//! Budgets are charged only for escalations that sent a request the provider may bill (`policy.rs`),
//! so an outage spends none, and the replayer, which shares the total budget with the live lanes, never waits longer
//! than until a slot frees. It also wakes when a live escalation is answered: the cloud is back.
//!
//! Every answer the cloud gives, live or replayed, is offered to the dataset (through a
//! `message::CaptureSink`, so this stage never names the dataset stage) with the images and text exactly
//! as sent, when its camera or task is opted in.

mod breaker;
pub(crate) mod cloud;
mod config;
pub(crate) mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::Backoff;
use crate::env::Env;
use crate::message::{Answer, LocalVerdict, Outcome, Output, Tier};
use crate::message::{Capture, CaptureSink};
use crate::outbox::Outbox;
use crate::stats::Stats;
pub use cloud::{Cloud, CloudAnswer, CloudError, Question};
pub use config::{
    Budget, CameraPrivacy, EndpointConfig, EscalationConfig, HF_ROUTER, ImageConfig, Limit, Limits,
    Mode, QueueConfig, TOTAL_BUDGET, TaskPolicy,
};
use policy::{Decision, Policy, Reason};

/// Answers a lane holds while its task's escalation is out; when full, the stage waits.
const LANE_CAPACITY: usize = 32;
/// Answers waiting in a lane from which its next answers go out without escalation.
const BUSY_BACKLOG: usize = 2;

/// What the stage and the replayer share: the running config, the policy's history, the client.
pub struct Escalation {
    config: Mutex<Arc<EscalationConfig>>,
    cloud: Mutex<Arc<Cloud>>,
    policy: Mutex<Policy>,
    queue: Option<Arc<Outbox>>,
    dataset: CaptureSink,
    env: Env,
    stats: Arc<Stats>,
    /// Wakes the replayer: the cloud answered, or the config changed.
    wake: Notify,
}

/// An escalation waiting in the offline queue.
#[derive(Serialize, Deserialize)]
struct Queued {
    answer: Answer,
    /// The images as they would have been sent, base64, oldest first. Escalations queued before clips
    /// existed hold one image under the name `jpeg`.
    #[serde(alias = "jpeg")]
    jpegs: Jpegs,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Jpegs {
    One(String),
    Several(Vec<String>),
}

impl Jpegs {
    /// The images, decoded; one that is not base64 is left out.
    fn decode(&self) -> Vec<Vec<u8>> {
        let encoded = match self {
            Jpegs::One(jpeg) => std::slice::from_ref(jpeg),
            Jpegs::Several(jpegs) => jpegs.as_slice(),
        };
        encoded
            .iter()
            .filter_map(|jpeg| base64::engine::general_purpose::STANDARD.decode(jpeg).ok())
            .collect()
    }
}

impl Escalation {
    /// `queue` is the offline queue's outbox, when it is on; `dataset` takes the cloud's answers to
    /// keep.
    pub fn new(
        config: &EscalationConfig,
        env: Env,
        stats: Arc<Stats>,
        queue: Option<Arc<Outbox>>,
        dataset: CaptureSink,
    ) -> Escalation {
        Escalation {
            cloud: Mutex::new(Arc::new(Cloud::new(config, env.clone(), stats.clone()))),
            config: Mutex::new(Arc::new(config.clone())),
            policy: Mutex::new(Policy::default()),
            queue,
            dataset,
            env,
            stats,
            wake: Notify::new(),
        }
    }

    /// Applies a reloaded config: the policy at once; endpoints and their settings with a new client
    /// (fresh breakers) when they changed. The queue's settings wait for a restart.
    pub(crate) fn reconfigure(&self, new: &EscalationConfig) {
        let old = self.config();
        let client_changed = old.endpoints != new.endpoints
            || old.request_timeout_secs != new.request_timeout_secs
            || old.deadline_secs != new.deadline_secs
            || old.retries != new.retries
            || old.breaker_failures != new.breaker_failures
            || old.breaker_cooldown_secs != new.breaker_cooldown_secs
            || old.max_reply_bytes != new.max_reply_bytes
            || old.max_tokens != new.max_tokens;
        if client_changed {
            *self.cloud.lock().unwrap() =
                Arc::new(Cloud::new(new, self.env.clone(), self.stats.clone()));
            info!(
                endpoints = new.endpoints.len(),
                "Applied the new cloud endpoints."
            );
        }
        *self.config.lock().unwrap() = Arc::new(new.clone());
        self.wake.notify_one();
    }

    fn config(&self) -> Arc<EscalationConfig> {
        self.config.lock().unwrap().clone()
    }

    fn cloud(&self) -> Arc<Cloud> {
        self.cloud.lock().unwrap().clone()
    }

    /// Judges one answer and, when the policy says so, replaces it with the cloud's.
    async fn review(&self, output: Output, busy: bool, cancel: &CancellationToken) -> Outcome {
        let mut answer = match output.outcome {
            Outcome::Answered(answer) => answer,
            failed @ Outcome::Failed(_) => return failed,
        };
        let config = self.config();
        let frame = output.frame;
        let captured_at = frame.captured_at;
        let replays_waiting = self
            .queue
            .as_ref()
            .is_some_and(|queue| queue.status().depth > 0);
        let decided_at = Instant::now();
        let decision = self.policy.lock().unwrap().decide(
            &config,
            &answer.camera,
            &answer.task,
            answer.confidence.unwrap_or(0.0),
            || policy::difference_hash(&frame.image),
            busy,
            replays_waiting,
            decided_at,
        );
        let reason = match decision {
            Decision::Keep(reason) => return self.keep(answer, reason),
            Decision::Escalate(reason) => reason,
        };
        let settings = config
            .image_for(&answer.camera)
            .expect("the policy escalates only cameras that allow it");
        // A clip's frames, oldest first, or the frame.
        let jpegs = tokio::task::spawn_blocking(move || match output.clip {
            Some(clip) => clip
                .frames
                .iter()
                .map(|clip_frame| cloud::encode_frame(&clip_frame.image, settings))
                .collect(),
            None => vec![cloud::encode_frame(&frame.image, settings)],
        })
        .await
        .expect("JPEG encoding does not panic");
        let cloud = self.cloud();
        let question = Question {
            text: &answer.question,
            kind: &answer.kind,
            jpegs: &jpegs,
        };
        let mut billed = false;
        let result = tokio::select! {
            result = cloud.ask(question, || billed = true) => result,
            _ = cancel.cancelled() => Err(CloudError::Unreachable(vec!["shutting down".to_owned()])),
        };
        if !billed {
            self.policy.lock().unwrap().refund(&answer.task, decided_at);
        }
        match result {
            Ok(reply) => {
                self.stats.count_escalation("answered");
                self.wake.notify_one();
                let answer = self.cloud_answer(*answer, reason, reply, &jpegs, Some(captured_at));
                Outcome::Answered(Box::new(answer))
            }
            Err(error) => {
                answer.escalation = Some(reason.as_str().to_owned());
                let kept = self.fall_back(&answer, &error, &jpegs).await;
                self.keep(answer, kept)
            }
        }
    }

    /// The local answer, published as it is with why it was not escalated.
    fn keep(&self, mut answer: Box<Answer>, reason: Reason) -> Outcome {
        self.stats.count_escalation(reason.as_str());
        answer.escalation = Some(reason.as_str().to_owned());
        Outcome::Answered(answer)
    }

    /// After every endpoint failed: queues the escalation when that can help, and says which.
    /// `answer.escalation` holds the reason it was escalated, kept for the replay. The queue's write
    /// is synced, so it runs off the async threads.
    async fn fall_back(&self, answer: &Answer, error: &CloudError, jpegs: &[Vec<u8>]) -> Reason {
        warn!(camera = %answer.camera, task = %answer.task, error = %error, "Escalation failed; publishing the local answer.");
        let (CloudError::Unreachable(_), Some(queue)) = (error, &self.queue) else {
            return match error {
                CloudError::Unreachable(_) => Reason::CloudUnreachable,
                CloudError::Failed(_) => Reason::CloudFailed,
            };
        };
        let queued = Queued {
            answer: answer.clone(),
            jpegs: Jpegs::Several(
                jpegs
                    .iter()
                    .map(|jpeg| base64::engine::general_purpose::STANDARD.encode(jpeg))
                    .collect(),
            ),
        };
        let payload = serde_json::to_vec(&queued).expect("queued escalations serialize");
        let (queue, key) = (queue.clone(), answer.task.clone());
        match tokio::task::spawn_blocking(move || queue.push(&key, &payload)).await {
            Ok(_) => Reason::Queued,
            Err(_) => Reason::CloudUnreachable,
        }
    }

    /// The cloud's answer in place of the local one, which it keeps beside it; offered to the dataset
    /// with the images of `jpegs` that were sent. Its `total` runs from `captured_at` to now (a live
    /// escalation); a replay's, whose wait in the queue is an outage and not the answer's, is the
    /// local answer's total plus the cloud's.
    fn cloud_answer(
        &self,
        local: Answer,
        reason: Reason,
        reply: CloudAnswer,
        jpegs: &[Vec<u8>],
        captured_at: Option<SystemTime>,
    ) -> Answer {
        let latency_ms = reply.latency.as_secs_f64() * 1000.0;
        self.stats.cloud_total_ms.add(latency_ms as u64);
        self.stats.cloud_last_ms.set(latency_ms as u64);
        let mut timings_ms = local.timings_ms;
        timings_ms.cloud = Some(latency_ms);
        let whole = timings_ms.total + latency_ms;
        timings_ms.total = captured_at.map_or(whole, |captured_at| {
            let since = SystemTime::now()
                .duration_since(captured_at)
                .unwrap_or_default();
            (since.as_secs_f64() * 1000.0).max(whole)
        });
        let answer = Answer {
            answer: reply.answer,
            confidence: None,
            confidence_min: None,
            tier: Tier::Cloud,
            model: reply.model,
            runs_on: None,
            escalated: true,
            escalation: Some(reason.as_str().to_owned()),
            endpoint: Some(reply.endpoint),
            provider: reply.provider,
            request_id: reply.request_id,
            usage: reply.usage,
            local: Some(LocalVerdict {
                answer: local.answer,
                confidence: local.confidence,
                model: local.model,
                runs_on: local.runs_on,
            }),
            timings_ms,
            tokens: Vec::new(),
            ..local
        };
        // A queued escalation whose images were damaged on disk may have been answered without any.
        if !reply.sent.is_empty() && self.dataset.wants(&answer.camera, &answer.task) {
            self.dataset.offer(Capture {
                answer: answer.clone(),
                images: reply
                    .sent
                    .iter()
                    .map(|index| jpegs[*index].clone())
                    .collect(),
                prompt: reply.prompt,
            });
        }
        answer
    }
}

/// Reviews every answer from vision in lanes (one per camera and task) and hands the results to the
/// publisher, until `input` closes and every lane is done. `cancel` makes escalations in flight give
/// up (shutdown).
pub async fn run(
    escalation: Arc<Escalation>,
    mut input: mpsc::Receiver<Output>,
    output: mpsc::Sender<Outcome>,
    cancel: CancellationToken,
) {
    let lanes_running = TaskTracker::new();
    let mut lanes: HashMap<(Arc<str>, String), mpsc::Sender<Output>> = HashMap::new();
    while let Some(item) = input.recv().await {
        let (camera, task) = item.outcome.camera_and_task();
        let key = (camera.clone(), task.to_owned());
        let lane = lanes.entry(key).or_insert_with_key(|(camera, task)| {
            let (sender, receiver) = mpsc::channel(LANE_CAPACITY);
            let span = info_span!("escalate", camera = %camera, task = %task);
            lanes_running.spawn(
                lane(escalation.clone(), receiver, output.clone(), cancel.clone()).instrument(span),
            );
            sender
        });
        if lane.send(item).await.is_err() {
            warn!("The publisher is gone; the escalation stage stops.");
            break;
        }
    }
    drop(lanes);
    lanes_running.close();
    lanes_running.wait().await;
}

async fn lane(
    escalation: Arc<Escalation>,
    mut input: mpsc::Receiver<Output>,
    output: mpsc::Sender<Outcome>,
    cancel: CancellationToken,
) {
    while let Some(item) = input.recv().await {
        let busy = input.len() >= BUSY_BACKLOG;
        let outcome = escalation.review(item, busy, &cancel).await;
        if output.send(outcome).await.is_err() {
            return;
        }
    }
}

/// Sends the offline queue's escalations again, oldest first, until `cancel`. A replay that an
/// endpoint answers is published; one that fails for good is dropped (its local answer went out
/// long ago); one that finds the cloud still unreachable waits with backoff, or until a live
/// escalation is answered. With the total budget spent, replays wait until a slot frees.
pub async fn replay(
    escalation: Arc<Escalation>,
    output: mpsc::Sender<Outcome>,
    cancel: CancellationToken,
) {
    let Some(queue) = escalation.queue.clone() else {
        return;
    };
    let mut backoff = Backoff::new();
    loop {
        let Some(item) = queue.next_unsent() else {
            tokio::select! {
                _ = queue.arrived() => continue,
                _ = cancel.cancelled() => return,
            }
        };
        let queued: Queued = match serde_json::from_slice::<Queued>(&item.payload) {
            Ok(queued) => queued,
            Err(error) => {
                warn!(error = %error, "Dropping an unreadable escalation from the queue.");
                queue.complete(item.seq);
                continue;
            }
        };
        let jpegs = queued.jpegs.decode();
        let config = escalation.config();
        let charged_at = Instant::now();
        // Switched off by a reload: the queue is kept until a reload switches it on.
        let charged = match config.enabled {
            true => escalation
                .policy
                .lock()
                .unwrap()
                .charge_replay(&config, charged_at),
            false => Err(charged_at + Duration::from_secs(86_400)),
        };
        let pause = match charged {
            Err(frees_at) => Some(frees_at.saturating_duration_since(charged_at)),
            Ok(()) => {
                let cloud = escalation.cloud();
                let question = Question {
                    text: &queued.answer.question,
                    kind: &queued.answer.kind,
                    jpegs: &jpegs,
                };
                let span = info_span!("replay", camera = %queued.answer.camera, task = %queued.answer.task);
                let mut billed = false;
                let result = tokio::select! {
                    result = cloud.ask(question, || billed = true).instrument(span.clone()) => result,
                    _ = cancel.cancelled() => return queue.resend_all(),
                };
                if !billed {
                    escalation.policy.lock().unwrap().refund_replay(charged_at);
                }
                match result {
                    Ok(reply) => {
                        let reason = reason_escalated(&queued.answer);
                        let answer =
                            escalation.cloud_answer(queued.answer, reason, reply, &jpegs, None);
                        if output
                            .send(Outcome::Answered(Box::new(answer)))
                            .await
                            .is_err()
                        {
                            return queue.resend_all();
                        }
                        queue.complete(item.seq);
                        escalation.stats.count_escalation("replayed");
                        backoff.reset();
                        None
                    }
                    Err(CloudError::Failed(reasons)) => {
                        span.in_scope(|| {
                            warn!(reasons = ?reasons, "A queued escalation was refused; dropping it.")
                        });
                        queue.complete(item.seq);
                        escalation.stats.count_escalation("replay_failed");
                        None
                    }
                    Err(CloudError::Unreachable(_)) => Some(backoff.next_delay()),
                }
            }
        };
        if let Some(pause) = pause {
            queue.resend_all();
            debug!(pause_s = pause.as_secs_f64(), "Queued escalations wait.");
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = escalation.wake.notified() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// Why a queued answer was escalated, as recorded when it was queued.
fn reason_escalated(answer: &Answer) -> Reason {
    match answer.escalation.as_deref() {
        Some("always") => Reason::Always,
        _ => Reason::BelowThreshold,
    }
}
