//! The broker is not always there: down when the daemon starts, restarted under it, or refusing its
//! credentials. In each case the daemon keeps running, retries with backoff, and works once it can.

use crate::common;

use std::time::Duration;

use common::{Daemon, Mosquitto, Subscriber, Toml, config_with, free_port};

fn task() -> String {
    Toml::default()
        .task("describe", "cam", "Describe.")
        .interval(0.2)
        .to_string()
}

const WAIT: Duration = Duration::from_secs(20);

fn is_answer(message: &common::Message) -> bool {
    message.topic == "lookout/edge/cam/describe/answer"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_at_start_and_restarted_mid_run_is_reconnected() {
    let port = free_port();
    let daemon = Daemon::start(&config_with(
        "edge",
        &format!("mqtt://127.0.0.1:{port}"),
        &task(),
    ));

    // No broker for a while: the daemon must not exit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !daemon.task.is_finished(),
        "the daemon gave up without a broker"
    );

    let mut broker = Mosquitto::start_with(port, "allow_anonymous true\n");
    let mut answers = Subscriber::connect(port, &["lookout/edge/#"]).await;
    answers
        .expect(WAIT, "an answer once the broker is up", is_answer)
        .await;

    // Restart the broker (no persistence: it forgets the retained status and the subscription).
    broker.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!daemon.task.is_finished());
    broker.launch();
    let mut answers = Subscriber::connect(port, &["lookout/edge/#"]).await;
    let status = answers
        .expect(WAIT, "online again after the restart", |m| {
            m.topic == "lookout/edge/status"
        })
        .await;
    assert_eq!(status.text(), "online");
    answers
        .expect(WAIT, "answers after the restart", is_answer)
        .await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_retried_and_right_ones_connect() {
    let port = free_port();
    let mut broker = Mosquitto::prepare(
        port,
        "allow_anonymous false\npassword_file {dir}/passwords\n",
    );
    let passwords = broker.dir().join("passwords");
    std::fs::write(&passwords, "").unwrap();
    let status = std::process::Command::new("mosquitto_passwd")
        .args([
            "-b",
            passwords.to_str().unwrap(),
            "lookout",
            "right-password",
        ])
        .status()
        .expect("mosquitto_passwd is installed with mosquitto");
    assert!(status.success());
    broker.launch();

    let wrong = Daemon::start(&config_with(
        "edge",
        &format!("mqtt://lookout:wrong@127.0.0.1:{port}"),
        &task(),
    ));
    let mut watcher = Subscriber::connect_as(
        port,
        &["lookout/edge/#"],
        Some(("lookout", "right-password")),
    )
    .await;
    let seen = watcher.collect_for(Duration::from_secs(3)).await;
    assert!(seen.is_empty(), "a refused client published: {seen:?}");
    assert!(
        !wrong.task.is_finished(),
        "refused credentials stopped the daemon"
    );
    // A daemon that never connected still stops cleanly and promptly.
    let took = wrong.shutdown().await;
    assert!(
        took < Duration::from_secs(2),
        "shutdown while disconnected took {took:?}"
    );

    let right = Daemon::start(&config_with(
        "edge",
        &format!("mqtt://lookout:right-password@127.0.0.1:{port}"),
        &task(),
    ));
    watcher
        .expect(WAIT, "answers with the right password", is_answer)
        .await;
    right.shutdown().await;
}
