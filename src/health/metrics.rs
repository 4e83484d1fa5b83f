//! The Prometheus text exposition format (version 0.0.4), written from the shared counters.
//!
//! The counters already exist for the MQTT stats message; a metrics library with its own global
//! registry would count everything twice and tie tests that run several daemons in one process to one
//! registry. So this file only formats: every family has its HELP and TYPE lines, counters end in
//! `_total`, latencies are in seconds, label values are escaped. Each family is one entry of
//! `METRICS` (name, help, type, how to read its samples), and one small writer prints them all.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::outbox::OutboxStatus;
use crate::stats::{
    ANSWER_STAGES, ClipBufferState, Histogram, HistogramSnapshot, ModelState, Stats,
};

/// The whole exposition for one scrape.
pub(crate) fn render(
    stats: &Stats,
    outbox: &OutboxStatus,
    escalation_queue: Option<OutboxStatus>,
) -> String {
    let scrape = Scrape {
        stats,
        stores: [
            ("answers", Some(outbox.clone())),
            ("escalations", escalation_queue),
        ],
    };
    let mut out = Exposition::default();
    for group in METRICS {
        for family in *group {
            out.family(family);
        }
        let samples: Vec<Vec<Sample>> = group.iter().map(|family| (family.read)(&scrape)).collect();
        let rows = samples.iter().map(Vec::len).max().unwrap_or(0);
        for row in 0..rows {
            for (family, samples) in group.iter().zip(&samples) {
                if let Some(sample) = samples.get(row) {
                    out.sample(family.name, sample);
                }
            }
        }
    }
    out.text
}

/// Every metric, in the order of the exposition. Families listed together (the stores', the model's)
/// give their HELP and TYPE lines first, then their samples a row at a time (all of the answers'
/// store, then all of the escalations'), as this exposition always has.
static METRICS: &[&[Family]] = &[
    &[gauge("lookout_build_info", "Lookout's version.", |_| {
        by("version", [(env!("CARGO_PKG_VERSION"), 1.0)])
    })],
    &[gauge(
        "lookout_uptime_seconds",
        "Seconds since the daemon started.",
        |s| unlabelled(s.stats.uptime().as_secs_f64()),
    )],
    &[counter(
        "lookout_frames_captured_total",
        "Frames the sources produced.",
        |s| unlabelled(s.stats.frames_captured.get()),
    )],
    &[counter(
        "lookout_frames_dropped_total",
        "Frames not analysed, by reason: unreadable (bad), replaced by a newer one before the gate \
         looked (replaced), folded into a newer frame while the model was busy (merged).",
        |s| {
            let replaced = s
                .stats
                .frames_captured
                .get()
                .saturating_sub(s.stats.frames_considered.get());
            by(
                "reason",
                [
                    ("bad", s.stats.frames_bad.get()),
                    ("replaced", replaced),
                    ("merged", s.stats.jobs_merged.get()),
                ],
            )
        },
    )],
    &[counter(
        "lookout_source_errors_total",
        "Failed reads from frame sources.",
        |s| unlabelled(s.stats.source_errors.get()),
    )],
    &[gauge(
        "lookout_pending_jobs",
        "Frames waiting for the model.",
        |s| unlabelled(s.stats.pending_jobs.get()),
    )],
    &[gauge(
        "lookout_clip_buffer_bytes",
        "Memory of each camera's clip buffer (recent frames for clip tasks), in bytes.",
        |s| by("camera", s.clip_buffers(|buffer| buffer.bytes)),
    )],
    &[gauge(
        "lookout_clip_buffer_frames",
        "Frames in each camera's clip buffer.",
        |s| by("camera", s.clip_buffers(|buffer| buffer.frames)),
    )],
    &[counter(
        "lookout_answers_total",
        "Answers handed to the outbox, by the tier that gave them.",
        |s| {
            let answers = &s.stats.published_answers;
            by(
                "tier",
                [
                    ("local", answers.local.get()),
                    ("cloud", answers.cloud.get()),
                ],
            )
        },
    )],
    &[counter(
        "lookout_answer_failures_total",
        "Questions the local model could not answer.",
        |s| unlabelled(s.stats.answer_failures.get()),
    )],
    &[histogram(
        "lookout_answer_confidence",
        "Confidence of the published answers, by tier.",
        |s| {
            let answers = &s.stats.published_answers;
            by(
                "tier",
                [
                    ("local", answers.local_confidence.snapshot()),
                    ("cloud", answers.cloud_confidence.snapshot()),
                ],
            )
        },
    )],
    &[histogram(
        "lookout_stage_latency_seconds",
        "Time each answer spent per stage (total: from capture to the answer being ready).",
        |s| {
            let histograms = s.stats.published_answers.stage_seconds.iter();
            by(
                "stage",
                ANSWER_STAGES
                    .into_iter()
                    .zip(histograms.map(Histogram::snapshot)),
            )
        },
    )],
    &[histogram(
        "lookout_inference_seconds",
        "The local model's time per answer (preprocessing to the last token), by where it ran.",
        |s| by("runs_on", s.stats.inference_seconds()),
    )],
    &[counter(
        "lookout_escalations_total",
        "Answers the escalation stage reviewed, by outcome.",
        |s| by("outcome", s.stats.escalations()),
    )],
    &[gauge(
        "lookout_cloud_breaker_open",
        "1 while a cloud endpoint's circuit breaker is open or half open.",
        |s| {
            let breakers = s.stats.breakers.lock().unwrap();
            let open = |state: &str| u64::from(state != "closed");
            breakers
                .iter()
                .map(|(endpoint, state)| {
                    Sample::new(
                        [("endpoint", endpoint.clone()), ("state", state.to_string())],
                        open(state),
                    )
                })
                .collect()
        },
    )],
    &[counter(
        "lookout_cloud_refusals_total",
        "Requests a cloud endpoint refused (401, 403, 404, 422...), by HTTP status.",
        |s| {
            let refusals = s.stats.refusals().into_iter();
            refusals
                .flat_map(|(endpoint, statuses)| {
                    statuses.into_iter().map(move |(status, count)| {
                        Sample::new(
                            [
                                ("endpoint", endpoint.clone()),
                                ("status", status.to_string()),
                            ],
                            count,
                        )
                    })
                })
                .collect()
        },
    )],
    &[gauge(
        "lookout_dataset_rows",
        "Rows (escalations the cloud answered) in the dataset folder.",
        |s| unlabelled(s.stats.dataset.rows.get()),
    )],
    &[gauge(
        "lookout_dataset_bytes",
        "Bytes of the dataset folder's images and metadata.",
        |s| unlabelled(s.stats.dataset.bytes.get()),
    )],
    &[counter(
        "lookout_dataset_saved_total",
        "Escalations saved to the dataset.",
        |s| unlabelled(s.stats.dataset.saved.get()),
    )],
    &[counter(
        "lookout_dataset_pruned_total",
        "Dataset rows deleted for the folder's size or age limit.",
        |s| unlabelled(s.stats.dataset.pruned.get()),
    )],
    &[counter(
        "lookout_dataset_skipped_lines_total",
        "Damaged lines of the dataset's metadata.jsonl left out at start-up.",
        |s| unlabelled(s.stats.dataset.skipped_lines.get()),
    )],
    &[counter(
        "lookout_dataset_dropped_total",
        "Escalations to be saved that were not, by reason.",
        |s| by("reason", s.stats.dataset.dropped()),
    )],
    &[
        gauge(
            "lookout_outbox_depth",
            "Messages waiting in an on-disk store (answers; escalations queued for the cloud).",
            |s| by("store", s.stores(|status| status.depth as u64)),
        ),
        gauge(
            "lookout_outbox_oldest_age_seconds",
            "Age of the oldest message waiting in an on-disk store.",
            |s| by("store", s.stores(|status| status.oldest_age_s)),
        ),
        counter(
            "lookout_outbox_dropped_total",
            "Messages dropped from a full or expired store.",
            |s| by("store", s.stores(|status| status.dropped)),
        ),
    ],
    &[gauge(
        "lookout_broker_connected",
        "1 while the MQTT broker is connected.",
        |s| unlabelled(u64::from(s.stats.broker_connected.load(Ordering::Relaxed))),
    )],
    &[counter(
        "lookout_broker_connects_total",
        "Connections made to the MQTT broker.",
        |s| unlabelled(s.stats.broker_connects.get()),
    )],
    &[
        gauge(
            "lookout_model_info",
            "The local model answering and where it runs (cpu, cuda:0, openvino:npu...).",
            |s| {
                let model = s.stats.model.lock().unwrap();
                let info = |model: &ModelState| {
                    Sample::new(
                        [
                            ("model", model.name.clone()),
                            ("runs_on", model.runs_on.clone()),
                        ],
                        1.0,
                    )
                };
                model.iter().map(info).collect()
            },
        ),
        gauge(
            "lookout_model_load_seconds",
            "How long loading the answering model took.",
            |s| {
                let model = s.stats.model.lock().unwrap();
                let load = |model: &ModelState| Sample::new([], model.load_time.as_secs_f64());
                model.iter().map(load).collect()
            },
        ),
    ],
    &[gauge(
        "lookout_stage_stuck",
        "1 for a stage whose current unit of work has run past device.stall_timeout_secs.",
        |s| {
            by(
                "stage",
                s.stats
                    .progress
                    .stuck()
                    .into_iter()
                    .map(|(stage, _)| (stage, 1.0)),
            )
        },
    )],
];

/// What one scrape reads: the shared counters and the on-disk stores, by name.
struct Scrape<'a> {
    stats: &'a Stats,
    stores: [(&'static str, Option<OutboxStatus>); 2],
}

impl Scrape<'_> {
    /// One figure of each camera's clip buffer.
    fn clip_buffers(
        &self,
        read: fn(&ClipBufferState) -> u64,
    ) -> impl Iterator<Item = (String, u64)> {
        let buffers = self.stats.clip_buffers().into_iter();
        buffers.map(move |(camera, buffer)| (camera, read(&buffer)))
    }

    /// One figure of each store the daemon has (the escalation queue is optional).
    fn stores<V>(&self, read: fn(&OutboxStatus) -> V) -> impl Iterator<Item = (&'static str, V)> {
        self.stores
            .iter()
            .filter_map(move |(name, status)| Some((*name, read(status.as_ref()?))))
    }
}

/// A metric family: its HELP and TYPE lines, and how a scrape reads its samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    read: fn(&Scrape) -> Vec<Sample>,
}

const fn counter(
    name: &'static str,
    help: &'static str,
    read: fn(&Scrape) -> Vec<Sample>,
) -> Family {
    Family {
        name,
        kind: "counter",
        help,
        read,
    }
}

const fn gauge(name: &'static str, help: &'static str, read: fn(&Scrape) -> Vec<Sample>) -> Family {
    Family {
        name,
        kind: "gauge",
        help,
        read,
    }
}

const fn histogram(
    name: &'static str,
    help: &'static str,
    read: fn(&Scrape) -> Vec<Sample>,
) -> Family {
    Family {
        name,
        kind: "histogram",
        help,
        read,
    }
}

/// One labelled value of a family.
struct Sample {
    labels: Vec<(&'static str, String)>,
    value: Value,
}

enum Value {
    Number(f64),
    Histogram(HistogramSnapshot),
}

impl From<f64> for Value {
    fn from(value: f64) -> Value {
        Value::Number(value)
    }
}

impl From<u64> for Value {
    fn from(count: u64) -> Value {
        Value::Number(count as f64)
    }
}

impl From<HistogramSnapshot> for Value {
    fn from(histogram: HistogramSnapshot) -> Value {
        Value::Histogram(histogram)
    }
}

impl Sample {
    fn new<const N: usize>(labels: [(&'static str, String); N], value: impl Into<Value>) -> Sample {
        Sample {
            labels: labels.into(),
            value: value.into(),
        }
    }
}

/// A family's one sample, without labels.
fn unlabelled(value: impl Into<Value>) -> Vec<Sample> {
    vec![Sample::new([], value)]
}

/// A family's samples, one per value of one label.
fn by<K: ToString, V: Into<Value>>(
    label: &'static str,
    values: impl IntoIterator<Item = (K, V)>,
) -> Vec<Sample> {
    values
        .into_iter()
        .map(|(key, value)| Sample::new([(label, key.to_string())], value))
        .collect()
}

/// Writes the exposition's lines.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, family: &Family) {
        let Family {
            name, kind, help, ..
        } = family;
        let _ = writeln!(self.text, "# HELP {name} {}", help.replace('\\', "\\\\"));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, sample: &Sample) {
        let labels: Vec<(&str, &str)> = sample
            .labels
            .iter()
            .map(|(label, value)| (*label, value.as_str()))
            .collect();
        match &sample.value {
            Value::Number(value) => self.line(name, &labels, *value),
            Value::Histogram(histogram) => self.histogram(name, &labels, histogram),
        }
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = writeln!(self.text, "{name}{} {}", label_set(labels), number(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &HistogramSnapshot) {
        for (bound, count) in &histogram.cumulative {
            let bound = number(*bound);
            let mut with_bound = labels.to_vec();
            with_bound.push(("le", &bound));
            self.line(&format!("{name}_bucket"), &with_bound, *count as f64);
        }
        let mut with_inf = labels.to_vec();
        with_inf.push(("le", "+Inf"));
        self.line(&format!("{name}_bucket"), &with_inf, histogram.count as f64);
        self.line(&format!("{name}_sum"), labels, histogram.sum);
        self.line(&format!("{name}_count"), labels, histogram.count as f64);
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

    /// Every family with samples, rendered today: the exposition must stay byte-identical. Uptime and
    /// version change from run to run and release to release, so those two values are masked.
    #[test]
    fn a_fully_populated_scrape_renders_exactly_this_text() {
        use crate::stats::ModelState;
        use std::time::Duration;

        let stats = Stats::default();
        stats.frames_captured.add(120);
        stats.frames_considered.add(100);
        stats.frames_bad.add(2);
        stats.jobs_merged.add(5);
        stats.source_errors.add(1);
        stats.pending_jobs.set(3);
        stats.set_clip_buffer("porch", 9, 9 * 786_432);
        stats.set_clip_buffer("yard \"back\"", 2, 1_536);
        let answers = &stats.published_answers;
        answers.local.add(7);
        answers.cloud.add(2);
        answers.local_confidence.observe(0.85);
        answers.local_confidence.observe(0.42);
        answers.cloud_confidence.observe(0.97);
        for (step, histogram) in answers.stage_seconds.iter().enumerate() {
            histogram.observe(0.004 * (step + 1) as f64);
        }
        answers.stage_seconds[6].observe(1.75);
        stats.observe_inference("cpu", 0.8);
        stats.answer_failures.add(1);
        for outcome in ["answered", "answered", "confident", "queued"] {
            stats.count_escalation(outcome);
        }
        stats.breakers.lock().unwrap().extend(
            [
                ("https://a.example/v1", "closed"),
                ("https://b.example/v1", "open"),
            ]
            .map(|(endpoint, state)| (endpoint.to_owned(), state)),
        );
        for status in [401, 401, 404] {
            stats.count_refusal("https://b.example/v1", status);
        }
        stats.dataset.set_size(4, 123_456);
        stats.dataset.saved.add(4);
        stats.dataset.pruned.add(1);
        stats.dataset.skipped_lines.add(1);
        stats.dataset.count_dropped("busy");
        stats.dataset.count_dropped("busy");
        stats.dataset.count_dropped("write_failed");
        stats.broker_connected.store(true, Ordering::Relaxed);
        stats.broker_connects.add(2);
        stats.set_model(ModelState {
            name: "SmolVLM2-256M-Video-Instruct".to_owned(),
            runs_on: "cpu".to_owned(),
            load_time: Duration::from_millis(1_500),
        });
        // Both stages run past a zero limit, the one started first the longest.
        stats.progress.set_limit(Duration::ZERO);
        let _source = stats.progress.working("source");
        std::thread::sleep(Duration::from_millis(5));
        let _vision = stats.progress.working("vision");
        std::thread::sleep(Duration::from_millis(5));
        let store = |depth, oldest_age_s, dropped| OutboxStatus {
            depth,
            bytes: 4_096,
            in_flight: 1,
            oldest_age_s,
            replayed: 0,
            dropped,
            write_failures: 0,
            damaged_bytes: 0,
        };

        let text = render(&stats, &store(12, 3.5, 1), Some(store(2, 60.25, 0)));

        let mut masked = String::new();
        for line in text.lines() {
            match line.strip_prefix("lookout_uptime_seconds ") {
                Some(uptime) => {
                    assert!(uptime.parse::<f64>().is_ok_and(|s| s >= 0.0), "{line}");
                    masked.push_str("lookout_uptime_seconds UPTIME");
                }
                None => masked.push_str(&line.replace(env!("CARGO_PKG_VERSION"), "VERSION")),
            }
            masked.push('\n');
        }
        assert_eq!(masked, text_rendered_today(), "{text}");
    }

    fn text_rendered_today() -> &'static str {
        r#"# HELP lookout_build_info Lookout's version.
# TYPE lookout_build_info gauge
lookout_build_info{version="VERSION"} 1
# HELP lookout_uptime_seconds Seconds since the daemon started.
# TYPE lookout_uptime_seconds gauge
lookout_uptime_seconds UPTIME
# HELP lookout_frames_captured_total Frames the sources produced.
# TYPE lookout_frames_captured_total counter
lookout_frames_captured_total 120
# HELP lookout_frames_dropped_total Frames not analysed, by reason: unreadable (bad), replaced by a newer one before the gate looked (replaced), folded into a newer frame while the model was busy (merged).
# TYPE lookout_frames_dropped_total counter
lookout_frames_dropped_total{reason="bad"} 2
lookout_frames_dropped_total{reason="replaced"} 20
lookout_frames_dropped_total{reason="merged"} 5
# HELP lookout_source_errors_total Failed reads from frame sources.
# TYPE lookout_source_errors_total counter
lookout_source_errors_total 1
# HELP lookout_pending_jobs Frames waiting for the model.
# TYPE lookout_pending_jobs gauge
lookout_pending_jobs 3
# HELP lookout_clip_buffer_bytes Memory of each camera's clip buffer (recent frames for clip tasks), in bytes.
# TYPE lookout_clip_buffer_bytes gauge
lookout_clip_buffer_bytes{camera="porch"} 7077888
lookout_clip_buffer_bytes{camera="yard \"back\""} 1536
# HELP lookout_clip_buffer_frames Frames in each camera's clip buffer.
# TYPE lookout_clip_buffer_frames gauge
lookout_clip_buffer_frames{camera="porch"} 9
lookout_clip_buffer_frames{camera="yard \"back\""} 2
# HELP lookout_answers_total Answers handed to the outbox, by the tier that gave them.
# TYPE lookout_answers_total counter
lookout_answers_total{tier="local"} 7
lookout_answers_total{tier="cloud"} 2
# HELP lookout_answer_failures_total Questions the local model could not answer.
# TYPE lookout_answer_failures_total counter
lookout_answer_failures_total 1
# HELP lookout_answer_confidence Confidence of the published answers, by tier.
# TYPE lookout_answer_confidence histogram
lookout_answer_confidence_bucket{tier="local",le="0.1"} 0
lookout_answer_confidence_bucket{tier="local",le="0.2"} 0
lookout_answer_confidence_bucket{tier="local",le="0.3"} 0
lookout_answer_confidence_bucket{tier="local",le="0.4"} 0
lookout_answer_confidence_bucket{tier="local",le="0.5"} 1
lookout_answer_confidence_bucket{tier="local",le="0.6"} 1
lookout_answer_confidence_bucket{tier="local",le="0.7"} 1
lookout_answer_confidence_bucket{tier="local",le="0.8"} 1
lookout_answer_confidence_bucket{tier="local",le="0.9"} 2
lookout_answer_confidence_bucket{tier="local",le="0.95"} 2
lookout_answer_confidence_bucket{tier="local",le="1"} 2
lookout_answer_confidence_bucket{tier="local",le="+Inf"} 2
lookout_answer_confidence_sum{tier="local"} 1.27
lookout_answer_confidence_count{tier="local"} 2
lookout_answer_confidence_bucket{tier="cloud",le="0.1"} 0
lookout_answer_confidence_bucket{tier="cloud",le="0.2"} 0
lookout_answer_confidence_bucket{tier="cloud",le="0.3"} 0
lookout_answer_confidence_bucket{tier="cloud",le="0.4"} 0
lookout_answer_confidence_bucket{tier="cloud",le="0.5"} 0
lookout_answer_confidence_bucket{tier="cloud",le="0.6"} 0
lookout_answer_confidence_bucket{tier="cloud",le="0.7"} 0
lookout_answer_confidence_bucket{tier="cloud",le="0.8"} 0
lookout_answer_confidence_bucket{tier="cloud",le="0.9"} 0
lookout_answer_confidence_bucket{tier="cloud",le="0.95"} 0
lookout_answer_confidence_bucket{tier="cloud",le="1"} 1
lookout_answer_confidence_bucket{tier="cloud",le="+Inf"} 1
lookout_answer_confidence_sum{tier="cloud"} 0.97
lookout_answer_confidence_count{tier="cloud"} 1
# HELP lookout_stage_latency_seconds Time each answer spent per stage (total: from capture to the answer being ready).
# TYPE lookout_stage_latency_seconds histogram
lookout_stage_latency_seconds_bucket{stage="capture",le="0.005"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="0.01"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="0.025"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="0.05"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="0.1"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="0.25"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="0.5"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="1"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="2.5"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="5"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="10"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="30"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="60"} 1
lookout_stage_latency_seconds_bucket{stage="capture",le="+Inf"} 1
lookout_stage_latency_seconds_sum{stage="capture"} 0.004
lookout_stage_latency_seconds_count{stage="capture"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="0.005"} 0
lookout_stage_latency_seconds_bucket{stage="preprocess",le="0.01"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="0.025"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="0.05"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="0.1"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="0.25"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="0.5"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="1"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="2.5"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="5"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="10"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="30"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="60"} 1
lookout_stage_latency_seconds_bucket{stage="preprocess",le="+Inf"} 1
lookout_stage_latency_seconds_sum{stage="preprocess"} 0.008
lookout_stage_latency_seconds_count{stage="preprocess"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="0.005"} 0
lookout_stage_latency_seconds_bucket{stage="vision",le="0.01"} 0
lookout_stage_latency_seconds_bucket{stage="vision",le="0.025"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="0.05"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="0.1"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="0.25"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="0.5"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="1"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="2.5"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="5"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="10"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="30"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="60"} 1
lookout_stage_latency_seconds_bucket{stage="vision",le="+Inf"} 1
lookout_stage_latency_seconds_sum{stage="vision"} 0.012
lookout_stage_latency_seconds_count{stage="vision"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="0.005"} 0
lookout_stage_latency_seconds_bucket{stage="prefill",le="0.01"} 0
lookout_stage_latency_seconds_bucket{stage="prefill",le="0.025"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="0.05"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="0.1"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="0.25"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="0.5"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="1"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="2.5"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="5"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="10"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="30"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="60"} 1
lookout_stage_latency_seconds_bucket{stage="prefill",le="+Inf"} 1
lookout_stage_latency_seconds_sum{stage="prefill"} 0.016
lookout_stage_latency_seconds_count{stage="prefill"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="0.005"} 0
lookout_stage_latency_seconds_bucket{stage="decode",le="0.01"} 0
lookout_stage_latency_seconds_bucket{stage="decode",le="0.025"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="0.05"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="0.1"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="0.25"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="0.5"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="1"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="2.5"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="5"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="10"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="30"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="60"} 1
lookout_stage_latency_seconds_bucket{stage="decode",le="+Inf"} 1
lookout_stage_latency_seconds_sum{stage="decode"} 0.02
lookout_stage_latency_seconds_count{stage="decode"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="0.005"} 0
lookout_stage_latency_seconds_bucket{stage="cloud",le="0.01"} 0
lookout_stage_latency_seconds_bucket{stage="cloud",le="0.025"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="0.05"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="0.1"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="0.25"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="0.5"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="1"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="2.5"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="5"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="10"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="30"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="60"} 1
lookout_stage_latency_seconds_bucket{stage="cloud",le="+Inf"} 1
lookout_stage_latency_seconds_sum{stage="cloud"} 0.024
lookout_stage_latency_seconds_count{stage="cloud"} 1
lookout_stage_latency_seconds_bucket{stage="total",le="0.005"} 0
lookout_stage_latency_seconds_bucket{stage="total",le="0.01"} 0
lookout_stage_latency_seconds_bucket{stage="total",le="0.025"} 0
lookout_stage_latency_seconds_bucket{stage="total",le="0.05"} 1
lookout_stage_latency_seconds_bucket{stage="total",le="0.1"} 1
lookout_stage_latency_seconds_bucket{stage="total",le="0.25"} 1
lookout_stage_latency_seconds_bucket{stage="total",le="0.5"} 1
lookout_stage_latency_seconds_bucket{stage="total",le="1"} 1
lookout_stage_latency_seconds_bucket{stage="total",le="2.5"} 2
lookout_stage_latency_seconds_bucket{stage="total",le="5"} 2
lookout_stage_latency_seconds_bucket{stage="total",le="10"} 2
lookout_stage_latency_seconds_bucket{stage="total",le="30"} 2
lookout_stage_latency_seconds_bucket{stage="total",le="60"} 2
lookout_stage_latency_seconds_bucket{stage="total",le="+Inf"} 2
lookout_stage_latency_seconds_sum{stage="total"} 1.778
lookout_stage_latency_seconds_count{stage="total"} 2
# HELP lookout_inference_seconds The local model's time per answer (preprocessing to the last token), by where it ran.
# TYPE lookout_inference_seconds histogram
lookout_inference_seconds_bucket{runs_on="cpu",le="0.005"} 0
lookout_inference_seconds_bucket{runs_on="cpu",le="0.01"} 0
lookout_inference_seconds_bucket{runs_on="cpu",le="0.025"} 0
lookout_inference_seconds_bucket{runs_on="cpu",le="0.05"} 0
lookout_inference_seconds_bucket{runs_on="cpu",le="0.1"} 0
lookout_inference_seconds_bucket{runs_on="cpu",le="0.25"} 0
lookout_inference_seconds_bucket{runs_on="cpu",le="0.5"} 0
lookout_inference_seconds_bucket{runs_on="cpu",le="1"} 1
lookout_inference_seconds_bucket{runs_on="cpu",le="2.5"} 1
lookout_inference_seconds_bucket{runs_on="cpu",le="5"} 1
lookout_inference_seconds_bucket{runs_on="cpu",le="10"} 1
lookout_inference_seconds_bucket{runs_on="cpu",le="30"} 1
lookout_inference_seconds_bucket{runs_on="cpu",le="60"} 1
lookout_inference_seconds_bucket{runs_on="cpu",le="+Inf"} 1
lookout_inference_seconds_sum{runs_on="cpu"} 0.8
lookout_inference_seconds_count{runs_on="cpu"} 1
# HELP lookout_escalations_total Answers the escalation stage reviewed, by outcome.
# TYPE lookout_escalations_total counter
lookout_escalations_total{outcome="answered"} 2
lookout_escalations_total{outcome="confident"} 1
lookout_escalations_total{outcome="queued"} 1
# HELP lookout_cloud_breaker_open 1 while a cloud endpoint's circuit breaker is open or half open.
# TYPE lookout_cloud_breaker_open gauge
lookout_cloud_breaker_open{endpoint="https://a.example/v1",state="closed"} 0
lookout_cloud_breaker_open{endpoint="https://b.example/v1",state="open"} 1
# HELP lookout_cloud_refusals_total Requests a cloud endpoint refused (401, 403, 404, 422...), by HTTP status.
# TYPE lookout_cloud_refusals_total counter
lookout_cloud_refusals_total{endpoint="https://b.example/v1",status="401"} 2
lookout_cloud_refusals_total{endpoint="https://b.example/v1",status="404"} 1
# HELP lookout_dataset_rows Rows (escalations the cloud answered) in the dataset folder.
# TYPE lookout_dataset_rows gauge
lookout_dataset_rows 4
# HELP lookout_dataset_bytes Bytes of the dataset folder's images and metadata.
# TYPE lookout_dataset_bytes gauge
lookout_dataset_bytes 123456
# HELP lookout_dataset_saved_total Escalations saved to the dataset.
# TYPE lookout_dataset_saved_total counter
lookout_dataset_saved_total 4
# HELP lookout_dataset_pruned_total Dataset rows deleted for the folder's size or age limit.
# TYPE lookout_dataset_pruned_total counter
lookout_dataset_pruned_total 1
# HELP lookout_dataset_skipped_lines_total Damaged lines of the dataset's metadata.jsonl left out at start-up.
# TYPE lookout_dataset_skipped_lines_total counter
lookout_dataset_skipped_lines_total 1
# HELP lookout_dataset_dropped_total Escalations to be saved that were not, by reason.
# TYPE lookout_dataset_dropped_total counter
lookout_dataset_dropped_total{reason="busy"} 2
lookout_dataset_dropped_total{reason="write_failed"} 1
# HELP lookout_outbox_depth Messages waiting in an on-disk store (answers; escalations queued for the cloud).
# TYPE lookout_outbox_depth gauge
# HELP lookout_outbox_oldest_age_seconds Age of the oldest message waiting in an on-disk store.
# TYPE lookout_outbox_oldest_age_seconds gauge
# HELP lookout_outbox_dropped_total Messages dropped from a full or expired store.
# TYPE lookout_outbox_dropped_total counter
lookout_outbox_depth{store="answers"} 12
lookout_outbox_oldest_age_seconds{store="answers"} 3.5
lookout_outbox_dropped_total{store="answers"} 1
lookout_outbox_depth{store="escalations"} 2
lookout_outbox_oldest_age_seconds{store="escalations"} 60.25
lookout_outbox_dropped_total{store="escalations"} 0
# HELP lookout_broker_connected 1 while the MQTT broker is connected.
# TYPE lookout_broker_connected gauge
lookout_broker_connected 1
# HELP lookout_broker_connects_total Connections made to the MQTT broker.
# TYPE lookout_broker_connects_total counter
lookout_broker_connects_total 2
# HELP lookout_model_info The local model answering and where it runs (cpu, cuda:0, openvino:npu...).
# TYPE lookout_model_info gauge
# HELP lookout_model_load_seconds How long loading the answering model took.
# TYPE lookout_model_load_seconds gauge
lookout_model_info{model="SmolVLM2-256M-Video-Instruct",runs_on="cpu"} 1
lookout_model_load_seconds 1.5
# HELP lookout_stage_stuck 1 for a stage whose current unit of work has run past device.stall_timeout_secs.
# TYPE lookout_stage_stuck gauge
lookout_stage_stuck{stage="source"} 1
lookout_stage_stuck{stage="vision"} 1
"#
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
