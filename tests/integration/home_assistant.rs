//! Home Assistant MQTT discovery against a real mosquitto: one entity per task, each payload checked
//! against the configuration variables Home Assistant documents for `sensor` and `binary_sensor`
//! (tests/data/home_assistant_discovery_schema.json); sent again when Home Assistant announces itself;
//! withdrawn with an empty retained message when its task goes away, while running or between runs.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Daemon, Mosquitto, PixelAnalyser, Subscriber, Toml, config_with};
use rumqttc::QoS;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const PERSON: &str = "homeassistant/binary_sensor/lookout_ha1/cam__person/config";
const DESCRIBE: &str = "homeassistant/sensor/lookout_ha1/cam__describe/config";
const WEATHER: &str = "homeassistant/sensor/lookout_ha1/cam__weather/config";
const ASK_DESCRIBE: &str = "homeassistant/button/lookout_ha1/cam__describe/config";
const ASK_WEATHER: &str = "homeassistant/button/lookout_ha1/cam__weather/config";

fn person_task() -> String {
    Toml::default()
        .task("person", "cam", "Is anyone there?")
        .kind("yes_no")
        .interval(0.3)
        .to_string()
}

fn describe_task() -> String {
    Toml::default()
        .task("describe", "cam", "Describe what you see.")
        .on_demand()
        .to_string()
}

fn weather_task() -> String {
    Toml::default()
        .task("weather", "cam", "What is the weather?")
        .key("kind", r#"{ one_of = ["sun", "rain", "snow"] }"#)
        .on_demand()
        .to_string()
}

fn schema() -> Value {
    serde_json::from_str(include_str!("../data/home_assistant_discovery_schema.json")).unwrap()
}

fn check_type(path: &str, value: &Value, kind: &str, schema: &Value) {
    match kind {
        "string" | "template" => assert!(value.is_string(), "{path} must be a string: {value}"),
        "integer" => assert!(value.is_u64(), "{path} must be an integer: {value}"),
        "boolean" => assert!(value.is_boolean(), "{path} must be a boolean: {value}"),
        "list" => assert!(
            value.as_array().is_some_and(|items| !items.is_empty()),
            "{path} must be a non-empty list: {value}"
        ),
        "device" | "origin" => {
            let fields = value
                .as_object()
                .unwrap_or_else(|| panic!("{path} must be a map"));
            for (key, item) in fields {
                let item_kind = schema[kind][key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{path}.{key} is not documented"));
                check_type(&format!("{path}.{key}"), item, item_kind, schema);
            }
        }
        other => panic!("unknown type {other} in the schema"),
    }
}

/// Checks one discovery message against the documented schema for its component.
fn check_discovery(topic: &str, payload: &Value, schema: &Value) {
    let parts: Vec<&str> = topic.split('/').collect();
    assert_eq!(parts.len(), 5, "{topic}");
    assert_eq!(parts[4], "config");
    for id in [parts[2], parts[3]] {
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{topic}: {id} is not a valid node or object id"
        );
    }
    let component = &schema["components"][parts[1]];
    assert!(
        component.is_object(),
        "{topic}: not a sensor, binary_sensor or button"
    );
    let fields = payload.as_object().expect("a JSON object");
    for required in component["required"].as_array().unwrap() {
        let required = required.as_str().unwrap();
        assert!(fields.contains_key(required), "{topic}: no {required}");
    }
    for (key, value) in fields {
        let kind = schema["common"][key]
            .as_str()
            .or_else(|| component["optional"][key].as_str())
            .unwrap_or_else(|| panic!("{topic}: {key} is not a documented variable"));
        check_type(key, value, kind, schema);
    }
    assert!(
        !(fields.contains_key("availability") && fields.contains_key("availability_topic")),
        "availability and availability_topic exclude each other"
    );
    assert!(payload["qos"].as_u64().unwrap() <= 2);
    assert!(
        payload["device"]["identifiers"].is_array() || payload["device"]["connections"].is_array()
    );
    assert!(payload["origin"]["name"].is_string());
    match (parts[1], payload["device_class"].as_str()) {
        ("sensor", Some("enum")) => {
            assert!(
                payload["options"].is_array(),
                "an enum sensor lists its options"
            );
            assert!(payload.get("unit_of_measurement").is_none());
            assert!(payload.get("state_class").is_none());
        }
        ("sensor", None) => assert!(payload.get("options").is_none()),
        ("binary_sensor", Some(class)) => assert!(
            schema["binary_sensor_device_classes"]
                .as_array()
                .unwrap()
                .contains(&Value::from(class)),
            "{class} is not a binary_sensor device class"
        ),
        ("binary_sensor" | "button", None) => {}
        (component, class) => panic!("{component} with device class {class:?}"),
    }
}

/// The latest discovery message per topic seen within `window` (an empty payload: withdrawn).
async fn discovery_within(
    subscriber: &mut Subscriber,
    window: Duration,
) -> BTreeMap<String, Vec<u8>> {
    subscriber
        .collect_for(window)
        .await
        .into_iter()
        .filter(|message| message.topic.ends_with("/config"))
        .map(|message| (message.topic, message.payload))
        .collect()
}

/// Waits until `count` discovery topics have arrived (retained or live), returning them.
async fn expect_discovery(subscriber: &mut Subscriber, count: usize) -> BTreeMap<String, Vec<u8>> {
    let mut seen = BTreeMap::new();
    while seen.len() < count {
        let message = subscriber
            .expect(WAIT, "a discovery message", |message| {
                message.topic.starts_with("homeassistant/") && message.topic.ends_with("/config")
            })
            .await;
        seen.insert(message.topic, message.payload);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_is_announced_by_the_documented_schema_and_withdrawn_when_it_goes() {
    let broker = Mosquitto::start();
    let schema = schema();
    let state = tempfile::tempdir().unwrap();
    let tasks = format!("{}{}{}", person_task(), describe_task(), weather_task());
    let config = config_with("ha1", &broker.url(), &tasks);
    let daemon = Daemon::start_in(
        state.path(),
        &config,
        PixelAnalyser::boxed(),
        tempfile::tempdir().unwrap(),
    );

    let mut home_assistant = Subscriber::connect(
        broker.port,
        &["homeassistant/#", "lookout/ha1/cam/person/state"],
    )
    .await;
    let announced = expect_discovery(&mut home_assistant, 5).await;
    assert_eq!(
        announced.keys().map(String::as_str).collect::<Vec<_>>(),
        [PERSON, ASK_DESCRIBE, ASK_WEATHER, DESCRIBE, WEATHER]
    );
    for (topic, payload) in &announced {
        let payload: Value = serde_json::from_slice(payload).unwrap();
        check_discovery(topic, &payload, &schema);
        assert_eq!(payload["availability_topic"], "lookout/ha1/status");
        assert_eq!(payload["device"]["identifiers"][0], "lookout_ha1");
    }
    let person: Value = serde_json::from_slice(&announced[PERSON]).unwrap();
    let weather: Value = serde_json::from_slice(&announced[WEATHER]).unwrap();
    let describe: Value = serde_json::from_slice(&announced[DESCRIBE]).unwrap();
    assert_eq!(
        weather["options"],
        serde_json::json!(["sun", "rain", "snow"])
    );
    assert_eq!(weather["device_class"], "enum");
    assert_eq!(
        describe["value_template"], "{{ value_json.answer[:255] }}",
        "text states are cut to Home Assistant's 255 characters"
    );
    // The entity reads real answers: they arrive on its state topic and match its on/off payloads;
    // availability follows the retained status.
    let answer = home_assistant
        .expect(WAIT, "a person answer", |message| {
            message.topic == person["state_topic"].as_str().unwrap()
        })
        .await
        .json();
    assert!(
        [&person["payload_on"], &person["payload_off"]].contains(&&answer["answer"]),
        "{answer}"
    );
    let mut status = Subscriber::connect(broker.port, &["lookout/ha1/status"]).await;
    let online = status
        .expect(WAIT, "the status", |message| {
            message.topic == "lookout/ha1/status"
        })
        .await;
    assert_eq!(
        online.payload,
        person["payload_available"].as_str().unwrap().as_bytes()
    );

    // Anything but `online` on Home Assistant's status topic announces nothing.
    for payload in ["offline", "", "ONLINE", "online\n"] {
        home_assistant
            .publish("homeassistant/status", payload)
            .await;
    }
    let quiet = discovery_within(&mut home_assistant, Duration::from_secs(1)).await;
    assert!(
        quiet.is_empty(),
        "announced on a status that is not online: {quiet:?}"
    );

    // Home Assistant restarts and says so: every entity is announced again.
    home_assistant
        .publish("homeassistant/status", "online")
        .await;
    let again = expect_discovery(&mut home_assistant, 5).await;
    assert_eq!(again, announced);

    // A task goes away: its entity is withdrawn, the others stay.
    daemon
        .reload(&config_with(
            "ha1",
            &broker.url(),
            &format!("{}{}", person_task(), describe_task()),
        ))
        .await;
    home_assistant
        .expect(WAIT, "the weather entity withdrawn", |message| {
            message.topic == WEATHER && message.payload.is_empty()
        })
        .await;
    let mut fresh = Subscriber::connect(broker.port, &["homeassistant/#"]).await;
    let retained = discovery_within(&mut fresh, Duration::from_secs(1)).await;
    assert_eq!(
        retained.keys().map(String::as_str).collect::<Vec<_>>(),
        [PERSON, ASK_DESCRIBE, DESCRIBE]
    );
    daemon.shutdown().await;

    // Between runs the describe task is removed from the file: the next start withdraws it.
    let config = config_with("ha1", &broker.url(), &person_task());
    let daemon = Daemon::start_in(
        state.path(),
        &config,
        PixelAnalyser::boxed(),
        tempfile::tempdir().unwrap(),
    );
    fresh
        .expect(WAIT, "the describe entity withdrawn at start", |message| {
            message.topic == DESCRIBE && message.payload.is_empty()
        })
        .await;
    let mut later = Subscriber::connect(broker.port, &["homeassistant/#"]).await;
    let retained = discovery_within(&mut later, Duration::from_secs(1)).await;
    assert_eq!(
        retained.keys().map(String::as_str).collect::<Vec<_>>(),
        [PERSON]
    );

    // Discovery turned off: the last entity goes too.
    daemon
        .reload(&format!("{config}\n[home_assistant]\ndiscovery = false\n"))
        .await;
    later
        .expect(WAIT, "the person entity withdrawn", |message| {
            message.topic == PERSON && message.payload.is_empty()
        })
        .await;
    daemon.shutdown().await;
}

/// Issue 26, read as Home Assistant reads it: ids that join alike (camera `a` + task `b_c`, camera
/// `a_b` + task `c`) get distinct topics and unique ids; the entity a previous version announced
/// under the old joined ids is withdrawn at start; a subscriber that arrives after an answer gets the
/// entity's latest state (retained); an interval task's state expires; an on-demand task's button
/// press asks that task and its answer updates the entity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_distinct_keep_their_latest_state_and_buttons_ask_their_task() {
    let broker = Mosquitto::start();
    let schema = schema();
    let state = tempfile::tempdir().unwrap();
    // What the previous version announced: the entity under `a_b_c`, on disk and retained.
    const OLD: &str = "homeassistant/binary_sensor/lookout_ha3/a_b_c/config";
    std::fs::write(
        state.path().join("home-assistant-discovery.json"),
        serde_json::to_vec(&[OLD]).unwrap(),
    )
    .unwrap();
    let config = Toml::device("ha3")
        .key("shutdown_timeout_secs", "5.0")
        .mqtt(&broker.url())
        .key("keep_alive_secs", 5)
        .camera("a", 64, 48, 20.0)
        .camera("a_b", 64, 48, 20.0)
        .task("b_c", "a", "Is anyone there?")
        .kind("yes_no")
        .interval(0.3)
        .task("c", "a_b", "What is the weather?")
        .key("kind", r#"{ one_of = ["sun", "rain", "snow"] }"#)
        .on_demand()
        .to_string();
    let mut home_assistant = Subscriber::connect(broker.port, &["homeassistant/#"]).await;
    home_assistant
        .client
        .publish(OLD, QoS::AtLeastOnce, true, r#"{"state_topic":"x"}"#)
        .await
        .unwrap();
    home_assistant
        .expect(WAIT, "the old entity", |message| message.topic == OLD)
        .await;
    let daemon = Daemon::start_in(
        state.path(),
        &config,
        PixelAnalyser::boxed(),
        tempfile::tempdir().unwrap(),
    );
    // Three entities and the old one's withdrawal.
    let seen = expect_discovery(&mut home_assistant, 4).await;
    assert_eq!(seen[OLD], b"", "the old entity is withdrawn");
    let announced: BTreeMap<String, Value> = seen
        .into_iter()
        .filter(|(_, payload)| !payload.is_empty())
        .map(|(topic, payload)| (topic, serde_json::from_slice(&payload).unwrap()))
        .collect();
    let entity = |component: &str| {
        announced
            .iter()
            .find(|(topic, _)| topic.split('/').nth(1) == Some(component))
            .unwrap_or_else(|| panic!("no {component} in {announced:?}"))
            .1
    };
    let (person, weather, button) = (entity("binary_sensor"), entity("sensor"), entity("button"));
    for (topic, payload) in &announced {
        check_discovery(topic, payload, &schema);
    }
    let topics: std::collections::BTreeSet<_> = announced
        .keys()
        .map(|topic| topic.split('/').nth(3).unwrap())
        .collect();
    assert!(topics.len() >= 2, "object ids collide: {announced:?}");
    assert_ne!(person["unique_id"], weather["unique_id"]);
    assert_ne!(weather["unique_id"], button["unique_id"]);
    assert_eq!(
        person["expire_after"], 60,
        "an interval task's state expires"
    );
    assert!(weather.get("expire_after").is_none(), "{weather}");

    // Home Assistant comes late: the entity's latest answer is waiting for it, retained.
    let mut answers = Subscriber::connect(broker.port, &["lookout/ha3/a/b_c/answer"]).await;
    answers.expect(WAIT, "an answer of a/b_c", |_| true).await;
    let mut late =
        Subscriber::connect(broker.port, &[person["state_topic"].as_str().unwrap()]).await;
    let latest = late
        .expect(WAIT, "the retained state", |message| message.retain)
        .await
        .json();
    assert_eq!(latest["camera"], "a");
    assert_eq!(latest["task"], "b_c");
    assert!(
        [&person["payload_on"], &person["payload_off"]].contains(&&latest["answer"]),
        "{latest}"
    );

    // The button asks its on-demand task; the answer updates the entity.
    let mut weather_state =
        Subscriber::connect(broker.port, &[weather["state_topic"].as_str().unwrap()]).await;
    home_assistant
        .publish(
            button["command_topic"].as_str().unwrap(),
            button["payload_press"].as_str().unwrap(),
        )
        .await;
    let pressed = weather_state
        .expect(WAIT, "the weather entity's state", |_| true)
        .await
        .json();
    assert_eq!(pressed["camera"], "a_b");
    assert_eq!(pressed["task"], "c");
    assert!(
        weather["options"]
            .as_array()
            .unwrap()
            .contains(&pressed["answer"]),
        "{pressed}"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_bad_discovery_prefix_is_refused_with_its_path() {
    let config = config_with(
        "ha2",
        "mqtt://127.0.0.1:1",
        "[home_assistant]\nprefix = \"home/assistant\"\n",
    );
    let error = lookout::config::Config::from_toml(&config, &lookout::env::Env::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("home_assistant.prefix"), "{error}");
}
