//! A daemon killed with SIGKILL cannot say goodbye: the broker must publish its last will, a retained
//! `offline`. The daemon runs as a real subprocess (this test binary re-executed in child mode, with the
//! test analyser), so the kill is a real kill. A custom harness (`harness = false`) makes that possible.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, Mosquitto, Subscriber, config_with};

const CHILD_CONFIG: &str = "LOOKOUT_TEST_CHILD_CONFIG";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(CHILD_CONFIG) {
        Ok(config) => runtime.block_on(async move {
            let daemon = Daemon::start(&config);
            let _ = daemon.task.await;
        }),
        Err(_) => {
            runtime.block_on(a_killed_daemon_leaves_a_retained_offline_through_its_last_will());
            println!("test a_killed_daemon_leaves_a_retained_offline_through_its_last_will ... ok");
            println!("1 passed, 0 failed");
        }
    }
}

async fn a_killed_daemon_leaves_a_retained_offline_through_its_last_will() {
    let broker = Mosquitto::start();
    let config = config_with(
        "doomed",
        &broker.url(),
        "[[tasks]]\nid = \"t\"\ncamera = \"cam\"\nquestion = \"?\"\ntrigger = { kind = \"interval\", secs = 0.2 }\n",
    );
    let mut watcher = Subscriber::connect(broker.port, &["lookout/doomed/#"]).await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_CONFIG, config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait = Duration::from_secs(20);
    watcher
        .expect(wait, "online", |m| {
            m.topic == "lookout/doomed/status" && m.text() == "online"
        })
        .await;
    watcher
        .expect(wait, "an answer", |m| {
            m.topic == "lookout/doomed/cam/t/answer"
        })
        .await;

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    watcher
        .expect(wait, "the last will", |m| {
            m.topic == "lookout/doomed/status" && m.text() == "offline"
        })
        .await;
    let mut later = Subscriber::connect(broker.port, &["lookout/doomed/status"]).await;
    let retained = later
        .expect(wait, "the retained will", |m| {
            m.topic == "lookout/doomed/status"
        })
        .await;
    assert_eq!(
        (retained.text().as_str(), retained.retain),
        ("offline", true)
    );
}
