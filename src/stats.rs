//! Counters every stage adds to and the publisher reports: one shared leaf, so that stages need not know
//! each other to be counted. Plain relaxed atomics: each number is independent and only ever read for
//! reporting, so no ordering between them is promised or needed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
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
        }
    }
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
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub last_total: u64,
    pub mean_total: u64,
}

impl Stats {
    /// Counts an answer the escalation stage reviewed, by what became of it.
    pub fn count_escalation(&self, outcome: &'static str) {
        *self.escalations.lock().unwrap().entry(outcome).or_default() += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        let answers = self.answers.get();
        let by_outcome = self.escalations.lock().unwrap().clone();
        let cloud_answers = by_outcome.get("answered").copied().unwrap_or(0)
            + by_outcome.get("replayed").copied().unwrap_or(0);
        Snapshot {
            uptime_s: self.started.elapsed().as_secs(),
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
            },
        }
    }
}
