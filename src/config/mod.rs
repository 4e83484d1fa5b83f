//! The daemon's configuration: one TOML document composed of the stages' own config structs, with
//! environment overrides, validated as a whole before any device or socket opens.
//!
//! Why the document is parsed section by section instead of in one `toml::from_str::<Config>`: serde
//! stops at the first error, and an operator fixing a file (or a fleet pushing one) wants every mistake
//! at once. So the text becomes a table first, each section and each camera or task is deserialized on
//! its own (unknown keys and wrong types each give an error with their field path), and then every stage
//! checks its values. Only a config with no error at all is returned.
//!
//! The document may have two layers: the local file, and the remote layer that pushes over MQTT build
//! (`remote.rs`), merged over it as JSON before the sections are read. Both go through this one path, so
//! a push is checked exactly as a file is.

pub mod remote;
mod secrets;

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::env::Env;
use crate::validate::{self, FieldError, Problems};
pub use remote::{RemoteConfig, RemoteLayer};
pub use secrets::{environment_secrets, secrets};

use crate::dataset::{self, DatasetConfig};
use crate::escalate::EscalationConfig;
use crate::health::HttpConfig;
use crate::message::TaskConfig;
use crate::outbox::OutboxConfig;
use crate::publish::MqttConfig;
use crate::publish::discovery::HomeAssistantConfig;
use crate::source::CameraConfig;
use crate::vision::VisionConfig;

/// The embedded default configuration, documented field by field; `lookout config example` prints it.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Everything the daemon runs on, after environment overrides, with the device id resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub device: DeviceConfig,
    pub cameras: Vec<CameraConfig>,
    pub tasks: Vec<TaskConfig>,
    pub mqtt: MqttConfig,
    pub vision: VisionConfig,
    pub escalation: EscalationConfig,
    pub dataset: DatasetConfig,
    pub outbox: OutboxConfig,
    pub http: HttpConfig,
    pub home_assistant: HomeAssistantConfig,
    /// From the local file only: pushes cannot change how pushes are checked.
    pub remote: RemoteConfig,
}

/// Who this box is, where it keeps its state and how it stops.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Device id used in topics; empty means the hostname.
    pub id: String,
    /// The outbox and other state; empty means the platform's default (see `resolve_state_dir`).
    pub state_dir: PathBuf,
    pub shutdown_timeout_secs: f64,
    /// How long one unit of work (an answer, a frame read, an outbox write) may run before its stage
    /// counts as stuck: systemd's watchdog is then no longer fed and `/healthz` fails.
    pub stall_timeout_secs: f64,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            id: String::new(),
            state_dir: PathBuf::new(),
            shutdown_timeout_secs: 10.0,
            stall_timeout_secs: 300.0,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Problems::summary(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// The individual problems, for reports that list them one by one (logs, acks).
    pub fn problems(&self) -> Vec<FieldError> {
        match self {
            ConfigError::Read { path, source } => {
                vec![FieldError::new(
                    "",
                    format!("cannot read {}: {source}", path.display()),
                )]
            }
            ConfigError::Invalid(problems) => problems.clone(),
        }
    }
}

/// Where a config comes from: a file, or the embedded default when there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigOrigin {
    File(PathBuf),
    Embedded,
}

impl ConfigOrigin {
    /// A file named on the command line wins over `LOOKOUT_CONFIG`; with neither, the embedded default.
    pub fn choose(cli: Option<PathBuf>, env: &Env) -> ConfigOrigin {
        match cli.or_else(|| env.get("LOOKOUT_CONFIG").map(PathBuf::from)) {
            Some(path) => ConfigOrigin::File(path),
            None => ConfigOrigin::Embedded,
        }
    }

    /// The local document's text (the file, or the embedded default).
    pub fn read(&self) -> Result<String, ConfigError> {
        match self {
            ConfigOrigin::File(path) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })
            }
            ConfigOrigin::Embedded => Ok(DEFAULT_TOML.to_owned()),
        }
    }

    /// The local document alone: read, overridden from `env` and validated.
    pub fn load(&self, env: &Env) -> Result<Config, ConfigError> {
        Config::from_toml(&self.read()?, env)
    }

    /// The config the daemon runs: the local document with the remote layer persisted in its state
    /// directory merged over it. A layer that is unreadable, or no longer valid over this local
    /// document, is left out with a warning: the box starts on its local config rather than not at all.
    pub fn load_effective(&self, env: &Env) -> Result<(Config, Layers), ConfigError> {
        let local = local_json(&self.read()?)?;
        let local_only = Config::from_json(local.clone(), env)?;
        let path = local_only.remote_layer_file();
        let remote = remote::load_layer(&path).unwrap_or_else(|problem| {
            tracing::warn!(file = %path.display(), problem = %problem, "Ignoring the remote config layer.");
            RemoteLayer::default()
        });
        let layers = Layers { local, remote };
        match layers.config(env) {
            Ok(config) => Ok((config, layers)),
            Err(error) => {
                tracing::warn!(version = layers.remote.version, error = %error, "The remote config layer does not fit the local file; starting on the local file alone.");
                let local = Layers {
                    local: layers.local,
                    remote: RemoteLayer::default(),
                };
                Ok((local_only, local))
            }
        }
    }
}

/// The two layers of the running config: the local document and the remote layer over it.
#[derive(Debug, Clone, PartialEq)]
pub struct Layers {
    /// The local document as JSON.
    pub local: Value,
    pub remote: RemoteLayer,
}

impl Layers {
    /// The merged document, before defaults and environment overrides.
    pub fn effective(&self) -> Value {
        let mut effective = self.local.clone();
        remote::merge_patch(&mut effective, &Value::Object(self.remote.layer.clone()));
        effective
    }

    pub fn config(&self, env: &Env) -> Result<Config, ConfigError> {
        Config::from_json(self.effective(), env)
    }
}

/// The environment variables that override fields, and the fields they override.
const ENV_OVERRIDES: [(&str, &str); 7] = [
    ("LOOKOUT_MQTT_URL", "mqtt.url"),
    ("LOOKOUT_DEVICE_ID", "device.id"),
    ("LOOKOUT_MODEL_DIR", "vision.model_dir"),
    ("LOOKOUT_VARIANT", "vision.variant"),
    ("ORT_DYLIB_PATH", "vision.runtime_library"),
    ("LOOKOUT_STATE_DIR", "device.state_dir"),
    ("LOOKOUT_HTTP_ADDR", "http.addr"),
];

/// One field of the effective config, for `lookout config show`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShownField {
    pub path: String,
    /// JSON, secrets redacted.
    pub value: String,
    /// `local` (the file, or the embedded default), `remote` or `env <VARIABLE>`.
    pub origin: String,
}

/// Every field the local file, the remote layer or the environment sets, with the value that wins
/// and where it comes from. Arrays (cameras, tasks) count as one field each.
pub fn field_origins(layers: &Layers, env: &Env) -> Vec<ShownField> {
    let mut effective = layers.effective();
    remote::redact(&mut effective);
    let mut fields = Vec::new();
    let mut leaves = Vec::new();
    flatten(&effective, String::new(), &mut leaves);
    let remote_layer = Value::Object(layers.remote.layer.clone());
    for (path, value) in leaves {
        let origin = if remote::lookup(&remote_layer, &path).is_some() {
            "remote"
        } else {
            "local"
        };
        fields.push(ShownField {
            path,
            value: value.to_string(),
            origin: origin.to_owned(),
        });
    }
    for (variable, path) in ENV_OVERRIDES {
        let Some(raw) = env.get(variable) else {
            continue;
        };
        let mut value = Value::from(raw);
        remote::redact(&mut value);
        fields.retain(|field| field.path != path);
        fields.push(ShownField {
            path: path.to_owned(),
            value: value.to_string(),
            origin: format!("env {variable}"),
        });
    }
    fields.sort_by(|a, b| a.path.cmp(&b.path));
    fields
}

fn flatten(value: &Value, path: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten(value, path, out);
            }
        }
        leaf => out.push((path, leaf.clone())),
    }
}

/// The local document's TOML as JSON, where the remote layer can be merged over it.
pub fn local_json(text: &str) -> Result<Value, ConfigError> {
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        let at = error
            .span()
            .map(|span| line_and_column(text, span.start))
            .unwrap_or_default();
        ConfigError::Invalid(vec![FieldError::new(
            at,
            format!("not valid TOML: {}", error.message()),
        )])
    })?;
    // JSON has no NaN or infinity (they would become null): each is reported where it is.
    let mut problems = Problems::default();
    for (key, value) in &table {
        find_non_finite(value, key.clone(), &mut problems);
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems.into_vec()));
    }
    Ok(serde_json::to_value(table).expect("TOML tables are JSON objects"))
}

fn find_non_finite(value: &toml::Value, path: String, problems: &mut Problems) {
    match value {
        toml::Value::Float(number) if !number.is_finite() => {
            problems.push(path, format!("must be a finite number, not {number}"));
        }
        toml::Value::Table(table) => {
            for (key, value) in table {
                find_non_finite(value, format!("{path}.{key}"), problems);
            }
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                find_non_finite(item, format!("{path}[{index}]"), problems);
            }
        }
        _ => {}
    }
}

impl Config {
    /// Parses `text`, applies environment overrides and validates, returning every problem found.
    pub fn from_toml(text: &str, env: &Env) -> Result<Config, ConfigError> {
        Config::from_json(local_json(text)?, env)
    }

    /// Reads the sections of a document (the local one, or local and remote merged), applies
    /// environment overrides and validates, returning every problem found.
    pub(crate) fn from_json(document: Value, env: &Env) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let table = match toml::Table::try_from(document) {
            Ok(table) => table,
            Err(error) => {
                problems.push("", format!("not a config document: {error}"));
                return Err(ConfigError::Invalid(problems.into_vec()));
            }
        };

        let mut config = Config {
            device: DeviceConfig::default(),
            cameras: Vec::new(),
            tasks: Vec::new(),
            mqtt: MqttConfig::default(),
            vision: VisionConfig::default(),
            escalation: EscalationConfig::default(),
            dataset: DatasetConfig::default(),
            outbox: OutboxConfig::default(),
            http: HttpConfig::default(),
            home_assistant: HomeAssistantConfig::default(),
            remote: RemoteConfig::default(),
        };
        for (key, value) in table {
            match key.as_str() {
                "device" => config.device = section(value, "device", &mut problems),
                "cameras" => config.cameras = list(value, "cameras", &mut problems),
                "tasks" => config.tasks = list(value, "tasks", &mut problems),
                "mqtt" => config.mqtt = section(value, "mqtt", &mut problems),
                "vision" => config.vision = section(value, "vision", &mut problems),
                "escalation" => config.escalation = section(value, "escalation", &mut problems),
                "dataset" => config.dataset = section(value, "dataset", &mut problems),
                "outbox" => config.outbox = section(value, "outbox", &mut problems),
                "http" => config.http = section(value, "http", &mut problems),
                "home_assistant" => {
                    config.home_assistant = section(value, "home_assistant", &mut problems)
                }
                "remote" => config.remote = section(value, "remote", &mut problems),
                other => problems.push(
                    other,
                    "unknown section; expected device, cameras, tasks, mqtt, vision, escalation, dataset, outbox, http, home_assistant or remote",
                ),
            }
        }
        config.apply_env(env);
        config.validate(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems.into_vec()))
        }
    }

    /// Environment variables override the file: they are how systemd units and containers configure.
    fn apply_env(&mut self, env: &Env) {
        if let Some(url) = env.get("LOOKOUT_MQTT_URL") {
            // An empty value means "no broker URL": the embedded broker.
            self.mqtt.url = Some(url.to_owned()).filter(|url| !url.is_empty());
        }
        if let Some(id) = env.get("LOOKOUT_DEVICE_ID") {
            self.device.id = id.to_owned();
        }
        if let Some(dir) = env.get("LOOKOUT_MODEL_DIR") {
            self.vision.model_dir = PathBuf::from(dir);
        }
        if let Some(variant) = env
            .get("LOOKOUT_VARIANT")
            .filter(|variant| !variant.is_empty())
        {
            self.vision.variant = variant.to_owned();
        }
        if let Some(library) = env.get("ORT_DYLIB_PATH").filter(|path| !path.is_empty()) {
            self.vision.runtime_library = Some(PathBuf::from(library));
        }
        if let Some(dir) = env.get("LOOKOUT_STATE_DIR").filter(|dir| !dir.is_empty()) {
            self.device.state_dir = PathBuf::from(dir);
        }
        if let Some(addr) = env.get("LOOKOUT_HTTP_ADDR") {
            // An empty value turns the endpoint off.
            self.http.enabled = !addr.is_empty();
            if !addr.is_empty() {
                self.http.addr = addr.to_owned();
            }
        }
        if self.device.id.is_empty() {
            self.device.id = hostname_as_device_id();
        }
        if self.device.state_dir.as_os_str().is_empty() {
            self.device.state_dir = default_state_dir(env);
        }
        if self.vision.compiled_dir.as_os_str().is_empty() {
            self.vision.compiled_dir = self.device.state_dir.join("compiled");
        }
    }

    fn validate(&self, problems: &mut Problems) {
        validate::topic_segment(problems, "device.id", &self.device.id);
        validate::seconds(
            problems,
            "device.shutdown_timeout_secs",
            self.device.shutdown_timeout_secs,
        );
        validate::seconds(
            problems,
            "device.stall_timeout_secs",
            self.device.stall_timeout_secs,
        );

        let mut camera_ids = std::collections::HashSet::new();
        for (index, camera) in self.cameras.iter().enumerate() {
            let path = format!("cameras[{index}]");
            camera.validate(&path, problems);
            if !camera_ids.insert(camera.id.as_str()) {
                problems.push(
                    format!("{path}.id"),
                    format!("duplicate camera id {:?}", camera.id),
                );
            }
        }
        let mut task_ids = std::collections::HashSet::new();
        for (index, task) in self.tasks.iter().enumerate() {
            let path = format!("tasks[{index}]");
            task.validate(&path, problems);
            if !task_ids.insert(task.id.as_str()) {
                problems.push(
                    format!("{path}.id"),
                    format!("duplicate task id {:?}", task.id),
                );
            }
            if !camera_ids.contains(task.camera.as_str()) {
                problems.push(
                    format!("{path}.camera"),
                    format!("no camera has id {:?}", task.camera),
                );
            }
        }
        self.mqtt.validate("mqtt", problems);
        self.vision.validate("vision", problems);
        self.escalation.validate("escalation", problems);
        // Ids that other sections name must exist (`ask` stands for on-demand asks).
        let task = |problems: &mut Problems, path: String, task: &str| {
            if task != crate::message::ASK_TASK && !task_ids.contains(task) {
                problems.push(
                    path,
                    format!(
                        "no task has id {task:?} (on-demand asks are {:?})",
                        crate::message::ASK_TASK
                    ),
                );
            }
        };
        let camera = |problems: &mut Problems, path: String, camera: &str| {
            if !camera_ids.contains(camera) {
                problems.push(path, format!("no camera has id {camera:?}"));
            }
        };
        for id in self.escalation.tasks.keys() {
            task(problems, format!("escalation.tasks.{id}"), id);
        }
        for id in self.escalation.cameras.keys() {
            camera(problems, format!("escalation.cameras.{id}"), id);
        }
        self.dataset.validate("dataset", problems);
        for (index, id) in self.dataset.tasks.iter().enumerate() {
            task(problems, format!("dataset.tasks[{index}]"), id);
        }
        for (index, id) in self.dataset.cameras.iter().enumerate() {
            camera(problems, format!("dataset.cameras[{index}]"), id);
        }
        self.outbox.validate("outbox", problems);
        self.http.validate("http", problems);
        self.home_assistant.validate("home_assistant", problems);
        self.remote.validate("remote", problems);
    }

    /// Where answers wait for the broker's acknowledgement.
    pub(crate) fn answers_outbox(&self) -> PathBuf {
        self.device.state_dir.join("answers.outbox")
    }

    /// Where the remote config layer is kept between runs.
    pub(crate) fn remote_layer_file(&self) -> PathBuf {
        self.device.state_dir.join("remote-config.json")
    }

    /// Where escalations wait while the cloud is unreachable.
    pub fn escalation_queue(&self) -> PathBuf {
        self.device.state_dir.join("escalations.outbox")
    }

    /// The escalation dataset's settings, its folder resolved (default `<state_dir>/dataset`).
    pub fn dataset_settings(&self) -> dataset::Settings {
        dataset::Settings {
            config: self.dataset.clone(),
            dir: (self.dataset.dir.clone())
                .unwrap_or_else(|| self.device.state_dir.join("dataset")),
        }
    }

    /// Which Home Assistant discovery topics the last run announced.
    pub(crate) fn discovery_file(&self) -> PathBuf {
        self.device.state_dir.join("home-assistant-discovery.json")
    }

    /// How long a unit of work may run before its stage counts as stuck.
    pub(crate) fn stall_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.device.stall_timeout_secs)
    }

    /// The graceful shutdown deadline.
    pub(crate) fn shutdown_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.device.shutdown_timeout_secs)
    }
}

/// The state directory when the config names none: systemd's `StateDirectory=` (`$STATE_DIRECTORY`),
/// else the XDG state home of the user running the daemon, else `/var/lib/lookout`.
fn default_state_dir(env: &Env) -> PathBuf {
    let systemd = env
        .get("STATE_DIRECTORY")
        .and_then(|dirs| dirs.split(':').next())
        .filter(|dir| !dir.is_empty());
    if let Some(dir) = systemd {
        return PathBuf::from(dir);
    }
    if let Some(home) = env.get("XDG_STATE_HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(home).join("lookout");
    }
    if let Some(home) = env.get("HOME").filter(|dir| !dir.is_empty() && *dir != "/") {
        return PathBuf::from(home).join(".local/state/lookout");
    }
    PathBuf::from("/var/lib/lookout")
}

/// Deserializes one section; a failure is recorded with its full field path and the default is kept so
/// that the other sections are still checked.
fn section<T: DeserializeOwned + Default>(
    value: toml::Value,
    path: &str,
    problems: &mut Problems,
) -> T {
    deserialize(value, path, problems).unwrap_or_default()
}

/// Deserializes an array of tables element by element, so that each bad element is reported.
fn list<T: DeserializeOwned>(value: toml::Value, path: &str, problems: &mut Problems) -> Vec<T> {
    let toml::Value::Array(items) = value else {
        problems.push(path, "expected an array of tables, e.g. [[cameras]]");
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(index, item)| deserialize(item, &format!("{path}[{index}]"), problems))
        .collect()
}

fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    problems: &mut Problems,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let inner = error.path().to_string();
            let full = if inner == "." {
                path.to_owned()
            } else {
                format!("{path}.{inner}")
            };
            problems.push(full, error.into_inner().message().to_owned());
            None
        }
    }
}

fn line_and_column(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
    format!("line {line}, column {column}")
}

/// The hostname, reduced to the characters a topic segment may hold.
fn hostname_as_device_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let id: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "lookout".to_owned()
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> Vec<String> {
        match Config::from_toml(text, &Env::default()) {
            Ok(_) => Vec::new(),
            Err(error) => error.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::from_toml(DEFAULT_TOML, &Env::default()).expect("default config");
        assert_eq!(config.cameras.len(), 1);
        assert_eq!(config.tasks.len(), 1);
        assert!(
            config.mqtt.url.is_none(),
            "the default uses the embedded broker"
        );
        assert!(!config.device.id.is_empty());
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
            bogus = 1
            [device]
            shutdown_timeout_secs = -1.0
            [[cameras]]
            id = "a"
            source = { kind = "synthetic", fps = -2.0 }
            [[cameras]]
            id = "a"
            source = { kind = "synthetic", colour = "red" }
            [[cameras]]
            id = "b"
            source = { kind = "files", path = "/nonexistent/lookout", fps = "fast" }
            [[tasks]]
            id = "t"
            camera = "missing"
            question = "What?"
            trigger = { kind = "interval", secs = -5.0 }
            [mqtt]
            keep_alive_secs = "soon"
        "#;
        let problems = problems_of(text);
        let joined = problems.join("\n");
        for expected in [
            "bogus: unknown section",
            "device.shutdown_timeout_secs:",
            "cameras[0].source.fps:",
            "cameras[1].source: unknown field `colour`",
            "cameras[2].source: invalid type: string \"fast\"",
            "tasks[0].camera: no camera has id \"missing\"",
            "tasks[0].trigger.secs:",
            "mqtt.keep_alive_secs: invalid type",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
    }

    #[test]
    fn the_decoder_settings_are_checked() {
        let problems = problems_of("[vision]\ngraphs = \"fast\"\n").join("\n");
        assert!(
            problems.contains(
                "vision.graphs: unknown variant `fast`, expected `lookout` or `official`"
            ),
            "{problems}"
        );
        let problems = problems_of("[vision]\nmax_context = 9000\n").join("\n");
        assert!(
            problems.contains(
                "vision.max_context: must be at most 8192 (0: sized from the tasks), not 9000"
            ),
            "{problems}"
        );
    }

    #[test]
    fn escalation_settings_are_checked_against_cameras_and_tasks() {
        let text = r#"
            [[cameras]]
            id = "cam"
            source = { kind = "synthetic" }
            [[tasks]]
            id = "t"
            camera = "cam"
            question = "What?"
            trigger = { kind = "interval", secs = 5.0 }
            [escalation]
            enabled = true
            threshold = 1.5
            duplicate_distance = 40
            endpoints = [{ name = "r", url = "ftp://host", model = "" }]
            [escalation.tasks.ghost]
            mode = "always"
            [escalation.tasks.ask]
            mode = "never"
            [escalation.cameras.attic]
            escalate = false
            [escalation.budget]
            per_hour = 9999999
        "#;
        let joined = problems_of(text).join("\n");
        for expected in [
            "escalation.threshold: must be 0 to 1, not 1.5",
            "escalation.duplicate_distance: must be at most 32",
            "escalation.endpoints[0].url: \"ftp://host\" is not an http(s) URL",
            "escalation.endpoints[0].model: must name a model",
            "escalation.tasks.ghost: no task has id \"ghost\"",
            "escalation.cameras.attic: no camera has id \"attic\"",
            "escalation.budget.per_hour: must be at most 1000000",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
        assert!(!joined.contains("escalation.tasks.ask"), "{joined}");
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let text = r#"
            [[cameras]]
            id = "a"
            source = { kind = "synthetic" }
            [[cameras]]
            id = "a"
            source = { kind = "synthetic" }
            [[tasks]]
            id = "t"
            camera = "a"
            question = "Q?"
            trigger = { kind = "on_demand" }
            [[tasks]]
            id = "t"
            camera = "a"
            question = "Q?"
            trigger = { kind = "on_demand" }
        "#;
        let joined = problems_of(text).join("\n");
        assert!(
            joined.contains("cameras[1].id: duplicate camera id"),
            "{joined}"
        );
        assert!(
            joined.contains("tasks[1].id: duplicate task id"),
            "{joined}"
        );
    }

    #[test]
    fn the_state_directory_follows_the_environment_then_the_platform() {
        let dir = |pairs: &[(&str, &str)]| {
            Config::from_toml(DEFAULT_TOML, &Env::from_pairs(pairs.iter().copied()))
                .unwrap()
                .device
                .state_dir
        };
        assert_eq!(
            dir(&[
                ("LOOKOUT_STATE_DIR", "/srv/l"),
                ("STATE_DIRECTORY", "/var/lib/lookout")
            ]),
            PathBuf::from("/srv/l")
        );
        assert_eq!(
            dir(&[
                ("STATE_DIRECTORY", "/var/lib/lookout:/var/lib/other"),
                ("HOME", "/root")
            ]),
            PathBuf::from("/var/lib/lookout")
        );
        assert_eq!(
            dir(&[("XDG_STATE_HOME", "/home/u/.state"), ("HOME", "/home/u")]),
            PathBuf::from("/home/u/.state/lookout")
        );
        assert_eq!(
            dir(&[("HOME", "/home/u")]),
            PathBuf::from("/home/u/.local/state/lookout")
        );
        assert_eq!(dir(&[]), PathBuf::from("/var/lib/lookout"));
    }

    #[test]
    fn outbox_and_window_bounds_are_checked() {
        let joined =
            problems_of("[outbox]\nmax_mb = 0.0\nmax_age_hours = -1.0\n[mqtt]\ninflight = 0\n")
                .join("\n");
        for path in ["outbox.max_mb", "outbox.max_age_hours", "mqtt.inflight"] {
            assert!(joined.contains(path), "{path} missing from {joined}");
        }
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let problems = problems_of("[device]\nid = \n");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("line 2, column"), "{problems:?}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = Env::from_pairs([
            ("LOOKOUT_MQTT_URL", "mqtt://user:secret@127.0.0.1:1999"),
            ("LOOKOUT_DEVICE_ID", "porch"),
            ("LOOKOUT_MODEL_DIR", "/opt/model"),
        ]);
        let config = Config::from_toml(DEFAULT_TOML, &env).unwrap();
        assert_eq!(
            config.mqtt.url.as_deref(),
            Some("mqtt://user:secret@127.0.0.1:1999")
        );
        assert_eq!(config.device.id, "porch");
        assert_eq!(config.vision.model_dir, PathBuf::from("/opt/model"));

        let bad = Env::from_pairs([
            ("LOOKOUT_DEVICE_ID", "a/b"),
            ("LOOKOUT_MQTT_URL", "ftp://x"),
        ]);
        let joined = match Config::from_toml(DEFAULT_TOML, &bad) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("bad environment accepted"),
        };
        assert!(joined.contains("device.id"), "{joined}");
        assert!(joined.contains("mqtt.url"), "{joined}");
    }

    #[test]
    fn an_empty_broker_url_in_the_environment_means_the_embedded_broker() {
        let text = "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";
        let config = Config::from_toml(text, &Env::from_pairs([("LOOKOUT_MQTT_URL", "")])).unwrap();
        assert!(config.mqtt.url.is_none());
    }
}
