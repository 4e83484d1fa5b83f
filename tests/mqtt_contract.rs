//! The MQTT contract against a real mosquitto: answers (QoS 1, not retained, full JSON), retained
//! `online` status, retained stats, asks (good, malformed, unknown camera, failing), and a graceful
//! shutdown that leaves a retained `offline` within the deadline.

mod common;

use std::time::Duration;

use common::{Daemon, Mosquitto, Subscriber, config_with};
use rumqttc::QoS;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_status_stats_and_asks_follow_the_contract() {
    let broker = Mosquitto::start();
    let config = config_with(
        "box1",
        &broker.url(),
        r#"
[[tasks]]
id = "describe"
camera = "cam"
question = "Describe what you see."
trigger = { kind = "interval", secs = 0.3 }

[[tasks]]
id = "lit"
camera = "cam"
question = "Is the light on?"
kind = "yes_no"
trigger = { kind = "interval", secs = 0.3 }

[[tasks]]
id = "broken"
camera = "cam"
question = "Please fail."
trigger = { kind = "interval", secs = 0.3 }
"#,
    );
    let mut answers = Subscriber::connect(
        broker.port,
        &["lookout/box1/+/+/answer", "lookout/box1/stats"],
    )
    .await;
    let daemon = Daemon::start(&config);

    // Answers: QoS 1, not retained, on <prefix>/<dev>/<camera>/<task>/answer, with the documented fields.
    let describe = answers
        .expect(WAIT, "a describe answer", |m| {
            m.topic == "lookout/box1/cam/describe/answer"
        })
        .await;
    assert_eq!(describe.qos, QoS::AtLeastOnce);
    assert!(!describe.retain);
    let json = describe.json();
    for field in [
        "id",
        "device",
        "camera",
        "task",
        "question",
        "answer",
        "confidence",
        "tier",
        "model",
        "escalated",
        "frame",
        "timings_ms",
        "tokens",
    ] {
        assert!(json.get(field).is_some(), "answer lacks {field}: {json}");
    }
    assert_eq!(json["device"], "box1");
    assert_eq!(json["camera"], "cam");
    assert_eq!(json["tier"], "local");
    assert_eq!(
        json["answer"].as_str().unwrap().split(" in ").nth(1),
        Some("64x48"),
        "{json}"
    );
    assert_eq!(json["frame"]["width"], 64);
    let id = uuid::Uuid::parse_str(json["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7, "answer ids are UUIDv7");
    let yes_no = answers
        .expect(WAIT, "a yes_no answer", |m| {
            m.topic == "lookout/box1/cam/lit/answer"
        })
        .await;
    assert!(["yes", "no"].contains(&yes_no.json()["answer"].as_str().unwrap()));

    // Retained status and stats, seen by a subscriber that arrives once stats have been published.
    answers
        .expect(WAIT, "stats", |m| m.topic == "lookout/box1/stats")
        .await;
    let mut late =
        Subscriber::connect(broker.port, &["lookout/box1/status", "lookout/box1/stats"]).await;
    let status = late
        .expect(WAIT, "retained status", |m| {
            m.topic == "lookout/box1/status"
        })
        .await;
    assert_eq!((status.text().as_str(), status.retain), ("online", true));
    // Stats are first published on connect, so even the first one a subscriber sees is truthful.
    let first_stats = late
        .expect(WAIT, "stats", |m| m.topic == "lookout/box1/stats")
        .await;
    assert_eq!(
        first_stats.json()["broker"]["connected"],
        true,
        "{}",
        first_stats.text()
    );
    assert!(first_stats.retain);
    // They are refreshed on the interval.
    let stats = late
        .expect(WAIT, "stats counting answers", |m| {
            m.topic == "lookout/box1/stats"
                && m.json()["answer_failures"].as_u64() > Some(0)
                && m.json()["broker"]["connected"] == true
        })
        .await;
    let stats = stats.json();
    assert!(stats["frames"]["captured"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["answers"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        stats["answer_failures"].as_u64().unwrap() > 0,
        "the failing task is counted: {stats}"
    );
    assert!(
        stats["broker"]["connects"].as_u64().unwrap() >= 1,
        "{stats}"
    );

    // Asks: a good one is answered with its id; bad ones get an error reply and change nothing.
    answers
        .publish(
            "lookout/box1/cam/ask",
            r#"{"id":"q-1","question":"Is it bright?","kind":"yes_no"}"#,
        )
        .await;
    let reply = answers
        .expect(WAIT, "the ask's answer", |m| {
            m.topic == "lookout/box1/cam/ask/answer" && m.json()["ask_id"] == "q-1"
        })
        .await;
    assert!(reply.json()["error"].is_null(), "{}", reply.text());
    assert_eq!(reply.json()["task"], "ask");

    answers
        .publish("lookout/box1/cam/ask", "this is not json")
        .await;
    let malformed = answers
        .expect(WAIT, "an error reply to a malformed ask", |m| {
            m.topic == "lookout/box1/cam/ask/answer" && m.json()["error"].is_string()
        })
        .await;
    assert!(
        malformed.json()["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{}",
        malformed.text()
    );

    answers
        .publish(
            "lookout/box1/garage/ask",
            r#"{"id":"q-2","question":"Anyone there?"}"#,
        )
        .await;
    let unknown = answers
        .expect(WAIT, "an error reply naming the unknown camera", |m| {
            m.topic == "lookout/box1/garage/ask/answer"
        })
        .await;
    assert_eq!(unknown.json()["ask_id"], "q-2");
    assert!(
        unknown.json()["error"].as_str().unwrap().contains("garage"),
        "{}",
        unknown.text()
    );

    answers
        .publish(
            "lookout/box1/cam/ask",
            r#"{"id":"q-3","question":"Please fail now"}"#,
        )
        .await;
    let failed = answers
        .expect(WAIT, "an error reply to a failed ask", |m| {
            m.topic == "lookout/box1/cam/ask/answer" && m.json()["ask_id"] == "q-3"
        })
        .await;
    assert!(
        failed.json()["error"]
            .as_str()
            .unwrap()
            .contains("asked to fail"),
        "{}",
        failed.text()
    );

    // After all that the daemon still answers.
    answers
        .expect(WAIT, "answers after bad asks", |m| {
            m.topic == "lookout/box1/cam/describe/answer"
        })
        .await;

    // Graceful shutdown: well within the 5 s deadline, leaving a retained offline.
    let took = daemon.shutdown().await;
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let mut after = Subscriber::connect(broker.port, &["lookout/box1/status"]).await;
    let status = after
        .expect(WAIT, "retained offline", |m| {
            m.topic == "lookout/box1/status"
        })
        .await;
    assert_eq!((status.text().as_str(), status.retain), ("offline", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_change_tasks_answer_only_when_the_picture_changes() {
    let broker = Mosquitto::start();
    let frames = tempfile::tempdir().unwrap();
    // Five identical grey frames, then five white ones, played once at 10 fps.
    for index in 0..10u8 {
        let level = if index < 5 { 90 } else { 250 };
        image::RgbImage::from_pixel(32, 32, image::Rgb([level, level, level]))
            .save(frames.path().join(format!("{index:02}.png")))
            .unwrap();
    }
    let config = format!(
        r#"
[device]
id = "box2"
[mqtt]
url = "{}"
[[cameras]]
id = "door"
source = {{ kind = "files", path = "{}", fps = 10.0 }}
[[tasks]]
id = "changed"
camera = "door"
question = "What changed?"
trigger = {{ kind = "on_change", threshold = 0.2, min_interval_secs = 0.01 }}
"#,
        broker.url(),
        frames.path().display()
    );
    let mut answers = Subscriber::connect(broker.port, &["lookout/box2/door/changed/answer"]).await;
    let daemon = Daemon::start(&config);
    let seen = answers.collect_for(Duration::from_secs(4)).await;
    let levels: Vec<String> = seen
        .iter()
        .map(|m| m.json()["answer"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        levels,
        vec!["mean level 90 in 32x32", "mean level 250 in 32x32"],
        "one look at the start, one at the change"
    );
    daemon.shutdown().await;
}
