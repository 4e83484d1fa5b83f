//! Reloading the config file (what SIGHUP does): a bad file is rejected as a whole and the running
//! tasks go on; a good file replaces the cameras and tasks without a restart.

use crate::common;

use std::time::Duration;

use common::{Daemon, Mosquitto, Subscriber, Toml, config_with};

const WAIT: Duration = Duration::from_secs(15);

fn task(id: &str) -> String {
    Toml::default()
        .task(id, "cam", &format!("{id}?"))
        .interval(0.2)
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_keeps_the_running_config_and_a_good_one_is_applied() {
    let broker = Mosquitto::start();
    let daemon = Daemon::start(&config_with("rl", &broker.url(), &task("first")));
    let mut answers = Subscriber::connect(broker.port, &["lookout/rl/+/+/answer"]).await;
    answers
        .expect(WAIT, "first answers", |m| {
            m.topic.ends_with("/first/answer")
        })
        .await;

    // Unknown key, negative interval, a task on a missing camera: all rejected, nothing changes.
    let bad = config_with("rl", &broker.url(), &task("second"))
        .replace("secs = 0.2", "secs = -1.0")
        .replace("[mqtt]", "[mqtt]\nmystery = true")
        + "[[tasks]]\nid = \"x\"\ncamera = \"nowhere\"\nquestion = \"?\"\ntrigger = { kind = \"on_demand\" }\n";
    daemon.reload(&bad).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_bad = answers.collect_for(Duration::from_secs(1)).await;
    assert!(
        after_bad.iter().any(|m| m.topic.ends_with("/first/answer")),
        "the running task stopped"
    );
    assert!(
        !after_bad
            .iter()
            .any(|m| m.topic.ends_with("/second/answer")),
        "part of a bad config was applied"
    );

    // A good file: the new task runs, the old one is gone.
    daemon
        .reload(&config_with("rl", &broker.url(), &task("second")))
        .await;
    answers
        .expect(WAIT, "answers of the new task", |m| {
            m.topic.ends_with("/second/answer")
        })
        .await;
    let settled = answers.collect_for(Duration::from_secs(1)).await;
    assert!(
        !settled.iter().any(|m| m.topic.ends_with("/first/answer")),
        "the removed task still answers"
    );
    assert!(!daemon.task.is_finished());
    daemon.shutdown().await;
}
