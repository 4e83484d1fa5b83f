//! Remote configuration against a real mosquitto: signed pushes on `config/desired` are applied live,
//! acked on `config/ack`, reported (retained) on `config/reported` and persisted for the next start;
//! every bad push is refused with its errors and changes nothing; secrets never leave the box.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, Mosquitto, PixelAnalyser, Subscriber, Toml, config_with};
use lookout::config::remote::{self, PushKind};
use serde_json::{Map, Value, json};

fn task_a() -> String {
    Toml::default()
        .task("a", "cam", "What is it?")
        .interval(0.2)
        .to_string()
}

struct Keys {
    signing: ed25519_dalek::SigningKey,
    public: String,
}

fn keys() -> Keys {
    let (secret, public) = remote::generate_key();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), secret).unwrap();
    Keys {
        signing: remote::read_signing_key(&dir.path().join("key")).unwrap(),
        public,
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

impl Keys {
    fn push(&self, version: u64, kind: PushKind, config: Value) -> Vec<u8> {
        remote::signed_push(&self.signing, version, kind, object(config))
            .to_string()
            .into_bytes()
    }
}

/// The local file: one camera, task `a`, the broker locked (by default), and the public key.
fn local(device: &str, broker: &str, keys: &Keys, extra: &str) -> String {
    config_with(
        device,
        broker,
        &format!(
            "{task_a}\n[remote]\npublic_key = \"{}\"\nlocked = [\"mqtt\", \"device\", \"vision.runtime_library\", \"outbox\"]\n{extra}",
            keys.public,
            task_a = task_a(),
        ),
    )
}

/// Publishes `push` and returns the ack for it. The daemon must be subscribed (its report seen).
async fn send(subscriber: &mut Subscriber, device: &str, push: Vec<u8>) -> Value {
    subscriber
        .publish(&format!("lookout/{device}/config/desired"), push)
        .await;
    subscriber
        .expect(Duration::from_secs(20), "an ack", |m| {
            m.topic.ends_with("/config/ack")
        })
        .await
        .json()
}

/// The retained report, once it says `version` (an ack may arrive just before its report).
async fn reported(port: u16, device: &str, version: u64) -> Value {
    let topic = format!("lookout/{device}/config/reported");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut reader = Subscriber::connect(port, &[&topic]).await;
        let report = reader
            .expect(Duration::from_secs(10), "the report", |_| true)
            .await
            .json();
        if report["version"] == version || tokio::time::Instant::now() > deadline {
            assert_eq!(report["version"], version, "{report}");
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_is_applied_acked_reported_and_used_at_the_next_start() {
    let broker = Mosquitto::start();
    let keys = keys();
    let state = tempfile::tempdir().unwrap();
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/fleet/config/ack", "lookout/fleet/cam/+/answer"],
    )
    .await;
    let local_file = local("fleet", &broker.url(), &keys, "");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(state.path(), &local_file, PixelAnalyser::boxed(), dir);
    reported(broker.port, "fleet", 0).await;

    // A patch adds a task; it answers at once, with no restart.
    let task_b = json!({"tasks": [
        {"id": "a", "camera": "cam", "question": "What is it?", "trigger": {"kind": "interval", "secs": 0.2}},
        {"id": "b", "camera": "cam", "question": "Is it bright?", "kind": "yes_no", "trigger": {"kind": "interval", "secs": 0.2}},
    ], "escalation": {"threshold": 0.8}});
    let ack = send(
        &mut subscriber,
        "fleet",
        keys.push(1, PushKind::MergePatch, task_b),
    )
    .await;
    assert_eq!(
        ack,
        json!({"version": 1, "ok": true, "errors": [], "restart_needed": []})
    );
    subscriber
        .expect(
            Duration::from_secs(10),
            "an answer of the pushed task",
            |m| m.topic == "lookout/fleet/cam/b/answer",
        )
        .await;
    let report = reported(broker.port, "fleet", 1).await;
    assert_eq!(report["status"], "applied");
    assert_eq!(report["config"]["escalation"]["threshold"], 0.8);
    assert_eq!(report["config"]["tasks"].as_array().unwrap().len(), 2);

    // A field that cannot change live is persisted and named; the rest applies.
    let later = json!({"vision": {"threads": 1}, "mqtt": null});
    let ack = send(
        &mut subscriber,
        "fleet",
        keys.push(2, PushKind::MergePatch, later),
    )
    .await;
    assert_eq!(ack["ok"], false, "mqtt is locked: {ack}");
    let ack = send(
        &mut subscriber,
        "fleet",
        keys.push(
            2,
            PushKind::MergePatch,
            json!({"escalation": {"queue": {"max_mb": 5.0}}}),
        ),
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["restart_needed"], json!(["escalation.queue"]));
    assert_eq!(
        reported(broker.port, "fleet", 2).await["status"],
        "restart_needed"
    );
    daemon.shutdown().await;

    // The next start runs the persisted layer: task b answers again, version 2 is reported.
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(state.path(), &local_file, PixelAnalyser::boxed(), dir);
    subscriber
        .expect(Duration::from_secs(10), "task b after the restart", |m| {
            m.topic == "lookout/fleet/cam/b/answer"
        })
        .await;
    let report = reported(broker.port, "fleet", 2).await;
    assert_eq!(report["config"]["escalation"]["queue"]["max_mb"], 5.0);
    // Versions only go up across restarts too.
    let ack = send(
        &mut subscriber,
        "fleet",
        keys.push(2, PushKind::Full, json!({})),
    )
    .await;
    assert_eq!(ack["ok"], false);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_are_refused_with_their_errors_and_change_nothing() {
    let broker = Mosquitto::start();
    let keys = keys();
    let stranger = self::keys();
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/guard/config/ack", "lookout/guard/cam/+/answer"],
    )
    .await;
    let daemon = Daemon::start(&local("guard", &broker.url(), &keys, ""));
    reported(broker.port, "guard", 0).await;
    let good = keys.push(
        5,
        PushKind::MergePatch,
        json!({"escalation": {"threshold": 0.9}}),
    );
    let mut tampered: Value = serde_json::from_slice(&good).unwrap();
    tampered["config"]["escalation"]["threshold"] = json!(0.1);
    let mut unsigned: Value = serde_json::from_slice(&good).unwrap();
    unsigned.as_object_mut().unwrap().remove("signature");
    let huge = format!(
        r#"{{"version": 9, "config": {{"device": {{"id": "{}"}}}}}}"#,
        "x".repeat(10_000_000)
    );
    let patch = |version: u64, config: Value| keys.push(version, PushKind::MergePatch, config);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not JSON",
            b"{ this is not json".to_vec(),
            "not a valid push",
        ),
        ("10 MB", huge.into_bytes(), "at most 1000000 are accepted"),
        (
            "wrong type",
            patch(5, json!({"tasks": "all of them"})),
            "tasks",
        ),
        (
            "unknown key",
            patch(5, json!({"escalation": {"colour": "red"}})),
            "unknown field `colour`",
        ),
        (
            "negative",
            patch(5, json!({"escalation": {"threshold": -3}})),
            "escalation.threshold",
        ),
        (
            "absurd",
            patch(5, json!({"escalation": {"max_tokens": 99999999}})),
            "escalation.max_tokens",
        ),
        (
            "unknown section",
            patch(5, json!({"plugins": {}})),
            "plugins",
        ),
        ("unsigned", unsigned.to_string().into_bytes(), "not signed"),
        (
            "tampered",
            tampered.to_string().into_bytes(),
            "does not match",
        ),
        (
            "another key",
            stranger.push(5, PushKind::MergePatch, json!({})),
            "does not match",
        ),
        (
            "the remote section",
            patch(5, json!({"remote": {"allow_unsigned": true}})),
            "config.remote",
        ),
        (
            "a locked field",
            patch(5, json!({"device": {"state_dir": "/tmp/elsewhere"}})),
            "device",
        ),
        (
            "a missing model",
            patch(5, json!({"vision": {"model_dir": "/nonexistent/model"}})),
            "vision",
        ),
        (
            "a device the box does not have",
            patch(
                5,
                json!({"vision": {"model_dir": Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro"), "device": "gpu"}}),
            ),
            "but this box offers no gpu",
        ),
        (
            "a task on no camera",
            patch(
                5,
                json!({"tasks": [{"id": "x", "camera": "nope", "question": "?", "trigger": {"kind": "on_demand"}}]}),
            ),
            "tasks[0].camera",
        ),
    ];
    for (what, push, expected) in cases {
        let ack = send(&mut subscriber, "guard", push).await;
        assert_eq!(ack["ok"], false, "{what}: {ack}");
        let errors = ack["errors"].to_string();
        assert!(
            errors.contains(expected),
            "{what}: expected {expected:?} in {errors}"
        );
    }
    // Nothing changed: version 0 runs, and task a still answers.
    reported(broker.port, "guard", 0).await;
    subscriber
        .expect(Duration::from_secs(10), "task a still answering", |m| {
            m.topic.ends_with("/a/answer")
        })
        .await;

    // The good push applies; the same push again, or an older one, is a replay.
    assert_eq!(
        send(&mut subscriber, "guard", good.clone()).await["ok"],
        true
    );
    let replay = send(&mut subscriber, "guard", good).await;
    assert!(
        replay["errors"]
            .to_string()
            .contains("not newer than the running version 5"),
        "{replay}"
    );
    let older = send(&mut subscriber, "guard", patch(4, json!({}))).await;
    assert_eq!(older["ok"], false);

    // Two pushes in quick succession: both acked, in order, the second applied over the first.
    subscriber
        .publish(
            "lookout/guard/config/desired",
            patch(6, json!({"escalation": {"threshold": 0.6}})),
        )
        .await;
    subscriber
        .publish(
            "lookout/guard/config/desired",
            patch(7, json!({"escalation": {"retries": 1}})),
        )
        .await;
    for version in [6, 7] {
        let ack = subscriber
            .expect(Duration::from_secs(10), "an ack", |m| {
                m.topic.ends_with("/config/ack")
            })
            .await
            .json();
        assert_eq!(ack["version"], version);
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let report = reported(broker.port, "guard", 7).await;
    assert_eq!(report["config"]["escalation"]["threshold"], 0.6);
    assert_eq!(report["config"]["escalation"]["retries"], 1);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_unsigned_pushes_are_refused_unless_the_file_allows_them() {
    let broker = Mosquitto::start();
    let mut subscriber = Subscriber::connect(broker.port, &["lookout/+/config/ack"]).await;
    let push =
        json!({"version": 1, "kind": "merge_patch", "config": {"escalation": {"threshold": 0.7}}});
    let daemon = Daemon::start(&config_with("closed", &broker.url(), &task_a()));
    reported(broker.port, "closed", 0).await;
    let ack = send(&mut subscriber, "closed", push.to_string().into_bytes()).await;
    assert_eq!(ack["ok"], false);
    assert!(
        ack["errors"].to_string().contains("only signed pushes"),
        "{ack}"
    );

    // SIGHUP with a file that allows them: the same checks, now passed.
    daemon
        .reload(&config_with(
            "closed",
            &broker.url(),
            &format!("{}\n[remote]\nallow_unsigned = true\n", task_a()),
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ack = send(&mut subscriber, "closed", push.to_string().into_bytes()).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        reported(broker.port, "closed", 1).await["config"]["escalation"]["threshold"],
        0.7
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_model_answers_a_warm_up_frame_before_it_replaces_the_running_one() {
    let broker = Mosquitto::start();
    let keys = keys();
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/swap/config/ack", "lookout/swap/cam/+/answer"],
    )
    .await;
    let daemon = Daemon::start(&local("swap", &broker.url(), &keys, ""));
    reported(broker.port, "swap", 0).await;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro");
    let ack = send(
        &mut subscriber,
        "swap",
        keys.push(
            1,
            PushKind::MergePatch,
            json!({"vision": {"model_dir": fixture, "threads": 1}}),
        ),
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    subscriber
        .expect(
            Duration::from_secs(30),
            "an answer by the pushed model (its default variant, int8)",
            |m| m.topic.ends_with("/answer") && m.json()["model"] == "smolvlm-micro_int8",
        )
        .await;

    // A broken model is refused and the running one stays.
    let broken = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture.join(file), broken.path().join(file)).unwrap();
    }
    let ack = send(
        &mut subscriber,
        "swap",
        keys.push(
            2,
            PushKind::MergePatch,
            json!({"vision": {"model_dir": broken.path()}}),
        ),
    )
    .await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["errors"][0]["path"], "vision");
    reported(broker.port, "swap", 1).await;
    subscriber.collect_for(Duration::from_millis(300)).await;
    let answer = subscriber
        .expect(
            Duration::from_secs(10),
            "an answer after the refusal",
            |m| m.topic.ends_with("/answer"),
        )
        .await
        .json();
    assert_eq!(answer["model"], "smolvlm-micro_int8");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_any_mqtt_payload() {
    let broker = Mosquitto::start();
    let keys = keys();
    let mut everything = Subscriber::connect(broker.port, &["lookout/#"]).await;
    let secret_camera = r#"
[[cameras]]
id = "door"
source = { kind = "http", url = "http://viewer:camera-pass-123@127.0.0.1:9/snap.jpg", interval_secs = 1.0 }
"#;
    let daemon = Daemon::start(&local("quiet", &broker.url(), &keys, secret_camera));
    reported(broker.port, "quiet", 0).await;
    let push = keys.push(
        1,
        PushKind::MergePatch,
        json!({"cameras": [
            {"id": "cam", "source": {"kind": "synthetic", "width": 64, "height": 48, "fps": 20.0}},
            {"id": "door", "source": {"kind": "http", "url": "http://u:pushed-pass-456@127.0.0.1:9/s.jpg",
             "auth": {"basic": {"user": "u", "password": "basic-pass-789"}}}},
        ]}),
    );
    everything
        .publish("lookout/quiet/config/desired", push)
        .await;
    let messages = everything.collect_for(Duration::from_secs(4)).await;
    assert!(messages.iter().any(|m| m.topic.ends_with("/config/ack")));
    assert!(
        messages
            .iter()
            .any(|m| m.topic.ends_with("/config/reported"))
    );
    for message in messages
        .iter()
        .filter(|m| !m.topic.ends_with("/config/desired"))
    {
        let text = message.text();
        for secret in ["camera-pass-123", "pushed-pass-456", "basic-pass-789"] {
            assert!(
                !text.contains(secret),
                "{} carries {secret}: {text}",
                message.topic
            );
        }
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_the_log_of_a_real_run() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtt://lookout:broker-pass-321@127.0.0.1:{}", broker.port);
    let config = Toml::device("logs")
        .key("shutdown_timeout_secs", "5.0")
        .mqtt(&url)
        .section("[[cameras]]")
        .string("id", "door")
        .key(
            "source",
            r#"{ kind = "http", url = "http://viewer:camera-pass-123@127.0.0.1:9/snap.jpg", interval_secs = 0.5 }"#,
        )
        .section("remote")
        .key("allow_unsigned", true)
        .to_string();
    let path = dir.path().join("lookout.toml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["run", "--config", path.to_str().unwrap()])
        .env("LOOKOUT_STATE_DIR", dir.path().join("state"))
        .env("LOOKOUT_MODEL_DIR", &fixture)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut everything = Subscriber::connect(broker.port, &["lookout/#"]).await;
    reported(broker.port, "logs", 0).await;
    let push = json!({"version": 1, "kind": "merge_patch", "config": {"cameras": [
        {"id": "door", "source": {"kind": "http", "url": "http://u:pushed-pass-456@127.0.0.1:9/s.jpg",
         "auth": {"basic": {"user": "u", "password": "basic-pass-789"}}}},
    ]}});
    let ack = send(&mut everything, "logs", push.to_string().into_bytes()).await;
    assert_eq!(ack["ok"], true, "{ack}");
    // A refused push names what is wrong without echoing the secret it carried.
    let bad = json!({"version": 2, "config": {"mqtt": {"url": "mqtt://x:pushed-pass-456@h"}}});
    assert_eq!(
        send(&mut everything, "logs", bad.to_string().into_bytes()).await["ok"],
        false
    );
    let messages = everything.collect_for(Duration::from_secs(2)).await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.contains("Applied a config push."), "{log}");
    let payloads: Vec<String> = messages
        .iter()
        .filter(|m| !m.topic.ends_with("/config/desired"))
        .map(|m| m.text())
        .collect();
    for secret in [
        "broker-pass-321",
        "camera-pass-123",
        "pushed-pass-456",
        "basic-pass-789",
    ] {
        assert!(!log.contains(secret), "the log carries {secret}:\n{log}");
        assert!(
            payloads.iter().all(|text| !text.contains(secret)),
            "a payload carries {secret}"
        );
    }
}
