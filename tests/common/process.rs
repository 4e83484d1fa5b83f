//! `lookout run` as a real process (for what only a process can show: SIGKILL, a disk of its own),
//! logging to a file the test reads.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The log filter: what the process tests look for in the log.
const LOG: &str = "warn,lookout::publish=debug,lookout::app=info,lookout::dataset=info";

/// A running `lookout run`; killed when dropped.
pub struct Run {
    pub child: Child,
    log: PathBuf,
}

impl Run {
    /// Starts `lookout run` on `config`, with its state in `state`, through `wrapper` (a command and
    /// its arguments before the daemon's own; empty for none). `name` names its config and log files
    /// in `dir`.
    pub fn start(dir: &Path, name: &str, config: &str, state: &Path, wrapper: &[&str]) -> Run {
        Run::start_with_env(dir, name, config, state, wrapper, &[])
    }

    /// As `start`, with `env` set after the defaults (so it may set `LOOKOUT_LOG` too).
    pub fn start_with_env(
        dir: &Path,
        name: &str,
        config: &str,
        state: &Path,
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let lookout = env!("CARGO_BIN_EXE_lookout");
        let mut args: Vec<&str> = wrapper.to_vec();
        args.extend([lookout, "run", "--config", config_path.to_str().unwrap()]);
        let child = Command::new(args[0])
            .args(&args[1..])
            .env("LOOKOUT_STATE_DIR", state)
            .env("LOOKOUT_LOG", LOG)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start lookout");
        Run { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to a minute for `done`; panics with the log otherwise.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Run) -> bool) {
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

    /// Sends the process `signal` (`HUP`, `TERM`...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGSTOP, and waits until every thread of the process is stopped: `kill` returns once the signal
    /// is sent, while a thread on another core may still be writing.
    pub fn freeze(&self) {
        self.signal("STOP");
        let tasks = format!("/proc/{}/task", self.child.id());
        let stopped = |task: std::io::Result<std::fs::DirEntry>| {
            let stat =
                std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
            // The state follows the command name, which is in parentheses.
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            matches!(state, Some(Some('T' | 't')) | None)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_dir(&tasks).unwrap().all(stopped) {
            assert!(Instant::now() < deadline, "the process did not stop");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// SIGTERM (a graceful stop), and waits for the process to end.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.child.wait().unwrap()
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
