//! The `[escalation]` section: when to ask the cloud (global defaults, per-task overrides), what a
//! camera lets leave the box, which endpoints to try in order, and the offline queue's bounds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::message::MAX_CLIP_FRAMES;
use crate::outbox::OutboxConfig;
use crate::validate::{self, Problems};

/// The Hugging Face Inference Providers router, OpenAI-compatible.
pub const HF_ROUTER: &str = "https://router.huggingface.co/v1";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    pub enabled: bool,
    /// The policy of every task without its own entry in `tasks`:
    pub mode: Mode,
    /// Local answers less confident than this are escalated (mode `auto`).
    pub threshold: f64,
    /// Seconds between two escalations of the same task, at least.
    pub min_interval_secs: f64,
    /// Frames whose perceptual hashes differ in at most this many of 64 bits from the task's last
    /// escalated frame are near-duplicates and not escalated again; a negative value turns it off.
    pub duplicate_distance: i32,
    /// Escalations of all tasks together; fields left out keep `TOTAL_BUDGET`'s.
    pub budget: Budget,
    /// Each task's own budget (no limit by default); a task's entry in `tasks` may set any field.
    pub task_budget: Budget,
    /// Per-task overrides, by task id (`ask` for on-demand asks).
    pub tasks: BTreeMap<String, TaskPolicy>,
    /// What leaves the box: frames downscaled so their longest side is at most this, as JPEG of
    /// this quality; `cameras` may say otherwise, or keep a camera's frames on the box.
    pub longest_side: u32,
    pub jpeg_quality: u8,
    pub cameras: BTreeMap<String, CameraPrivacy>,
    /// Tried in order; the next one when one fails.
    pub endpoints: Vec<EndpointConfig>,
    pub request_timeout_secs: f64,
    /// For one escalation, retries and failover included.
    pub deadline_secs: f64,
    /// Retries of a failed request on the same endpoint (408, 429, 5xx, network errors).
    pub retries: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown_secs: f64,
    /// The longest reply accepted, in bytes.
    pub max_reply_bytes: u64,
    pub max_tokens: u32,
    pub queue: QueueConfig,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            enabled: false,
            mode: Mode::Auto,
            threshold: 0.5,
            min_interval_secs: 10.0,
            duplicate_distance: 4,
            budget: Budget::default(),
            task_budget: Budget::default(),
            tasks: BTreeMap::new(),
            longest_side: 1024,
            jpeg_quality: 85,
            cameras: BTreeMap::new(),
            endpoints: vec![EndpointConfig::default()],
            request_timeout_secs: 20.0,
            deadline_secs: 45.0,
            retries: 2,
            breaker_failures: 5,
            breaker_cooldown_secs: 60.0,
            max_reply_bytes: 1_000_000,
            max_tokens: 128,
            queue: QueueConfig::default(),
        }
    }
}

/// When a task's answers go to the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// When the local confidence is below the threshold.
    #[default]
    Auto,
    Always,
    Never,
}

/// A task's overrides of the global policy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskPolicy {
    pub mode: Option<Mode>,
    pub threshold: Option<f64>,
    pub min_interval_secs: Option<f64>,
    pub duplicate_distance: Option<i32>,
    pub budget: Option<Budget>,
}

/// Escalations allowed per sliding minute, hour and day, as written: a field left out keeps its
/// default (the total budget's `TOTAL_BUDGET`, a task's `task_budget`), so a table that sets one
/// limit never lifts the others; `"unlimited"` lifts one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budget {
    pub per_minute: Option<Limit>,
    pub per_hour: Option<Limit>,
    pub per_day: Option<Limit>,
}

/// One field of a budget: a count, or `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    At(u32),
    Unlimited,
}

/// A budget with every default filled in; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
}

/// The total budget's defaults.
pub const TOTAL_BUDGET: Limits = Limits {
    per_minute: Some(10),
    per_hour: Some(200),
    per_day: Some(1000),
};

impl Budget {
    /// The limits this budget sets, `defaults` where it sets none.
    pub fn over(&self, defaults: Limits) -> Limits {
        let pick = |field: Option<Limit>, default: Option<u32>| match field {
            Some(Limit::At(count)) => Some(count),
            Some(Limit::Unlimited) => None,
            None => default,
        };
        Limits {
            per_minute: pick(self.per_minute, defaults.per_minute),
            per_hour: pick(self.per_hour, defaults.per_hour),
            per_day: pick(self.per_day, defaults.per_day),
        }
    }
}

impl Limits {
    /// Half of each limit, rounded down.
    pub(crate) fn halved(&self) -> Limits {
        Limits {
            per_minute: self.per_minute.map(|count| count / 2),
            per_hour: self.per_hour.map(|count| count / 2),
            per_day: self.per_day.map(|count| count / 2),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Limit, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Limit;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a count of escalations or \"unlimited\"")
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Limit, E> {
                u32::try_from(value)
                    .map(Limit::At)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(value), &self))
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Limit, E> {
                u64::try_from(value)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(value), &self))
                    .and_then(|value| self.visit_u64(value))
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Limit, E> {
                match value {
                    "unlimited" => Ok(Limit::Unlimited),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(value), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// How a camera's frames are sent: downscaled so the longest side is at most `longest_side`, as JPEG.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageConfig {
    pub longest_side: u32,
    pub jpeg_quality: u8,
}

/// A camera's say over what leaves the box.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraPrivacy {
    /// `false` keeps every frame of this camera on the box.
    pub escalate: Option<bool>,
    pub longest_side: Option<u32>,
    pub jpeg_quality: Option<u8>,
}

/// One OpenAI-compatible chat completions endpoint (no secret in it: the token is read from elsewhere).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// Named in answers, logs and stats.
    pub name: String,
    /// The API base; `/chat/completions` is appended.
    pub url: String,
    /// With the router's suffixes: `:fastest`, `:cheapest`, `:preferred` or `:<provider>`.
    pub model: String,
    /// The token's environment variable; also read from the file `<VAR>_FILE` names, or from the
    /// systemd credential named like the variable in lower case. Empty: send no token.
    pub token_env: String,
    /// A file holding the token, read before the environment.
    pub token_file: Option<PathBuf>,
    /// The organisation billed (`X-HF-Bill-To`).
    pub bill_to: Option<String>,
    /// The most images one request carries: a clip with more frames sends this many, spread evenly.
    pub max_images: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            name: "router".to_owned(),
            url: HF_ROUTER.to_owned(),
            model: "Qwen/Qwen2.5-VL-7B-Instruct:fastest".to_owned(),
            token_env: "HF_TOKEN".to_owned(),
            token_file: None,
            bill_to: None,
            max_images: 8,
        }
    }
}

/// The offline queue: escalations that found every endpoint down wait here and are sent again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub enabled: bool,
    pub max_mb: f64,
    /// An escalation older than this is dropped: its answer is stale.
    pub max_age_hours: f64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            enabled: true,
            max_mb: 32.0,
            max_age_hours: 24.0,
        }
    }
}

impl QueueConfig {
    pub(crate) fn as_outbox(&self) -> OutboxConfig {
        OutboxConfig {
            max_mb: self.max_mb,
            max_age_hours: self.max_age_hours,
        }
    }
}

impl EscalationConfig {
    /// Checks the section on its own; `Config` checks that the task and camera ids named exist.
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        threshold(problems, &format!("{path}.threshold"), self.threshold);
        min_interval(
            problems,
            &format!("{path}.min_interval_secs"),
            self.min_interval_secs,
        );
        duplicate_distance(
            problems,
            &format!("{path}.duplicate_distance"),
            self.duplicate_distance,
        );
        self.budget.validate(&format!("{path}.budget"), problems);
        self.task_budget
            .validate(&format!("{path}.task_budget"), problems);
        for (task, policy) in &self.tasks {
            policy.validate(&format!("{path}.tasks.{task}"), problems);
        }
        longest_side(problems, &format!("{path}.longest_side"), self.longest_side);
        jpeg_quality(problems, &format!("{path}.jpeg_quality"), self.jpeg_quality);
        for (camera, privacy) in &self.cameras {
            let path = format!("{path}.cameras.{camera}");
            if let Some(side) = privacy.longest_side {
                longest_side(problems, &format!("{path}.longest_side"), side);
            }
            if let Some(quality) = privacy.jpeg_quality {
                jpeg_quality(problems, &format!("{path}.jpeg_quality"), quality);
            }
        }
        if self.enabled && self.endpoints.is_empty() {
            problems.push(
                format!("{path}.endpoints"),
                "list at least one endpoint to escalate to",
            );
        }
        let mut names = std::collections::HashSet::new();
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let path = format!("{path}.endpoints[{index}]");
            endpoint.validate(&path, problems);
            if !names.insert(endpoint.name.as_str()) {
                problems.push(
                    format!("{path}.name"),
                    format!("duplicate endpoint name {:?}", endpoint.name),
                );
            }
        }
        validate::seconds(
            problems,
            &format!("{path}.request_timeout_secs"),
            self.request_timeout_secs,
        );
        validate::seconds(
            problems,
            &format!("{path}.deadline_secs"),
            self.deadline_secs,
        );
        if self.retries > 10 {
            problems.push(
                format!("{path}.retries"),
                format!("must be at most 10, not {}", self.retries),
            );
        }
        if !(1..=1000).contains(&self.breaker_failures) {
            problems.push(
                format!("{path}.breaker_failures"),
                format!("must be 1 to 1000, not {}", self.breaker_failures),
            );
        }
        validate::seconds(
            problems,
            &format!("{path}.breaker_cooldown_secs"),
            self.breaker_cooldown_secs,
        );
        if !(1024..=100_000_000).contains(&self.max_reply_bytes) {
            problems.push(
                format!("{path}.max_reply_bytes"),
                format!("must be 1024 to 100000000, not {}", self.max_reply_bytes),
            );
        }
        if !(1..=4096).contains(&self.max_tokens) {
            problems.push(
                format!("{path}.max_tokens"),
                format!("must be 1 to 4096, not {}", self.max_tokens),
            );
        }
        self.queue
            .as_outbox()
            .validate(&format!("{path}.queue"), problems);
    }

    /// The policy a task runs under: its overrides over the global defaults.
    pub(crate) fn policy_for(&self, task: &str) -> EffectivePolicy {
        let own = self.tasks.get(task).cloned().unwrap_or_default();
        EffectivePolicy {
            mode: own.mode.unwrap_or(self.mode),
            threshold: own.threshold.unwrap_or(self.threshold),
            min_interval_secs: own.min_interval_secs.unwrap_or(self.min_interval_secs),
            duplicate_distance: own.duplicate_distance.unwrap_or(self.duplicate_distance),
            budget: own
                .budget
                .unwrap_or_default()
                .over(self.task_budget.over(Limits::default())),
        }
    }

    /// The total budget, every default filled in.
    pub(crate) fn total_budget(&self) -> Limits {
        self.budget.over(TOTAL_BUDGET)
    }

    /// Whether a camera's frames may leave the box, and how.
    pub(crate) fn image_for(&self, camera: &str) -> Option<ImageConfig> {
        let privacy = self.cameras.get(camera).cloned().unwrap_or_default();
        privacy.escalate.unwrap_or(true).then(|| ImageConfig {
            longest_side: privacy.longest_side.unwrap_or(self.longest_side),
            jpeg_quality: privacy.jpeg_quality.unwrap_or(self.jpeg_quality),
        })
    }
}

/// A task's policy with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EffectivePolicy {
    pub mode: Mode,
    pub threshold: f64,
    pub min_interval_secs: f64,
    pub duplicate_distance: i32,
    pub budget: Limits,
}

impl TaskPolicy {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if let Some(value) = self.threshold {
            threshold(problems, &format!("{path}.threshold"), value);
        }
        if let Some(value) = self.min_interval_secs {
            min_interval(problems, &format!("{path}.min_interval_secs"), value);
        }
        if let Some(value) = self.duplicate_distance {
            duplicate_distance(problems, &format!("{path}.duplicate_distance"), value);
        }
        if let Some(budget) = &self.budget {
            budget.validate(&format!("{path}.budget"), problems);
        }
    }
}

impl Budget {
    fn validate(&self, path: &str, problems: &mut Problems) {
        for (field, value) in [
            ("per_minute", self.per_minute),
            ("per_hour", self.per_hour),
            ("per_day", self.per_day),
        ] {
            if let Some(Limit::At(count)) = value
                && count > 1_000_000
            {
                problems.push(
                    format!("{path}.{field}"),
                    format!("must be at most 1000000 (or \"unlimited\"), not {count}"),
                );
            }
        }
    }
}

impl EndpointConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        validate::topic_segment(problems, &format!("{path}.name"), &self.name);
        match url::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => problems.push(
                format!("{path}.url"),
                format!("{:?} is not an http(s) URL with a host", self.url),
            ),
            Err(error) => problems.push(
                format!("{path}.url"),
                format!("{:?} is not a URL ({error})", self.url),
            ),
        }
        if self.model.trim().is_empty() {
            problems.push(format!("{path}.model"), "must name a model");
        }
        if !(1..=MAX_CLIP_FRAMES).contains(&self.max_images) {
            problems.push(
                format!("{path}.max_images"),
                format!("must be 1 to {MAX_CLIP_FRAMES}, not {}", self.max_images),
            );
        }
        if !self
            .token_env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            problems.push(
                format!("{path}.token_env"),
                format!("{:?} is not an environment variable name", self.token_env),
            );
        }
        if self
            .bill_to
            .as_deref()
            .is_some_and(|bill_to| bill_to.trim().is_empty() || bill_to.contains(['\r', '\n']))
        {
            problems.push(
                format!("{path}.bill_to"),
                "must name an organisation on one line",
            );
        }
    }
}

fn threshold(problems: &mut Problems, path: &str, value: f64) {
    if !(0.0..=1.0).contains(&value) {
        problems.push(path, format!("must be 0 to 1, not {value}"));
    }
}

fn min_interval(problems: &mut Problems, path: &str, value: f64) {
    if !(value.is_finite() && (0.0..=86_400.0).contains(&value)) {
        problems.push(path, format!("must be 0 to 86400 seconds, not {value}"));
    }
}

fn duplicate_distance(problems: &mut Problems, path: &str, value: i32) {
    if value > 32 {
        problems.push(
            path,
            format!("must be at most 32 of 64 bits (negative turns it off), not {value}"),
        );
    }
}

fn longest_side(problems: &mut Problems, path: &str, value: u32) {
    if !(64..=4096).contains(&value) {
        problems.push(path, format!("must be 64 to 4096 pixels, not {value}"));
    }
}

fn jpeg_quality(problems: &mut Problems, path: &str, value: u8) {
    if !(10..=100).contains(&value) {
        problems.push(path, format!("must be 10 to 100, not {value}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> EscalationConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_budget_table_keeps_the_defaults_of_the_fields_it_leaves_out() {
        let config = section("[budget]\nper_minute = 3\n");
        assert_eq!(
            config.total_budget(),
            Limits {
                per_minute: Some(3),
                ..TOTAL_BUDGET
            }
        );
        assert_eq!(section("").total_budget(), TOTAL_BUDGET);
        let lifted = section("[budget]\nper_day = \"unlimited\"\n");
        assert_eq!(lifted.total_budget().per_day, None);
        assert_eq!(lifted.total_budget().per_hour, Some(200));

        // A task's budget keeps what `task_budget` says of the fields it leaves out.
        let config = section(
            "[task_budget]\nper_minute = 2\nper_day = 50\n[tasks.door]\nbudget = { per_hour = 20, per_day = \"unlimited\" }\n",
        );
        assert_eq!(
            config.policy_for("door").budget,
            Limits {
                per_minute: Some(2),
                per_hour: Some(20),
                per_day: None,
            }
        );
        assert_eq!(
            config.policy_for("other").budget,
            Limits {
                per_minute: Some(2),
                per_hour: None,
                per_day: Some(50),
            }
        );
        let error = toml::from_str::<EscalationConfig>("[budget]\nper_hour = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"unlimited\""), "{error}");
    }
}
