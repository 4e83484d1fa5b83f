//! The outbox in a real `lookout run` process with the fixture model: killed with SIGKILL mid-stream,
//! and on a disk that fills up. The daemon's debug log names every answer it stored; each must reach a
//! subscriber.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::process::Run;
use common::{Mosquitto, Subscriber, Toml};

fn config(device: &str, broker: &Mosquitto, tasks: bool) -> String {
    let config = Toml::device(device)
        .mqtt(&broker.url())
        .key("stats_interval_secs", 0.5)
        .key("keep_alive_secs", 5)
        .smolvlm()
        .camera("cam", 64, 48, 20.0);
    if tasks {
        config
            .task("bright", "cam", "Is it bright?")
            .kind("yes_no")
            .interval(0.05)
            .to_string()
    } else {
        config.to_string()
    }
}

/// The ids of the answers `run` has stored so far (its debug log names each).
fn stored(run: &Run) -> Vec<String> {
    run.log_text()
        .lines()
        .filter(|line| line.contains("Stored an answer in the outbox."))
        .filter_map(|line| line.split("id=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// Kills `run` with SIGKILL; returns the ids of the answers it had stored.
fn kill_9(mut run: Run) -> Vec<String> {
    run.kill_9();
    stored(&run)
}

/// Collects answers until every id in `expected` has arrived; panics with the missing ones.
async fn expect_all(subscriber: &mut Subscriber, expected: &HashSet<String>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut arrived = HashSet::new();
    while !expected.is_subset(&arrived) {
        for message in subscriber.collect_for(Duration::from_millis(500)).await {
            if message.topic.ends_with("/answer") {
                arrived.insert(message.json()["id"].as_str().unwrap().to_owned());
            }
        }
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<_> = expected.difference(&arrived).collect();
            panic!(
                "{} of {} answers lost: {missing:?}",
                missing.len(),
                expected.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_stored_before_a_kill_9_arrives_after_a_restart() {
    let mut broker = Mosquitto::start_persistent();
    let mut subscriber =
        Subscriber::connect_persistent(broker.port, "kill-sub", &["lookout/k9/cam/+/answer"]).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    // Killed while answers flow to a live broker (some sent and not yet acknowledged)...
    let run = Run::start(
        dir.path(),
        "first",
        &config("k9", &broker, true),
        &state,
        &[],
    );
    run.wait_for("ten stored answers", |run| stored(run).len() >= 10);
    let mut all_stored: HashSet<String> = kill_9(run).into_iter().collect();

    // ...and while the broker is away (all of them waiting on disk).
    broker.stop_gracefully();
    let run = Run::start(
        dir.path(),
        "second",
        &config("k9", &broker, true),
        &state,
        &[],
    );
    run.wait_for("ten stored answers", |run| stored(run).len() >= 10);
    all_stored.extend(kill_9(run));

    broker.launch();
    let run = Run::start(
        dir.path(),
        "third",
        &config("k9", &broker, false),
        &state,
        &[],
    );
    expect_all(&mut subscriber, &all_stored, Duration::from_secs(60)).await;
    assert!(
        run.log_text()
            .contains("Found answers from an earlier run still waiting."),
        "{}",
        run.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_answers_in_memory_and_still_delivers_them() {
    let mut broker = Mosquitto::start_persistent();
    let mut subscriber = Subscriber::connect_persistent(
        broker.port,
        "disk-sub",
        &["lookout/disk/cam/+/answer", "lookout/disk/stats"],
    )
    .await;
    broker.stop_gracefully();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();

    // The state directory is a 48 kB filesystem of the daemon's own (a private mount namespace, so
    // no privileges are needed and nothing is left mounted). The outbox limit is far above it.
    let config = format!(
        "{}\n[outbox]\nmax_mb = 10.0\n",
        config("disk", &broker, true)
    );
    let mount = r#"mount -t tmpfs -o size=48k lookout-test "$0" && exec "$@""#;
    let state_arg = state.to_str().unwrap().to_owned();
    let wrapper = [
        "unshare",
        "--mount",
        "--map-root-user",
        "sh",
        "-c",
        mount,
        state_arg.as_str(),
    ];
    let run = Run::start(dir.path(), "disk", &config, &state, &wrapper);
    run.wait_for("a refused write", |run| {
        run.log_text().contains("Cannot write to the outbox")
    });
    std::thread::sleep(Duration::from_secs(1));

    broker.launch();
    let before_reconnect: HashSet<String> = stored(&run).into_iter().collect();
    assert!(
        before_reconnect.len() >= 40,
        "only {} answers stored",
        before_reconnect.len()
    );
    expect_all(&mut subscriber, &before_reconnect, Duration::from_secs(60)).await;
    let stats = subscriber
        .expect(Duration::from_secs(10), "stats", |m| {
            m.topic.ends_with("/stats")
        })
        .await
        .json();
    assert!(
        stats["outbox"]["write_failures"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let mut run = run;
    assert!(run.child.try_wait().unwrap().is_none(), "the daemon died");
}
