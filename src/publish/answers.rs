//! What the publisher task stores in the outbox for each outcome: the answer as published (with the
//! device), or the error reply to an ask; and, as it goes, the answer's metrics and its log line.

use std::sync::Arc;

use serde::Serialize;
use tracing::{debug, info, warn};

use super::Topics;
use crate::message::ASK_TASK;
use crate::message::{Answer, Outcome, Tier};
use crate::outbox::Outbox;
use crate::stats::Stats;

/// The error reply to an ask that could not be taken or answered.
#[derive(Debug, Serialize)]
struct AskFailure<'a> {
    device: &'a str,
    camera: &'a str,
    task: &'static str,
    ask_id: Option<&'a str>,
    error: String,
}

/// An answer as published: the answer with the device it came from.
#[derive(Serialize)]
struct Published<'a> {
    device: &'a str,
    #[serde(flatten)]
    answer: &'a Answer,
}

/// Stores an outcome's message in the outbox (a synced disk write, so off the async threads).
pub(super) async fn store_outcome(
    outbox: &Arc<Outbox>,
    stats: &Stats,
    topics: &Topics,
    device: &str,
    outcome: Outcome,
) {
    let (topic, payload, id) = match &outcome {
        Outcome::Answered(answer) => {
            count_answer(stats, answer);
            (
                topics.answer(&answer.camera, &answer.task),
                serde_json::to_vec(&Published { device, answer }).expect("answers serialize"),
                Some(answer.id),
            )
        }
        // A failed ask is answered with its error; a failed task was logged and counted by vision.
        Outcome::Failed(failure) if failure.ask_id.is_some() => {
            let (topic, payload) = ask_failure(
                topics,
                device,
                &failure.camera,
                failure.ask_id.as_deref(),
                failure.error.clone(),
            );
            (topic, payload, None)
        }
        Outcome::Failed(_) => return,
    };
    let outbox = outbox.clone();
    let _working = stats.progress.working("publish");
    match tokio::task::spawn_blocking(move || outbox.push(&topic, &payload)).await {
        Ok(seq) => match id {
            Some(id) => debug!(id = %id, seq, "Stored an answer in the outbox."),
            None => debug!(seq, "Stored an ask's error reply in the outbox."),
        },
        Err(failure) => warn!(error = %failure, "Storing an answer in the outbox failed."),
    }
}

/// Answers are cut to this many characters in the log line: enough to see what was answered.
const LOGGED_ANSWER_CHARS: usize = 80;

/// The one line per published answer, so that a running daemon is seen working.
pub(super) fn log_answer(answer: &Answer) {
    // Redacted before it is cut: a cut through a secret would leave its start unrecognised.
    let whole = crate::errors::redact(&answer.answer);
    let text: String = whole.chars().take(LOGGED_ANSWER_CHARS).collect();
    let cut = if text.len() < whole.len() { "…" } else { "" };
    let tier = match answer.tier {
        Tier::Local => "local",
        Tier::Cloud => "cloud",
    };
    info!(
        camera = %answer.camera,
        task = %answer.task,
        answer = ?format!("{text}{cut}"),
        confidence = answer.confidence,
        tier = %tier,
        total_ms = answer.timings_ms.total.round() as u64,
        "Answered."
    );
}

/// Counts an answer for metrics: its tier, its confidence and its time in each stage.
fn count_answer(stats: &Stats, answer: &Answer) {
    let metrics = &stats.published_answers;
    let (count, confidence) = match answer.tier {
        Tier::Local => (&metrics.local, &metrics.local_confidence),
        Tier::Cloud => (&metrics.cloud, &metrics.cloud_confidence),
    };
    count.inc();
    if let Some(value) = answer.confidence {
        confidence.observe(value);
    }
    let timings = &answer.timings_ms;
    let stages = [
        Some(timings.capture),
        Some(timings.stages.preprocess),
        Some(timings.stages.vision),
        Some(timings.stages.prefill),
        Some(timings.stages.decode),
        timings.cloud,
        Some(timings.total),
    ];
    for (histogram, millis) in metrics.stage_seconds.iter().zip(stages) {
        if let Some(millis) = millis {
            histogram.observe(millis / 1000.0);
        }
    }
}

/// The topic and payload of the error reply to an ask.
pub(super) fn ask_failure(
    topics: &Topics,
    device: &str,
    camera: &str,
    ask_id: Option<&str>,
    error: String,
) -> (String, Vec<u8>) {
    let payload = serde_json::to_vec(&AskFailure {
        device,
        camera,
        task: ASK_TASK,
        ask_id,
        error,
    })
    .expect("failures serialize");
    (topics.answer(camera, ASK_TASK), payload)
}
