//! With no broker URL the daemon starts its own broker, so a fresh box works with no other software.
//! A real client connects to it and sees the same contract as with mosquitto, and a clean start and
//! stop of a real `lookout run` logs nothing at ERROR.

use crate::common;

use std::time::Duration;

use common::process::Run;
use common::{Daemon, Subscriber, Toml, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_carries_answers_status_and_the_goodbye() {
    let port = free_port();
    let config = Toml::device("solo")
        .embedded_mqtt(port)
        .camera("cam", 32, 32, 10.0)
        .task("describe", "cam", "Describe.")
        .interval(0.2)
        .to_string();
    let daemon = Daemon::start(&config);
    common::wait_for_port(port);
    let mut client = Subscriber::connect(port, &["lookout/solo/#"]).await;
    // The daemon says online (live, or retained if it was first) before it sends any answer.
    let status = client
        .expect(Duration::from_secs(15), "status", |m| {
            m.topic == "lookout/solo/status"
        })
        .await;
    assert_eq!(status.text(), "online");
    let answer = client
        .expect(Duration::from_secs(15), "an answer", |m| {
            m.topic == "lookout/solo/cam/describe/answer"
        })
        .await;
    assert_eq!(answer.json()["device"], "solo");

    // The embedded broker is still a broker: a second client sees the retained status.
    let mut second = Subscriber::connect(port, &["lookout/solo/status"]).await;
    let retained = second
        .expect(Duration::from_secs(15), "retained status", |m| {
            m.topic == "lookout/solo/status"
        })
        .await;
    assert_eq!(
        (retained.text().as_str(), retained.retain),
        ("online", true)
    );

    daemon.shutdown().await;
    let goodbye = client
        .expect(Duration::from_secs(15), "offline", |m| {
            m.topic == "lookout/solo/status"
        })
        .await;
    assert_eq!(goodbye.text(), "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = format!(
        "[mqtt]\nembedded_listen = \"127.0.0.1:{port}\"\n[[cameras]]\nid = \"cam\"\nsource = {{ kind = \"synthetic\" }}\n"
    );
    let daemon = Daemon::start(&config);
    let error = tokio::time::timeout(Duration::from_secs(10), daemon.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&port.to_string()) && text.contains("mqtt.url"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_and_stop_logs_nothing_at_error() {
    let port = free_port();
    let config = Toml::device("quiet")
        .embedded_mqtt(port)
        .smolvlm()
        .camera("cam", 64, 48, 5.0)
        .task("bright", "cam", "Is it bright?")
        .kind("yes_no")
        .interval(0.2)
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Run::start_with_env(
        dir.path(),
        "quiet",
        &config,
        &dir.path().join("state"),
        &[],
        &[
            ("LOOKOUT_LOG", "info"),
            ("LOOKOUT_HTTP_ADDR", "127.0.0.1:0"),
        ],
    );
    daemon.wait_for("start", |run| {
        run.log_text().contains("Lookout is running.")
    });
    // A client comes and goes, as Home Assistant or mosquitto_sub would.
    let mut client = Subscriber::connect(port, &["lookout/quiet/cam/bright/answer"]).await;
    client
        .expect(Duration::from_secs(30), "an answer", |m| {
            m.topic == "lookout/quiet/cam/bright/answer"
        })
        .await;
    drop(client);
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let log = daemon.log_text();
    assert!(log.contains("Embedded MQTT broker started."), "{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(" ERROR "))
        .collect();
    assert!(
        errors.is_empty(),
        "ERROR lines on a clean start and stop:\n{log}"
    );
}
