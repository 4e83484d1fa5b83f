//! The daemon as a real process under real signals. This test binary re-executes itself in child mode
//! to run the daemon through `app::run_until_signalled` (the signal wiring `lookout run` uses) with
//! the test analyser, so every signal here is a real one. A custom harness (`harness = false`) makes
//! that possible; each scenario prints a line like the standard harness.
//!
//! - SIGTERM: answers drain, retained `offline`, exit 0 within the deadline.
//! - a second SIGTERM during a slow shutdown: exit at once.
//! - SIGHUP: the config file is read again and its new task runs.
//! - SIGKILL: the broker publishes the last will, a retained `offline`.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Mosquitto, PixelAnalyser, Subscriber, Toml, config_with};
use lookout::config::ConfigOrigin;
use lookout::env::Env;

const CHILD_CONFIG: &str = "LOOKOUT_TEST_CHILD_CONFIG";
const CHILD_DELAY_MS: &str = "LOOKOUT_TEST_CHILD_ANALYSER_DELAY_MS";
const WAIT: Duration = Duration::from_secs(20);

/// One scenario, run to completion on the given runtime (it panics on failure).
type Scenario = fn(&tokio::runtime::Runtime);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(path) = std::env::var(CHILD_CONFIG) {
        let delay = std::env::var(CHILD_DELAY_MS)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        let code = runtime.block_on(child(&path, Duration::from_millis(delay)));
        std::process::exit(code);
    }
    let scenarios: [(&str, Scenario); 4] = [
        ("sigterm_drains_says_offline_and_exits_0", |rt| {
            rt.block_on(sigterm_drains_says_offline_and_exits_0())
        }),
        ("a_second_sigterm_exits_at_once", |rt| {
            rt.block_on(a_second_sigterm_exits_at_once())
        }),
        ("sighup_reloads_the_config_file", |rt| {
            rt.block_on(sighup_reloads_the_config_file())
        }),
        (
            "sigkill_leaves_a_retained_offline_through_the_last_will",
            |rt| rt.block_on(sigkill_leaves_a_retained_offline_through_the_last_will()),
        ),
    ];
    for (name, scenario) in scenarios {
        scenario(&runtime);
        println!("test {name} ... ok");
    }
    println!("{} passed, 0 failed", scenarios.len());
}

async fn child(path: &str, delay: Duration) -> i32 {
    let origin = ConfigOrigin::File(path.into());
    // Each child keeps its outbox beside its config.
    let state = std::path::Path::new(path).with_file_name("state");
    let env = Env::from_pairs([("LOOKOUT_STATE_DIR", state.to_str().unwrap())]);
    let loaded = origin.load_effective(&env).expect("child config");
    match lookout::app::run_until_signalled(origin, env, loaded, Box::new(PixelAnalyser { delay }))
        .await
    {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

struct Process {
    child: Child,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn spawn(config: &str, analyser_delay_ms: u64) -> Process {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lookout.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_CONFIG, &path)
        .env(CHILD_DELAY_MS, analyser_delay_ms.to_string())
        .env("LOOKOUT_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process {
        child,
        _dir: dir,
        config: path,
    }
}

impl Process {
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        panic!("the daemon did not exit within {limit:?}");
    }

    fn rewrite(&self, config: &str) {
        std::fs::write(Path::new(&self.config), config).unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn task(id: &str, secs: f64) -> String {
    Toml::default()
        .task(id, "cam", &format!("{id}?"))
        .interval(secs)
        .to_string()
}

async fn sigterm_drains_says_offline_and_exits_0() {
    let broker = Mosquitto::start();
    let mut watcher = Subscriber::connect(broker.port, &["lookout/term/#"]).await;
    let mut daemon = spawn(&config_with("term", &broker.url(), &task("t", 0.2)), 0);
    watcher
        .expect(WAIT, "an answer", |m| {
            m.topic == "lookout/term/cam/t/answer"
        })
        .await;
    daemon.signal("TERM");
    let (status, took) = daemon.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}, over the 5 s deadline"
    );
    watcher
        .expect(WAIT, "offline", |m| {
            m.topic == "lookout/term/status" && m.text() == "offline"
        })
        .await;
}

async fn a_second_sigterm_exits_at_once() {
    let broker = Mosquitto::start();
    let mut watcher = Subscriber::connect(broker.port, &["lookout/twice/#"]).await;
    // Each answer takes 4 s, so a graceful shutdown must wait for the one in progress.
    let mut daemon = spawn(
        &config_with("twice", &broker.url(), &task("slow", 0.1)),
        4_000,
    );
    watcher
        .expect(WAIT, "online", |m| {
            m.topic == "lookout/twice/status" && m.text() == "online"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.signal("TERM");
    let (status, took) = daemon.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after a second SIGTERM"
    );
    assert!(
        took < Duration::from_secs(1),
        "took {took:?}: the second signal did not exit at once"
    );
}

async fn sighup_reloads_the_config_file() {
    let broker = Mosquitto::start();
    let mut watcher = Subscriber::connect(broker.port, &["lookout/hup/#"]).await;
    let mut daemon = spawn(&config_with("hup", &broker.url(), &task("before", 0.2)), 0);
    watcher
        .expect(WAIT, "the first task", |m| {
            m.topic == "lookout/hup/cam/before/answer"
        })
        .await;
    daemon.rewrite(&config_with("hup", &broker.url(), &task("after", 0.2)));
    daemon.signal("HUP");
    watcher
        .expect(WAIT, "the reloaded task", |m| {
            m.topic == "lookout/hup/cam/after/answer"
        })
        .await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the daemon"
    );
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(10)).await.0.code(),
        Some(0)
    );
}

async fn sigkill_leaves_a_retained_offline_through_the_last_will() {
    let broker = Mosquitto::start();
    let mut watcher = Subscriber::connect(broker.port, &["lookout/doomed/#"]).await;
    let mut daemon = spawn(&config_with("doomed", &broker.url(), &task("t", 0.2)), 0);
    watcher
        .expect(WAIT, "online", |m| {
            m.topic == "lookout/doomed/status" && m.text() == "online"
        })
        .await;
    watcher
        .expect(WAIT, "an answer", |m| {
            m.topic == "lookout/doomed/cam/t/answer"
        })
        .await;
    daemon.signal("KILL");
    daemon.wait_exit(Duration::from_secs(5)).await;
    watcher
        .expect(WAIT, "the last will", |m| {
            m.topic == "lookout/doomed/status" && m.text() == "offline"
        })
        .await;
    let mut later = Subscriber::connect(broker.port, &["lookout/doomed/status"]).await;
    let retained = later
        .expect(WAIT, "the retained will", |m| {
            m.topic == "lookout/doomed/status"
        })
        .await;
    assert_eq!(
        (retained.text().as_str(), retained.retain),
        ("offline", true)
    );
}
