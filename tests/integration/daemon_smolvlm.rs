//! The daemon with the real SmolVLM2 analyser (the committed fixture on the real ONNX Runtime) against a
//! real mosquitto: every task kind is answered by the model, and the answers carry its tokens, confidence
//! and per-stage timings; an answer it is unsure of goes to a loopback cloud whose answer is published.

use crate::common;

use std::time::Duration;

use common::cloud::{CloudServer, Reply};
use common::{Daemon, Mosquitto, Subscriber, Toml};
use lookout::config::ConfigOrigin;
use lookout::env::Env;
use lookout::vision::{Analyser, PromptBounds};

/// A daemon config on the fixture model (its default variant, int8, with Lookout's int8 decoder) with one synthetic camera
/// `cam`.
fn model_config(device: &str, broker_url: &str) -> Toml {
    Toml::device(device)
        .mqtt(broker_url)
        .smolvlm()
        .camera("cam", 320, 240, 5.0)
}

/// The analyser loaded exactly as `lookout run` loads it, from the config's [vision] section.
fn load_model(config: &str) -> Box<dyn Analyser> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lookout.toml");
    std::fs::write(&path, config).unwrap();
    let config = ConfigOrigin::File(path).load(&Env::from_process()).unwrap();
    lookout::vision::load(&config.vision, PromptBounds::of(&config.tasks))
        .unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_kind_is_answered_by_the_model() {
    let broker = Mosquitto::start();
    let config = model_config("vlm", &broker.url())
        .task("describe", "cam", "Describe what you see.")
        .key("max_new_tokens", 5)
        .interval(1.0)
        .task("person", "cam", "Is there a person?")
        .kind("yes_no")
        .key("split", true)
        .interval(1.0)
        .task("colour", "cam", "Which colour dominates?")
        .key("kind", r#"{ one_of = ["red", "green", "blue"] }"#)
        .interval(1.0)
        .to_string();
    let analyser = load_model(&config);
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
        assert_eq!(answer["model"], "smolvlm-micro_lookout_int8");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsure_answer_from_the_model_is_escalated_and_the_cloud_answer_arrives() {
    let broker = Mosquitto::start();
    let cloud = CloudServer::start(vec![], Reply::answer("A test pattern of coloured bars.")).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("hf_token");
    std::fs::write(&token, "hf_secret").unwrap();
    // The random-weight fixture is unsure of what it says (its yes/no choices can be confident).
    let config = model_config("vlm-esc", &broker.url())
        .task("scene", "cam", "Describe what you see.")
        .key("max_new_tokens", 8)
        .interval(1.0)
        .raw(&format!(
            r#"[escalation]
enabled = true
threshold = 0.5
[[escalation.endpoints]]
name = "router"
url = "{}"
model = "Qwen/Qwen2.5-VL-7B-Instruct:cheapest"
token_file = "{}"
"#,
            cloud.url,
            token.display()
        ))
        .to_string();
    let analyser = load_model(&config);
    let mut answers = Subscriber::connect(broker.port, &["lookout/vlm-esc/cam/scene/answer"]).await;
    let daemon = Daemon::start_with(&config, analyser);

    let answer = answers
        .expect(Duration::from_secs(30), "the scene answer", |_| true)
        .await
        .json();
    assert_eq!(answer["tier"], "cloud", "{answer}");
    assert_eq!(answer["answer"], "A test pattern of coloured bars.");
    assert_eq!(answer["escalation"], "below_threshold");
    assert_eq!(answer["provider"], "nebius");
    assert_eq!(answer["local"]["model"], "smolvlm-micro_lookout_int8");
    let local_confidence = answer["local"]["confidence"].as_f64().unwrap();
    assert!(local_confidence < 0.5, "{answer}");
    assert!(answer["local"]["answer"].is_string(), "{answer}");
    // The cloud saw the frame the model saw, as a JPEG of the camera's size.
    let request = &cloud.received()[0];
    assert_eq!(
        request.body["model"],
        "Qwen/Qwen2.5-VL-7B-Instruct:cheapest"
    );
    let url = request.body["messages"][0]["content"][0]["image_url"]["url"]
        .as_str()
        .unwrap();
    let jpeg = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        url.strip_prefix("data:image/jpeg;base64,").unwrap(),
    )
    .unwrap();
    let image = image::load_from_memory(&jpeg).unwrap();
    assert_eq!((image.width(), image.height()), (320, 240));
    daemon.shutdown().await;
}
