//! Home Assistant MQTT discovery: each task becomes an entity of one Home Assistant device per box,
//! with no YAML on the Home Assistant side.
//!
//! A `yes_no` task is a `binary_sensor` (on for "yes"); a `one_of` task a `sensor` of device class
//! `enum` with its labels as options; a `text` task a plain `sensor` whose state is the answer cut to
//! Home Assistant's 255-character state limit. Every entity reads the task's retained state topic
//! (its latest answer, so a Home Assistant that starts late still shows it), takes the answer's
//! confidence, tier and time as attributes, and is available while `lookout/<dev>/status` says
//! `online`; an interval task's state expires after a few of its intervals, so a box that stopped
//! answering shows as unavailable rather than as a stale answer. An `on_demand` task also gets a
//! `button` whose press asks it. Discovery messages are retained, sent on every connect and again
//! whenever Home Assistant announces itself on `<prefix>/status` (it forgets entities when it restarts
//! without a persistent broker). A task that goes away, or discovery turned off, withdraws its entity
//! with an empty retained message; the topics announced are kept in the state directory so that a
//! task removed while the daemon was stopped is withdrawn at the next start (and so are the topics of
//! a version that named its entities differently).
//!
//! Object ids and unique ids join device, camera and task, which may themselves contain `_`; each id
//! is escaped (`_` and any other character outside letters, digits and `-` as `_` and two hex
//! digits) and the parts joined with `__`, which no escaped id contains, so two different tasks never
//! share a topic or a unique id, and simple ids stay readable (`lookout_box1__porch__person`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::message::{AnswerKind, TaskConfig, Trigger};
use crate::publish::Topics;
use crate::validate::{self, Problems};

/// The `[home_assistant]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    pub discovery: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting).
    pub prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            discovery: true,
            prefix: "homeassistant".to_owned(),
        }
    }
}

impl HomeAssistantConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        validate::topic_segment(problems, &format!("{path}.prefix"), &self.prefix);
    }

    /// Where Home Assistant says `online` when it starts.
    pub(crate) fn status_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }
}

/// Home Assistant's longest state; longer text answers are cut for the state and kept whole in MQTT.
const MAX_STATE_CHARS: usize = 255;
/// An interval task's state expires after this many intervals without an answer (one late answer,
/// or one merged into a later job under load, is no outage)...
const EXPIRE_AFTER_INTERVALS: f64 = 3.0;
/// ...and never sooner than this: a CPU answer takes seconds, and a restart tens of them.
const MIN_EXPIRE_AFTER_SECS: f64 = 60.0;

/// `id` as a part of an object or unique id: letters, digits and `-` as they are, anything else
/// (`_` included) as `_` and two hex digits per byte, so `__` can join parts unambiguously.
fn escape(id: &str) -> String {
    let mut escaped = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("_{byte:02x}"));
        }
    }
    escaped
}

/// The parts escaped and joined: distinct parts give distinct ids.
fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|part| escape(part))
        .collect::<Vec<_>>()
        .join("__")
}

/// The discovery messages for `tasks` (topic to payload), none when discovery is off.
pub(crate) fn announcements(
    config: &HomeAssistantConfig,
    topics: &Topics,
    device: &str,
    model: &str,
    tasks: &[TaskConfig],
) -> BTreeMap<String, Vec<u8>> {
    if !config.discovery {
        return BTreeMap::new();
    }
    let node = format!("lookout_{}", escape(device));
    let object = |task: &TaskConfig| join(&[&task.camera, &task.id]);
    let mut messages = BTreeMap::new();
    for task in tasks {
        let (component, payload) = entity(topics, device, model, task);
        messages.insert(
            format!(
                "{}/{component}/{node}/{}/config",
                config.prefix,
                object(task)
            ),
            payload.to_string().into_bytes(),
        );
        if task.trigger == Trigger::OnDemand {
            messages.insert(
                format!("{}/button/{node}/{}/config", config.prefix, object(task)),
                button(topics, device, model, task).to_string().into_bytes(),
            );
        }
    }
    messages
}

/// What every entity of the box says about its device, origin and availability.
fn common(topics: &Topics, device: &str, model: &str) -> Value {
    json!({
        "availability_topic": topics.status(),
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "device": {
            "identifiers": [format!("lookout_{device}")],
            "name": format!("Lookout {device}"),
            "manufacturer": "Lookout",
            "model": model,
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
        "origin": {
            "name": "Lookout",
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
    })
}

/// The button that asks an `on_demand` task: its press is an ask naming the task.
fn button(topics: &Topics, device: &str, model: &str, task: &TaskConfig) -> Value {
    let mut payload = common(topics, device, model);
    let fields = payload.as_object_mut().expect("an object");
    fields.insert(
        "name".into(),
        format!("Ask {} {}", task.camera, task.id).into(),
    );
    fields.insert(
        "unique_id".into(),
        format!("lookout_{}__ask", join(&[device, &task.camera, &task.id])).into(),
    );
    fields.insert("command_topic".into(), topics.ask(&task.camera).into());
    fields.insert(
        "payload_press".into(),
        json!({ "task": task.id }).to_string().into(),
    );
    fields.insert("icon".into(), "mdi:eye-check".into());
    payload
}

/// The component and discovery payload of one task's entity.
fn entity(topics: &Topics, device: &str, model: &str, task: &TaskConfig) -> (&'static str, Value) {
    let mut payload = common(topics, device, model);
    let fields = payload.as_object_mut().expect("an object");
    let state = topics.state(&task.camera, &task.id);
    let specific = json!({
        "name": format!("{} {}", task.camera, task.id),
        "unique_id": format!("lookout_{}", join(&[device, &task.camera, &task.id])),
        "state_topic": state,
        "json_attributes_topic": state,
        "json_attributes_template": "{{ {'question': value_json.question, 'confidence': value_json.confidence, 'tier': value_json.tier, 'captured_at': value_json.frame.captured_at, 'id': value_json.id} | tojson }}",
        "icon": "mdi:cctv",
    });
    fields.extend(specific.as_object().expect("an object").clone());
    if let Trigger::Interval { secs } = task.trigger {
        let expire = (secs * EXPIRE_AFTER_INTERVALS)
            .max(MIN_EXPIRE_AFTER_SECS)
            .ceil();
        fields.insert("expire_after".into(), (expire as u64).into());
    }
    let component = match &task.kind {
        AnswerKind::YesNo => {
            fields.insert("value_template".into(), "{{ value_json.answer }}".into());
            fields.insert("payload_on".into(), "yes".into());
            fields.insert("payload_off".into(), "no".into());
            "binary_sensor"
        }
        AnswerKind::OneOf(labels) => {
            fields.insert("value_template".into(), "{{ value_json.answer }}".into());
            fields.insert("device_class".into(), "enum".into());
            fields.insert("options".into(), json!(labels));
            "sensor"
        }
        AnswerKind::Text => {
            fields.insert(
                "value_template".into(),
                format!("{{{{ value_json.answer[:{MAX_STATE_CHARS}] }}}}").into(),
            );
            "sensor"
        }
    };
    (component, payload)
}

/// The discovery topics announced by an earlier run; none when the file is missing or unreadable
/// (then nothing is withdrawn that this run does not withdraw itself).
pub(crate) fn load_announced(path: &Path) -> BTreeSet<String> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Records the topics announced now, for the next start.
pub(crate) fn save_announced(path: &Path, announced: &BTreeSet<String>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(announced).expect("a set of strings serializes");
    crate::durable::write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Trigger;

    fn task(id: &str, kind: AnswerKind) -> TaskConfig {
        TaskConfig {
            id: id.to_owned(),
            camera: "porch".to_owned(),
            question: "?".to_owned(),
            kind,
            trigger: Trigger::OnDemand,
            split: false,
            max_new_tokens: 8,
            clip: None,
        }
    }

    #[test]
    fn ids_that_join_alike_get_distinct_topics_and_unique_ids() {
        let config = HomeAssistantConfig::default();
        let on = |device: &str, camera: &str, id: &str| {
            let task = TaskConfig {
                camera: camera.to_owned(),
                ..task(id, AnswerKind::YesNo)
            };
            let topics = Topics::new("lookout", device);
            let messages = announcements(&config, &topics, device, "m", &[task]);
            let (topic, payload) = messages
                .into_iter()
                .find(|(topic, _)| topic.contains("/binary_sensor/"))
                .unwrap();
            let payload: Value = serde_json::from_slice(&payload).unwrap();
            (topic, payload["unique_id"].as_str().unwrap().to_owned())
        };
        let alike = [
            [on("d", "a", "b_c"), on("d", "a_b", "c")],
            [on("x_y", "z", "t"), on("x", "y_z", "t")],
            [on("d", "a_", "b"), on("d", "a", "_b")],
        ];
        for [one, other] in alike {
            assert_ne!(one.0, other.0);
            assert_ne!(one.1, other.1);
        }
        assert_eq!(
            on("box1", "porch", "person"),
            (
                "homeassistant/binary_sensor/lookout_box1/porch__person/config".to_owned(),
                "lookout_box1__porch__person".to_owned()
            ),
            "simple ids stay readable"
        );
    }

    #[test]
    fn each_kind_becomes_its_component_and_discovery_off_announces_nothing() {
        let topics = Topics::new("lookout", "box1");
        let tasks = [
            task("person", AnswerKind::YesNo),
            task("describe", AnswerKind::Text),
            task(
                "weather",
                AnswerKind::OneOf(vec!["sun".into(), "rain".into()]),
            ),
        ];
        let config = HomeAssistantConfig::default();
        let messages = announcements(&config, &topics, "box1", "m", &tasks);
        let topics: Vec<&str> = messages.keys().map(String::as_str).collect();
        // On-demand tasks (all of these) also get a button.
        assert_eq!(
            topics,
            [
                "homeassistant/binary_sensor/lookout_box1/porch__person/config",
                "homeassistant/button/lookout_box1/porch__describe/config",
                "homeassistant/button/lookout_box1/porch__person/config",
                "homeassistant/button/lookout_box1/porch__weather/config",
                "homeassistant/sensor/lookout_box1/porch__describe/config",
                "homeassistant/sensor/lookout_box1/porch__weather/config",
            ]
        );
        let weather: Value = serde_json::from_slice(
            &messages["homeassistant/sensor/lookout_box1/porch__weather/config"],
        )
        .unwrap();
        assert_eq!(weather["options"], json!(["sun", "rain"]));
        assert_eq!(weather["state_topic"], "lookout/box1/porch/weather/state");
        assert!(
            weather.get("expire_after").is_none(),
            "on demand: no expiry"
        );
        let interval = TaskConfig {
            trigger: Trigger::Interval { secs: 30.0 },
            ..task("person", AnswerKind::YesNo)
        };
        let messages = announcements(
            &config,
            &Topics::new("lookout", "box1"),
            "box1",
            "m",
            &[interval],
        );
        assert_eq!(messages.len(), 1, "no button for a task that asks itself");
        let person: Value = serde_json::from_slice(messages.values().next().unwrap()).unwrap();
        assert_eq!(person["expire_after"], 90);
        let off = HomeAssistantConfig {
            discovery: false,
            ..config
        };
        assert!(
            announcements(&off, &Topics::new("lookout", "box1"), "box1", "m", &tasks).is_empty()
        );
    }
}
