//! The MQTT contract against a real mosquitto: answers (QoS 1, not retained, full JSON), retained
//! `online` status, retained stats, asks (good, malformed, unknown camera, failing, refused with their
//! id, naming a task), the stats' ask and publish counts, a graceful shutdown that leaves a retained
//! `offline` within the deadline, and the log line per answer of a real `lookout run`.

use crate::common;

use std::time::Duration;

use common::{Daemon, Mosquitto, Subscriber, Toml};
use rumqttc::QoS;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_status_stats_and_asks_follow_the_contract() {
    let broker = Mosquitto::start();
    let config = common::standard("box1", &broker.url())
        .task("describe", "cam", "Describe what you see.")
        .interval(0.3)
        .task("lit", "cam", "Is the light on?")
        .kind("yes_no")
        .interval(0.3)
        .task("broken", "cam", "Please fail.")
        .interval(0.3)
        .to_string();
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
        "runs_on",
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
    let config = Toml::device("box2")
        .mqtt(&broker.url())
        .section("[[cameras]]")
        .string("id", "door")
        .key(
            "source",
            format!(
                r#"{{ kind = "files", path = "{}", fps = 10.0 }}"#,
                frames.path().display()
            ),
        )
        .task("changed", "door", "What changed?")
        .key(
            "trigger",
            r#"{ kind = "on_change", threshold = 0.2, min_interval_secs = 0.01 }"#,
        )
        .to_string();
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

/// Issue 26: an ask refused for what it says (empty or over-long question, `one_of` with one label,
/// an unknown field or kind, an unknown task) is answered with its `ask_id` whenever the id can be
/// read; an ask may name a configured task, whose answer goes to that task's topic; the stats count
/// every ask received, refused ones included, and `published` every message the broker acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_asks_carry_their_id_tasks_can_be_asked_and_stats_count_what_they_say() {
    let broker = Mosquitto::start();
    let config = common::standard("box3", &broker.url())
        .task("manual", "cam", "Is the light on?")
        .kind("yes_no")
        .on_demand()
        .to_string();
    let mut answers = Subscriber::connect(
        broker.port,
        &["lookout/box3/+/+/answer", "lookout/box3/stats"],
    )
    .await;
    let daemon = Daemon::start(&config);
    answers
        .expect(WAIT, "the first stats", |m| m.topic == "lookout/box3/stats")
        .await;

    let long = "x".repeat(lookout::message::MAX_QUESTION_CHARS + 1);
    let refused = [
        (
            "empty",
            r#"{"id":"empty","question":"  "}"#.to_owned(),
            "empty",
        ),
        (
            "long",
            format!(r#"{{"id":"long","question":"{long}"}}"#),
            "characters",
        ),
        (
            "one-label",
            r#"{"id":"one-label","question":"q","kind":{"one_of":["a"]}}"#.to_owned(),
            "two labels",
        ),
        (
            "extra-field",
            r#"{"id":"extra-field","question":"q","colour":"red"}"#.to_owned(),
            "colour",
        ),
        (
            "bad-kind",
            r#"{"id":"bad-kind","question":"q","kind":"maybe"}"#.to_owned(),
            "maybe",
        ),
        (
            "no-task",
            r#"{"id":"no-task","task":"nope"}"#.to_owned(),
            "nope",
        ),
    ];
    for (id, payload, reason) in &refused {
        answers
            .publish("lookout/box3/cam/ask", payload.as_str())
            .await;
        let reply = answers
            .expect(WAIT, &format!("the error reply to {id}"), |m| {
                m.topic == "lookout/box3/cam/ask/answer"
            })
            .await
            .json();
        assert_eq!(reply["ask_id"], *id, "{reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(reason), "{id}: {error}");
    }
    // Without a readable id there is none to give.
    answers.publish("lookout/box3/cam/ask", "not json").await;
    let reply = answers
        .expect(WAIT, "the error reply to not json", |m| {
            m.topic == "lookout/box3/cam/ask/answer"
        })
        .await
        .json();
    assert!(reply["ask_id"].is_null(), "{reply}");

    // A configured task, asked by name: answered on its own topic, with the ask's id.
    answers
        .publish("lookout/box3/cam/ask", r#"{"id":"t-1","task":"manual"}"#)
        .await;
    let answer = answers
        .expect(WAIT, "the task's answer", |m| {
            m.topic == "lookout/box3/cam/manual/answer"
        })
        .await
        .json();
    assert_eq!(answer["ask_id"], "t-1", "{answer}");
    assert_eq!(answer["task"], "manual");
    assert_eq!(answer["question"], "Is the light on?");
    assert!(["yes", "no"].contains(&answer["answer"].as_str().unwrap()));

    // 8 asks received, 7 refused; 8 messages acknowledged (7 error replies and 1 answer).
    let stats = answers
        .expect(WAIT, "stats counting every ask", |m| {
            m.topic == "lookout/box3/stats" && m.json()["published"].as_u64() >= Some(8)
        })
        .await
        .json();
    assert_eq!(stats["asks"]["received"], 8, "{stats}");
    assert_eq!(stats["asks"]["rejected"], 7, "{stats}");
    assert_eq!(stats["published"], 8, "{stats}");
    daemon.shutdown().await;
}

/// Issue 26: a real `lookout run` under the default log filter logs each answer it publishes as one
/// INFO line of fields; `mqtt.log_answers = false` turns the lines off on reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_logs_each_answer_until_a_reload_turns_it_off() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = |log_answers: bool| {
        Toml::device("logged")
            .key("shutdown_timeout_secs", "5.0")
            .mqtt(&broker.url())
            .key("log_answers", log_answers)
            .camera("cam", 64, 48, 10.0)
            .task("describe", "cam", "Describe what you see.")
            .interval(0.2)
            .key("max_new_tokens", 4)
            .to_string()
    };
    let path = dir.path().join("lookout.toml");
    std::fs::write(&path, config(true)).unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro");
    let mut answers = Subscriber::connect(
        broker.port,
        &[
            "lookout/logged/cam/describe/answer",
            "lookout/logged/config/reported",
        ],
    )
    .await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["run", "--config", path.to_str().unwrap()])
        .env("LOOKOUT_STATE_DIR", dir.path().join("state"))
        .env("LOOKOUT_MODEL_DIR", &fixture)
        .env_remove("LOOKOUT_LOG")
        .env_remove("RUST_LOG")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let answered_lines = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .filter(|line| line.contains("Answered."))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    for _ in 0..2 {
        answers
            .expect(WAIT, "an answer", |m| m.topic.ends_with("/answer"))
            .await;
    }
    // The publisher logs before storing, so the line is there once the answer arrived.
    let lines = answered_lines();
    let line = lines.first().expect("a line per answer");
    for field in [
        "INFO",
        "camera=cam",
        "task=describe",
        "answer=",
        "confidence=",
        "tier=local",
        "total_ms=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }

    std::fs::write(&path, config(false)).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    answers
        .expect(WAIT, "the reloaded config reported", |m| {
            m.topic.ends_with("/config/reported") && m.text().contains("\"log_answers\":false")
        })
        .await;
    let before = answered_lines().len();
    for _ in 0..3 {
        answers
            .expect(WAIT, "an answer after the reload", |m| {
                m.topic.ends_with("/answer")
            })
            .await;
    }
    assert_eq!(
        answered_lines().len(),
        before,
        "answers are still logged after log_answers = false"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}
