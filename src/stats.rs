//! Counters every stage adds to and the publisher reports: one shared leaf, so that stages need not know
//! each other to be counted. Plain relaxed atomics: each number is independent and only ever read for
//! reporting, so no ordering between them is promised or needed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (a queue depth).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed buckets, in the shape Prometheus expects: a count per upper bound, a sum
/// and a count. The sum is kept in millionths so that it stays a lock-free integer.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; the last slot is above every bound).
    buckets: Vec<AtomicU64>,
    sum_millionths: AtomicU64,
}

/// Upper bounds for latencies in seconds: from a fast preprocessing step to a slow cloud request.
pub(crate) const LATENCY_BOUNDS_S: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds for confidences in [0, 1].
pub(crate) const CONFIDENCE_BOUNDS: &[f64] =
    &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

/// A histogram's figures at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations at or below it), cumulative, as Prometheus' `le` buckets.
    pub cumulative: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_millionths: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, value: f64) {
        let value = value.max(0.0);
        let slot = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_millionths
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push((*bound, running));
        }
        let count = running + self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            count,
            sum: self.sum_millionths.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// The stages whose latency each answer reports (its `timings_ms`), in the order they run.
pub(crate) const ANSWER_STAGES: [&str; 7] = [
    "capture",
    "preprocess",
    "vision",
    "prefill",
    "decode",
    "cloud",
    "total",
];

/// What the published answers say, for metrics: counts by tier, confidences, stage latencies.
#[derive(Debug)]
pub struct AnswerMetrics {
    pub local: Counter,
    pub cloud: Counter,
    pub local_confidence: Histogram,
    pub cloud_confidence: Histogram,
    /// One histogram per entry of `ANSWER_STAGES`, in seconds.
    pub stage_seconds: [Histogram; ANSWER_STAGES.len()],
}

impl Default for AnswerMetrics {
    fn default() -> Self {
        AnswerMetrics {
            local: Counter::default(),
            cloud: Counter::default(),
            local_confidence: Histogram::new(CONFIDENCE_BOUNDS),
            cloud_confidence: Histogram::new(CONFIDENCE_BOUNDS),
            stage_seconds: std::array::from_fn(|_| Histogram::new(LATENCY_BOUNDS_S)),
        }
    }
}

/// The model answering now, for metrics and readiness.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelState {
    pub name: String,
    /// Where it runs: `cpu`, `cuda:0`, `openvino:npu`...
    pub runs_on: String,
    pub load_time: Duration,
}

/// Units of work in progress, so the supervisor can tell a busy stage from a stuck one: each stage
/// marks the start of a unit (a frame read, an answer) and the mark goes when the unit ends. A unit
/// running longer than the limit (`device.stall_timeout_secs`) means its stage is stuck.
#[derive(Debug)]
pub struct Progress {
    since: Mutex<HashMap<String, Instant>>,
    limit_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            since: Mutex::default(),
            limit_ms: AtomicU64::new(u64::MAX),
        }
    }
}

/// A unit of work in progress; dropping it ends the unit.
#[must_use = "the unit of work ends when this is dropped"]
pub struct Working<'a> {
    progress: &'a Progress,
    stage: String,
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.progress.since.lock().unwrap().remove(&self.stage);
    }
}

impl Progress {
    /// Marks the start of a unit of work of `stage` (one unit per stage name at a time).
    pub fn working(&self, stage: impl Into<String>) -> Working<'_> {
        let stage = stage.into();
        self.since
            .lock()
            .unwrap()
            .insert(stage.clone(), Instant::now());
        Working {
            progress: self,
            stage,
        }
    }

    pub(crate) fn set_limit(&self, limit: Duration) {
        self.limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// Stages whose current unit has run longer than the limit, with how long, longest first.
    pub fn stuck(&self) -> Vec<(String, Duration)> {
        let limit = Duration::from_millis(self.limit_ms.load(Ordering::Relaxed));
        let mut stuck: Vec<(String, Duration)> = self
            .since
            .lock()
            .unwrap()
            .iter()
            .map(|(stage, since)| (stage.clone(), since.elapsed()))
            .filter(|(_, busy)| *busy > limit)
            .collect();
        stuck.sort_by_key(|(_, busy)| std::cmp::Reverse(*busy));
        stuck
    }
}

/// Everything the daemon counts.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    pub frames_captured: Counter,
    pub frames_bad: Counter,
    pub source_errors: Counter,
    pub frames_considered: Counter,
    pub jobs_queued: Counter,
    pub jobs_merged: Counter,
    pub answers: Counter,
    pub answer_failures: Counter,
    pub asks_received: Counter,
    pub asks_rejected: Counter,
    pub published: Counter,
    pub broker_connects: Counter,
    pub broker_errors: Counter,
    pub broker_connected: AtomicBool,
    pub pending_jobs: Gauge,
    /// Sum of end-to-end answer latencies in milliseconds, for the mean.
    pub answer_total_ms: Counter,
    pub answer_last_ms: Gauge,
    /// Answers reviewed by the escalation stage, by outcome (`answered`, `confident`, `queued`...).
    escalations: Mutex<BTreeMap<&'static str, u64>>,
    /// Sum of the cloud requests' latencies that produced answers, for the mean.
    pub cloud_total_ms: Counter,
    pub cloud_last_ms: Gauge,
    /// Each cloud endpoint's breaker: `closed`, `open` or `half_open`.
    pub breakers: Mutex<BTreeMap<String, &'static str>>,
    /// Requests each cloud endpoint refused (401, 403, 404, 422...), by HTTP status.
    refusals: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    /// Each camera's clip buffer (cameras with clip tasks only).
    clip_buffers: Mutex<BTreeMap<String, ClipBufferState>>,
    pub dataset: DatasetStats,
    pub published_answers: AnswerMetrics,
    /// The local model's time per answer (preprocessing to the last token), by where it ran.
    inference_seconds: Mutex<BTreeMap<String, Histogram>>,
    /// `None` until the vision worker starts with its model.
    pub model: Mutex<Option<ModelState>>,
    pub progress: Progress,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            frames_captured: Counter::default(),
            frames_bad: Counter::default(),
            source_errors: Counter::default(),
            frames_considered: Counter::default(),
            jobs_queued: Counter::default(),
            jobs_merged: Counter::default(),
            answers: Counter::default(),
            answer_failures: Counter::default(),
            asks_received: Counter::default(),
            asks_rejected: Counter::default(),
            published: Counter::default(),
            broker_connects: Counter::default(),
            broker_errors: Counter::default(),
            broker_connected: AtomicBool::new(false),
            pending_jobs: Gauge::default(),
            answer_total_ms: Counter::default(),
            answer_last_ms: Gauge::default(),
            escalations: Mutex::default(),
            cloud_total_ms: Counter::default(),
            cloud_last_ms: Gauge::default(),
            breakers: Mutex::default(),
            refusals: Mutex::default(),
            clip_buffers: Mutex::default(),
            dataset: DatasetStats::default(),
            published_answers: AnswerMetrics::default(),
            inference_seconds: Mutex::default(),
            model: Mutex::default(),
            progress: Progress::default(),
        }
    }
}

/// The escalation dataset: what its folder holds and what became of the escalations offered to it.
#[derive(Debug, Default)]
pub struct DatasetStats {
    pub rows: Gauge,
    pub bytes: Gauge,
    pub saved: Counter,
    /// Rows deleted for the folder's size or age limit.
    pub pruned: Counter,
    /// Damaged lines of `metadata.jsonl` left out at start-up.
    pub skipped_lines: Counter,
    /// Escalations not saved, by reason: `busy`, `write_failed`, `unavailable`, `duplicate`, `stopped`.
    dropped: Mutex<BTreeMap<&'static str, u64>>,
    /// Why the folder cannot be used now, if it cannot.
    error: Mutex<Option<String>>,
}

impl DatasetStats {
    pub(crate) fn count_dropped(&self, reason: &'static str) {
        *self.dropped.lock().unwrap().entry(reason).or_default() += 1;
    }

    pub fn dropped(&self) -> BTreeMap<&'static str, u64> {
        self.dropped.lock().unwrap().clone()
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        *self.error.lock().unwrap() = error;
    }

    pub(crate) fn set_size(&self, rows: usize, bytes: u64) {
        self.rows.set(rows as u64);
        self.bytes.set(bytes);
    }

    fn snapshot(&self) -> DatasetSnapshot {
        DatasetSnapshot {
            rows: self.rows.get(),
            bytes: self.bytes.get(),
            saved: self.saved.get(),
            pruned: self.pruned.get(),
            skipped_lines: self.skipped_lines.get(),
            dropped: self.dropped(),
            error: self.error.lock().unwrap().clone(),
        }
    }
}

/// The dataset's part of the stats message.
#[derive(Debug, Serialize)]
pub struct DatasetSnapshot {
    pub rows: u64,
    pub bytes: u64,
    pub saved: u64,
    pub pruned: u64,
    pub skipped_lines: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a camera's clip buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClipBufferState {
    pub frames: u64,
    /// Pixel bytes: the buffer's memory.
    pub bytes: u64,
}

/// The stats message published on `<prefix>/<device>/stats`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub uptime_s: u64,
    pub frames: FrameCounts,
    pub answers: u64,
    pub answer_failures: u64,
    pub asks: AskCounts,
    pub published: u64,
    pub broker: BrokerState,
    pub queues: QueueDepths,
    pub latency_ms: Latency,
    pub escalations: EscalationCounts,
    /// Per camera with clip tasks: the frames its clip buffer holds and their bytes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub clip_buffers: BTreeMap<String, ClipBufferState>,
    /// The escalation dataset (`[dataset]`).
    pub dataset: DatasetSnapshot,
}

#[derive(Debug, Serialize)]
pub struct FrameCounts {
    pub captured: u64,
    pub bad: u64,
    pub source_errors: u64,
    /// Frames the gate looked at; the rest were replaced by newer ones before anyone needed them.
    pub considered: u64,
    pub jobs: u64,
    /// Jobs folded into a newer frame of the same camera because the analyser was busy.
    pub merged: u64,
}

#[derive(Debug, Serialize)]
pub struct AskCounts {
    pub received: u64,
    pub rejected: u64,
}

#[derive(Debug, Serialize)]
pub struct BrokerState {
    pub connected: bool,
    pub connects: u64,
    pub errors: u64,
}

#[derive(Debug, Serialize)]
pub struct QueueDepths {
    pub pending_jobs: u64,
}

#[derive(Debug, Serialize)]
pub struct EscalationCounts {
    pub by_outcome: BTreeMap<&'static str, u64>,
    pub cloud_last_ms: u64,
    pub cloud_mean_ms: u64,
    pub breakers: BTreeMap<String, &'static str>,
    /// Per endpoint, the requests it refused by HTTP status.
    pub refusals: BTreeMap<String, BTreeMap<u16, u64>>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub last_total: u64,
    pub mean_total: u64,
}

impl Stats {
    /// Counts one local answer that took `seconds` of model time on `runs_on`.
    pub(crate) fn observe_inference(&self, runs_on: &str, seconds: f64) {
        let mut histograms = self.inference_seconds.lock().unwrap();
        if !histograms.contains_key(runs_on) {
            histograms.insert(runs_on.to_owned(), Histogram::new(LATENCY_BOUNDS_S));
        }
        histograms[runs_on].observe(seconds);
    }

    /// The local model's time per answer, by where it ran.
    pub fn inference_seconds(&self) -> Vec<(String, HistogramSnapshot)> {
        self.inference_seconds
            .lock()
            .unwrap()
            .iter()
            .map(|(runs_on, histogram)| (runs_on.clone(), histogram.snapshot()))
            .collect()
    }

    /// Records `camera`'s clip buffer; a stopped buffer (no frames, no bytes) is forgotten.
    pub(crate) fn set_clip_buffer(&self, camera: &str, frames: u64, bytes: u64) {
        let mut buffers = self.clip_buffers.lock().unwrap();
        if frames == 0 && bytes == 0 {
            buffers.remove(camera);
        } else {
            buffers.insert(camera.to_owned(), ClipBufferState { frames, bytes });
        }
    }

    pub fn clip_buffers(&self) -> BTreeMap<String, ClipBufferState> {
        self.clip_buffers.lock().unwrap().clone()
    }

    /// Counts an answer the escalation stage reviewed, by what became of it.
    pub(crate) fn count_escalation(&self, outcome: &'static str) {
        *self.escalations.lock().unwrap().entry(outcome).or_default() += 1;
    }

    /// Counts a request `endpoint` refused with `status`.
    pub(crate) fn count_refusal(&self, endpoint: &str, status: u16) {
        *self
            .refusals
            .lock()
            .unwrap()
            .entry(endpoint.to_owned())
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    /// The refusals counted so far, per endpoint and status.
    pub fn refusals(&self) -> BTreeMap<String, BTreeMap<u16, u64>> {
        self.refusals.lock().unwrap().clone()
    }

    /// The model now answering.
    pub(crate) fn set_model(&self, model: ModelState) {
        *self.model.lock().unwrap() = Some(model);
    }

    /// The escalation outcomes counted so far.
    pub fn escalations(&self) -> BTreeMap<&'static str, u64> {
        self.escalations.lock().unwrap().clone()
    }

    /// Seconds since the daemon started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn snapshot(&self) -> Snapshot {
        let answers = self.answers.get();
        let by_outcome = self.escalations();
        let cloud_answers = by_outcome.get("answered").copied().unwrap_or(0)
            + by_outcome.get("replayed").copied().unwrap_or(0);
        Snapshot {
            uptime_s: self.uptime().as_secs(),
            frames: FrameCounts {
                captured: self.frames_captured.get(),
                bad: self.frames_bad.get(),
                source_errors: self.source_errors.get(),
                considered: self.frames_considered.get(),
                jobs: self.jobs_queued.get(),
                merged: self.jobs_merged.get(),
            },
            answers,
            answer_failures: self.answer_failures.get(),
            asks: AskCounts {
                received: self.asks_received.get(),
                rejected: self.asks_rejected.get(),
            },
            published: self.published.get(),
            broker: BrokerState {
                connected: self.broker_connected.load(Ordering::Relaxed),
                connects: self.broker_connects.get(),
                errors: self.broker_errors.get(),
            },
            queues: QueueDepths {
                pending_jobs: self.pending_jobs.get(),
            },
            latency_ms: Latency {
                last_total: self.answer_last_ms.get(),
                mean_total: self.answer_total_ms.get().checked_div(answers).unwrap_or(0),
            },
            escalations: EscalationCounts {
                by_outcome,
                cloud_last_ms: self.cloud_last_ms.get(),
                cloud_mean_ms: self
                    .cloud_total_ms
                    .get()
                    .checked_div(cloud_answers)
                    .unwrap_or(0),
                breakers: self.breakers.lock().unwrap().clone(),
                refusals: self.refusals(),
            },
            clip_buffers: self.clip_buffers(),
            dataset: self.dataset.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_each_value_under_its_first_bound_cumulatively() {
        let histogram = Histogram::new(&[0.5, 1.0]);
        for value in [0.1, 0.5, 0.7, 3.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.cumulative, vec![(0.5, 2), (1.0, 3)]);
        assert_eq!(snapshot.count, 4);
        assert!((snapshot.sum - 4.3).abs() < 1e-9);
    }

    #[test]
    fn a_unit_of_work_is_stuck_only_while_it_runs_past_the_limit() {
        let progress = Progress::default();
        let working = progress.working("vision");
        progress.set_limit(Duration::from_secs(60));
        assert!(progress.stuck().is_empty());
        std::thread::sleep(Duration::from_millis(20));
        progress.set_limit(Duration::from_millis(10));
        let stuck = progress.stuck();
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].0, "vision");
        drop(working);
        assert!(progress.stuck().is_empty());
    }
}
