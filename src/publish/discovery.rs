//! Home Assistant MQTT discovery: each task becomes an entity of one Home Assistant device per box,
//! with no YAML on the Home Assistant side.
//!
//! A `yes_no` task is a `binary_sensor` (on for "yes"); a `one_of` task a `sensor` of device class
//! `enum` with its labels as options; a `text` task a plain `sensor` whose state is the answer cut to
//! Home Assistant's 255-character state limit. Every entity reads the task's answer topic, takes the
//! answer's confidence, tier and time as attributes, and is available while `lookout/<dev>/status`
//! says `online`. Discovery messages are retained, sent on every connect and again whenever Home
//! Assistant announces itself on `<prefix>/status` (it forgets entities when it restarts without a
//! persistent broker). A task that goes away, or discovery turned off, withdraws its entity with an
//! empty retained message; the topics announced are kept in the state directory so that a task
//! removed while the daemon was stopped is withdrawn at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Problems, validate};
use crate::gate::{AnswerKind, TaskConfig};
use crate::publish::Topics;

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
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }
}

/// Home Assistant's longest state; longer text answers are cut for the state and kept whole in MQTT.
const MAX_STATE_CHARS: usize = 255;

/// The discovery messages for `tasks` (topic to payload), none when discovery is off.
pub fn announcements(
    config: &HomeAssistantConfig,
    topics: &Topics,
    device: &str,
    model: &str,
    tasks: &[TaskConfig],
) -> BTreeMap<String, Vec<u8>> {
    if !config.discovery {
        return BTreeMap::new();
    }
    tasks
        .iter()
        .map(|task| {
            let (component, payload) = entity(topics, device, model, task);
            let topic = format!(
                "{}/{component}/lookout_{device}/{}_{}/config",
                config.prefix, task.camera, task.id
            );
            (topic, payload.to_string().into_bytes())
        })
        .collect()
}

/// The component and discovery payload of one task's entity.
fn entity(topics: &Topics, device: &str, model: &str, task: &TaskConfig) -> (&'static str, Value) {
    let mut payload = json!({
        "name": format!("{} {}", task.camera, task.id),
        "unique_id": format!("lookout_{device}_{}_{}", task.camera, task.id),
        "state_topic": topics.answer(&task.camera, &task.id),
        "json_attributes_topic": topics.answer(&task.camera, &task.id),
        "json_attributes_template": "{{ {'question': value_json.question, 'confidence': value_json.confidence, 'tier': value_json.tier, 'captured_at': value_json.frame.captured_at, 'id': value_json.id} | tojson }}",
        "availability_topic": topics.status(),
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "icon": "mdi:cctv",
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
    });
    let fields = payload.as_object_mut().expect("an object");
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
pub fn load_announced(path: &Path) -> BTreeSet<String> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Records the topics announced now, for the next start.
pub fn save_announced(path: &Path, announced: &BTreeSet<String>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(announced).expect("a set of strings serializes");
    crate::durable::write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Trigger;

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
        assert_eq!(
            topics,
            [
                "homeassistant/binary_sensor/lookout_box1/porch_person/config",
                "homeassistant/sensor/lookout_box1/porch_describe/config",
                "homeassistant/sensor/lookout_box1/porch_weather/config",
            ]
        );
        let weather: Value = serde_json::from_slice(
            &messages["homeassistant/sensor/lookout_box1/porch_weather/config"],
        )
        .unwrap();
        assert_eq!(weather["options"], json!(["sun", "rain"]));
        assert_eq!(weather["state_topic"], "lookout/box1/porch/weather/answer");
        let off = HomeAssistantConfig {
            discovery: false,
            ..config
        };
        assert!(
            announcements(&off, &Topics::new("lookout", "box1"), "box1", "m", &tasks).is_empty()
        );
    }
}
