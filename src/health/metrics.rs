//! The Prometheus text exposition format (version 0.0.4), written from the shared counters.
//!
//! The counters already exist for the MQTT stats message; a metrics library with its own global
//! registry would count everything twice and tie tests that run several daemons in one process to one
//! registry. So this file only formats: every family has its HELP and TYPE lines, counters end in
//! `_total`, latencies are in seconds, label values are escaped.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::outbox::OutboxStatus;
use crate::stats::{ANSWER_STAGES, HistogramSnapshot, Stats};

/// The whole exposition for one scrape.
pub fn render(
    stats: &Stats,
    outbox: &OutboxStatus,
    escalation_queue: Option<OutboxStatus>,
) -> String {
    let mut out = Exposition::default();
    out.family("lookout_build_info", "gauge", "Lookout's version.");
    out.sample(
        "lookout_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    out.single(
        "lookout_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        stats.uptime().as_secs_f64(),
    );

    out.single(
        "lookout_frames_captured_total",
        "counter",
        "Frames the sources produced.",
        stats.frames_captured.get() as f64,
    );
    let captured = stats.frames_captured.get();
    let considered = stats.frames_considered.get();
    out.family(
        "lookout_frames_dropped_total",
        "counter",
        "Frames not analysed, by reason: unreadable (bad), replaced by a newer one before the gate \
         looked (replaced), folded into a newer frame while the model was busy (merged).",
    );
    for (reason, count) in [
        ("bad", stats.frames_bad.get()),
        ("replaced", captured.saturating_sub(considered)),
        ("merged", stats.jobs_merged.get()),
    ] {
        out.sample(
            "lookout_frames_dropped_total",
            &[("reason", reason)],
            count as f64,
        );
    }
    out.single(
        "lookout_source_errors_total",
        "counter",
        "Failed reads from frame sources.",
        stats.source_errors.get() as f64,
    );
    out.single(
        "lookout_pending_jobs",
        "gauge",
        "Frames waiting for the model.",
        stats.pending_jobs.get() as f64,
    );
    let clip_buffers = stats.clip_buffers();
    for (name, help, of_bytes) in [
        (
            "lookout_clip_buffer_bytes",
            "Memory of each camera's clip buffer (recent frames for clip tasks), in bytes.",
            true,
        ),
        (
            "lookout_clip_buffer_frames",
            "Frames in each camera's clip buffer.",
            false,
        ),
    ] {
        out.family(name, "gauge", help);
        for (camera, buffer) in &clip_buffers {
            let value = if of_bytes {
                buffer.bytes
            } else {
                buffer.frames
            };
            out.sample(name, &[("camera", camera)], value as f64);
        }
    }

    let answers = &stats.published_answers;
    out.family(
        "lookout_answers_total",
        "counter",
        "Answers handed to the outbox, by the tier that gave them.",
    );
    out.sample(
        "lookout_answers_total",
        &[("tier", "local")],
        answers.local.get() as f64,
    );
    out.sample(
        "lookout_answers_total",
        &[("tier", "cloud")],
        answers.cloud.get() as f64,
    );
    out.single(
        "lookout_answer_failures_total",
        "counter",
        "Questions the local model could not answer.",
        stats.answer_failures.get() as f64,
    );
    out.family(
        "lookout_answer_confidence",
        "histogram",
        "Confidence of the published answers, by tier.",
    );
    out.histogram(
        "lookout_answer_confidence",
        &[("tier", "local")],
        &answers.local_confidence.snapshot(),
    );
    out.histogram(
        "lookout_answer_confidence",
        &[("tier", "cloud")],
        &answers.cloud_confidence.snapshot(),
    );
    out.family(
        "lookout_stage_latency_seconds",
        "histogram",
        "Time each answer spent per stage (total: from capture to the answer being ready).",
    );
    for (stage, histogram) in ANSWER_STAGES.iter().zip(&answers.stage_seconds) {
        out.histogram(
            "lookout_stage_latency_seconds",
            &[("stage", stage)],
            &histogram.snapshot(),
        );
    }

    out.family(
        "lookout_escalations_total",
        "counter",
        "Answers the escalation stage reviewed, by outcome.",
    );
    for (outcome, count) in stats.escalations() {
        out.sample(
            "lookout_escalations_total",
            &[("outcome", outcome)],
            count as f64,
        );
    }
    out.family(
        "lookout_cloud_breaker_open",
        "gauge",
        "1 while a cloud endpoint's circuit breaker is open or half open.",
    );
    for (endpoint, state) in stats.breakers.lock().unwrap().iter() {
        out.sample(
            "lookout_cloud_breaker_open",
            &[("endpoint", endpoint), ("state", state)],
            if *state == "closed" { 0.0 } else { 1.0 },
        );
    }
    out.family(
        "lookout_cloud_refusals_total",
        "counter",
        "Requests a cloud endpoint refused (401, 403, 404, 422...), by HTTP status.",
    );
    for (endpoint, statuses) in stats.refusals() {
        for (status, count) in statuses {
            out.sample(
                "lookout_cloud_refusals_total",
                &[("endpoint", &endpoint), ("status", &status.to_string())],
                count as f64,
            );
        }
    }

    let dataset = &stats.dataset;
    for (name, kind, help, value) in [
        (
            "lookout_dataset_rows",
            "gauge",
            "Rows (escalations the cloud answered) in the dataset folder.",
            dataset.rows.get(),
        ),
        (
            "lookout_dataset_bytes",
            "gauge",
            "Bytes of the dataset folder's images and metadata.",
            dataset.bytes.get(),
        ),
        (
            "lookout_dataset_saved_total",
            "counter",
            "Escalations saved to the dataset.",
            dataset.saved.get(),
        ),
        (
            "lookout_dataset_pruned_total",
            "counter",
            "Dataset rows deleted for the folder's size or age limit.",
            dataset.pruned.get(),
        ),
        (
            "lookout_dataset_skipped_lines_total",
            "counter",
            "Damaged lines of the dataset's metadata.jsonl left out at start-up.",
            dataset.skipped_lines.get(),
        ),
    ] {
        out.single(name, kind, help, value as f64);
    }
    out.family(
        "lookout_dataset_dropped_total",
        "counter",
        "Escalations to be saved that were not, by reason.",
    );
    for (reason, count) in dataset.dropped() {
        out.sample(
            "lookout_dataset_dropped_total",
            &[("reason", reason)],
            count as f64,
        );
    }

    out.family(
        "lookout_outbox_depth",
        "gauge",
        "Messages waiting in an on-disk store (answers; escalations queued for the cloud).",
    );
    out.family(
        "lookout_outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest message waiting in an on-disk store.",
    );
    out.family(
        "lookout_outbox_dropped_total",
        "counter",
        "Messages dropped from a full or expired store.",
    );
    let stores = [
        ("answers", Some(outbox.clone())),
        ("escalations", escalation_queue),
    ];
    for (store, status) in stores {
        let Some(status) = status else { continue };
        let labels = [("store", store)];
        out.sample("lookout_outbox_depth", &labels, status.depth as f64);
        out.sample(
            "lookout_outbox_oldest_age_seconds",
            &labels,
            status.oldest_age_s,
        );
        out.sample(
            "lookout_outbox_dropped_total",
            &labels,
            status.dropped as f64,
        );
    }

    out.single(
        "lookout_broker_connected",
        "gauge",
        "1 while the MQTT broker is connected.",
        f64::from(u8::from(stats.broker_connected.load(Ordering::Relaxed))),
    );
    out.single(
        "lookout_broker_connects_total",
        "counter",
        "Connections made to the MQTT broker.",
        stats.broker_connects.get() as f64,
    );

    let model = stats.model.lock().unwrap().clone();
    out.family(
        "lookout_model_info",
        "gauge",
        "The local model answering and the ONNX Runtime execution provider it runs on.",
    );
    out.family(
        "lookout_model_load_seconds",
        "gauge",
        "How long loading the answering model took.",
    );
    if let Some(model) = model {
        let provider = model.providers.first().copied().unwrap_or("cpu");
        out.sample(
            "lookout_model_info",
            &[("model", &model.name), ("provider", provider)],
            1.0,
        );
        out.sample(
            "lookout_model_load_seconds",
            &[],
            model.load_time.as_secs_f64(),
        );
    }
    out.family(
        "lookout_stage_stuck",
        "gauge",
        "1 for a stage whose current unit of work has run past device.stall_timeout_secs.",
    );
    for (stage, _) in stats.progress.stuck() {
        out.sample("lookout_stage_stuck", &[("stage", &stage)], 1.0);
    }
    out.text
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", help.replace('\\', "\\\\"));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = writeln!(self.text, "{name}{} {}", label_set(labels), number(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &HistogramSnapshot) {
        for (bound, count) in &histogram.cumulative {
            let bound = number(*bound);
            let mut with_bound = labels.to_vec();
            with_bound.push(("le", &bound));
            self.sample(&format!("{name}_bucket"), &with_bound, *count as f64);
        }
        let mut with_inf = labels.to_vec();
        with_inf.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &with_inf, histogram.count as f64);
        self.sample(&format!("{name}_sum"), labels, histogram.sum);
        self.sample(&format!("{name}_count"), labels, histogram.count as f64);
    }
}

fn label_set(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|(name, value)| {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{name}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_buffers_are_gauges_per_camera_while_they_run() {
        let stats = Stats::default();
        let outbox = OutboxStatus {
            depth: 0,
            bytes: 0,
            in_flight: 0,
            oldest_age_s: 0.0,
            replayed: 0,
            dropped: 0,
            write_failures: 0,
            damaged_bytes: 0,
        };
        stats.set_clip_buffer("porch", 9, 9 * 786_432);
        let text = render(&stats, &outbox, None);
        assert!(
            text.contains("lookout_clip_buffer_bytes{camera=\"porch\"} 7077888"),
            "{text}"
        );
        assert!(
            text.contains("lookout_clip_buffer_frames{camera=\"porch\"} 9"),
            "{text}"
        );
        stats.set_clip_buffer("porch", 0, 0);
        assert!(!render(&stats, &outbox, None).contains("camera=\"porch\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            label_set(&[("endpoint", "a\"b\\c\nd")]),
            r#"{endpoint="a\"b\\c\nd"}"#
        );
        assert_eq!(label_set(&[]), "");
    }
}
