//! The outbox in a real `lookout run` process with the fixture model: killed with SIGKILL mid-stream,
//! and on a disk that fills up. The daemon's debug log names every answer it stored; each must reach a
//! subscriber.

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mosquitto, Subscriber};

fn config(device: &str, broker: &Mosquitto, tasks: bool) -> String {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro");
    let mut config = format!(
        r#"
[device]
id = "{device}"
[mqtt]
url = "{}"
stats_interval_secs = 0.5
keep_alive_secs = 5
[vision]
model_dir = "{}"
threads = 1
[[cameras]]
id = "cam"
source = {{ kind = "synthetic", width = 64, height = 48, fps = 20.0 }}
"#,
        broker.url(),
        fixture.display()
    );
    if tasks {
        config.push_str(
            r#"
[[tasks]]
id = "bright"
camera = "cam"
question = "Is it bright?"
kind = "yes_no"
trigger = { kind = "interval", secs = 0.05 }
"#,
        );
    }
    config
}

/// A `lookout run` process logging stored answers to a file.
struct Run {
    child: Child,
    log: PathBuf,
}

impl Run {
    /// Starts `lookout run` on `config`, with its state in `state`, through `wrapper` (a command and
    /// its arguments before the daemon's own; empty for none).
    fn start(dir: &Path, name: &str, config: &str, state: &Path, wrapper: &[&str]) -> Run {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let lookout = env!("CARGO_BIN_EXE_lookout");
        let mut args: Vec<&str> = wrapper.to_vec();
        args.extend([lookout, "run", "--config", config_path.to_str().unwrap()]);
        let child = Command::new(args[0])
            .args(&args[1..])
            .env("LOOKOUT_STATE_DIR", state)
            .env(
                "LOOKOUT_LOG",
                "warn,lookout::publish=debug,lookout::app=info",
            )
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start lookout");
        Run { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The ids of the answers it has stored so far.
    fn stored(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|line| line.contains("Stored an answer in the outbox."))
            .filter_map(|line| line.split("id=").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
            .collect()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Run) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "no {what}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_9(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.stored()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    run.wait_for("ten stored answers", |run| run.stored().len() >= 10);
    let mut stored: HashSet<String> = run.kill_9().into_iter().collect();

    // ...and while the broker is away (all of them waiting on disk).
    broker.stop_gracefully();
    let run = Run::start(
        dir.path(),
        "second",
        &config("k9", &broker, true),
        &state,
        &[],
    );
    run.wait_for("ten stored answers", |run| run.stored().len() >= 10);
    stored.extend(run.kill_9());

    broker.launch();
    let run = Run::start(
        dir.path(),
        "third",
        &config("k9", &broker, false),
        &state,
        &[],
    );
    expect_all(&mut subscriber, &stored, Duration::from_secs(60)).await;
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
    let stored: HashSet<String> = run.stored().into_iter().collect();
    assert!(stored.len() >= 40, "only {} answers stored", stored.len());
    expect_all(&mut subscriber, &stored, Duration::from_secs(60)).await;
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
