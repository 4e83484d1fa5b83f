//! The daemon with the real SmolVLM2 analyser (the committed fixture on the real ONNX Runtime) against a
//! real mosquitto: every task kind is answered by the model, and the answers carry its tokens, confidence
//! and per-stage timings.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, Mosquitto, Subscriber};
use lookout::config::{ConfigOrigin, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_kind_is_answered_by_the_model() {
    let broker = Mosquitto::start();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro");
    let config = format!(
        r#"
[device]
id = "vlm"
[mqtt]
url = "{}"
[vision]
model_dir = "{}"
threads = 1
[[cameras]]
id = "cam"
source = {{ kind = "synthetic", width = 320, height = 240, fps = 5.0 }}
[[tasks]]
id = "describe"
camera = "cam"
question = "Describe what you see."
max_new_tokens = 5
trigger = {{ kind = "interval", secs = 1.0 }}
[[tasks]]
id = "person"
camera = "cam"
question = "Is there a person?"
kind = "yes_no"
split = true
trigger = {{ kind = "interval", secs = 1.0 }}
[[tasks]]
id = "colour"
camera = "cam"
question = "Which colour dominates?"
kind = {{ one_of = ["red", "green", "blue"] }}
trigger = {{ kind = "interval", secs = 1.0 }}
"#,
        broker.url(),
        fixture.display()
    );
    // The analyser is loaded exactly as `lookout run` loads it, from the [vision] section.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lookout.toml");
    std::fs::write(&path, &config).unwrap();
    let vision = ConfigOrigin::File(path)
        .load(&Env::from_process())
        .unwrap()
        .vision;
    let analyser = lookout::vision::load(&vision).unwrap_or_else(|error| panic!("{error}"));
    let mut answers = Subscriber::connect(broker.port, &["lookout/vlm/cam/+/answer"]).await;
    let daemon = Daemon::start_with(&config, analyser);

    for (task, allowed) in [
        ("describe", None),
        ("person", Some(vec!["yes", "no"])),
        ("colour", Some(vec!["red", "green", "blue"])),
    ] {
        let topic = format!("lookout/vlm/cam/{task}/answer");
        let answer = answers
            .expect(Duration::from_secs(30), task, |m| m.topic == topic)
            .await
            .json();
        assert_eq!(answer["model"], "smolvlm-micro");
        assert!(!answer["tokens"].as_array().unwrap().is_empty(), "{answer}");
        let confidence = answer["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&confidence), "{answer}");
        assert!(
            answer["timings_ms"]["vision"].as_f64().unwrap() > 0.0,
            "{answer}"
        );
        if let Some(allowed) = allowed {
            assert!(
                allowed.contains(&answer["answer"].as_str().unwrap()),
                "{answer}"
            );
        } else {
            assert!(answer["confidence_min"].as_f64().is_some(), "{answer}");
        }
    }
    daemon.shutdown().await;
}
