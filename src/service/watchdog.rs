//! What the service manager hears from a running daemon: its state line and the watchdog.
//!
//! systemd's watchdog restarts a daemon that stops pinging. Pinging from a timer alone would only
//! prove that the timer runs, so the supervisor pings only while no stage has a unit of work running
//! past `device.stall_timeout_secs` (see `stats::Progress`): a model run that never returns, a camera
//! read wedged in its driver or an outbox write stuck on a dead disk stops the pings, and systemd
//! restarts the daemon; a stalled async runtime stops them too, since the check runs on it. A broker
//! outage is not a hang: the daemon keeps answering into its outbox, says `Degraded` and keeps pinging.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{error, info};

use super::notify::Notifier;
use crate::config::Config;
use crate::stats::Stats;

/// How often the supervisor checks when there is no watchdog to feed (state changes only).
const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// Tells systemd how the daemon is doing and feeds its watchdog while every stage makes progress.
#[derive(Debug)]
pub(crate) struct Supervisor {
    notifier: Notifier,
    status: String,
    stuck: bool,
}

impl Supervisor {
    pub fn new(notifier: Notifier) -> Supervisor {
        Supervisor {
            notifier,
            status: String::new(),
            stuck: false,
        }
    }

    /// How often `check` must run: twice per watchdog timeout, as sd_watchdog_enabled(3) advises,
    /// and at least every second so that the state line follows the broker.
    pub(crate) fn period(&self) -> Duration {
        self.notifier
            .watchdog_timeout()
            .map_or(STATUS_PERIOD, |timeout| (timeout / 2).min(STATUS_PERIOD))
    }

    /// Start-up is done: the model is loaded and every stage runs.
    pub fn ready(&mut self, config: &Config, stats: &Stats) {
        self.status = status_line(config, stats, &[]);
        self.notifier.ready(&self.status);
        if self.notifier.watchdog_timeout().is_some() {
            self.notifier.watchdog_ping();
        }
    }

    /// Feeds the watchdog unless a stage is stuck, and sends the state line when it changed.
    pub fn check(&mut self, config: &Config, stats: &Stats) {
        let stuck = stats.progress.stuck();
        if stuck.is_empty() {
            if self.stuck {
                info!("Every stage makes progress again; feeding the watchdog.");
            }
            if self.notifier.watchdog_timeout().is_some() {
                self.notifier.watchdog_ping();
            }
        } else if !self.stuck {
            let (stage, busy) = &stuck[0];
            error!(stage = %stage, busy_s = busy.as_secs(), limit_s = config.device.stall_timeout_secs, "A stage is stuck; no more watchdog pings, so systemd restarts the daemon if it has a watchdog.");
        }
        self.stuck = !stuck.is_empty();
        let status = status_line(config, stats, &stuck);
        if status != self.status {
            self.notifier.status(&status);
            self.status = status;
        }
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.notifier.stopping();
    }
}

/// The one line `systemctl status` shows.
fn status_line(config: &Config, stats: &Stats, stuck: &[(String, Duration)]) -> String {
    if let Some((stage, busy)) = stuck.first() {
        return format!(
            "Stuck: {stage} busy for {} s; watchdog not fed",
            busy.as_secs()
        );
    }
    let shape = format!(
        "{} camera(s), {} task(s)",
        config.cameras.len(),
        config.tasks.len()
    );
    if stats.broker_connected.load(Ordering::Relaxed) {
        format!("Running: {shape}; broker connected")
    } else if stats.broker_connects.get() == 0 {
        format!("Running: {shape}; connecting to the broker")
    } else {
        format!("Degraded: broker down, answers wait in the outbox; {shape}")
    }
}
