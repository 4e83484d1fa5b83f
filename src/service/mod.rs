//! The daemon's host: logging set-up, Unix signals turned into `app::Control` requests, and what
//! systemd hears (`notify`: the protocol; `watchdog`: readiness, state line and watchdog pings).
//!
//! SIGTERM and SIGINT ask for a graceful shutdown; a second one while shutting down exits at once (an
//! operator pressing Ctrl-C twice means it). SIGHUP asks for a config reload. Tests drive `app::run`
//! through the same control channel, so everything but the signal wiring itself is tested in-process.
//!
//! Logs go to stderr, one line per event with fields as `key=value`; colour only at a terminal, and no
//! timestamp under journald (`JOURNAL_STREAM` set), which stamps every line itself.

pub mod notify;
pub mod watchdog;

use std::io::IsTerminal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, warn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::app::{self, AppError, Control};
use crate::config::{Config, ConfigOrigin, Env, Layers};
use crate::vision::Analyser;

/// The default log filter: our info, the model runtime's and the embedded broker's warnings only.
pub const DEFAULT_LOG_FILTER: &str = "info,ort=warn,rumqttd=warn";

/// Exit status after a second shutdown signal.
const EXIT_INTERRUPTED: i32 = 130;

/// Logs to stderr (journald picks it up under systemd), filtered by `LOOKOUT_LOG`.
pub fn init_logging(env: &Env) {
    let requested = env
        .get("LOOKOUT_LOG")
        .map(|directives| (directives, EnvFilter::try_new(directives)));
    let filter = match &requested {
        Some((_, Ok(filter))) => filter.clone(),
        _ => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into journald or a log file.
        .with_ansi(std::io::stderr().is_terminal());
    // The embedded broker's ordinary events logged at ERROR are dropped (see `publish::broker`).
    let quiet = crate::publish::OrdinaryBrokerEvents;
    if env.get("JOURNAL_STREAM").is_some() {
        logs.without_time().finish().with(quiet).init();
    } else {
        logs.finish().with(quiet).init();
    }
    if let Some((directives, Err(error))) = requested {
        warn!(filter = %directives, error = %error, "LOOKOUT_LOG is not a valid filter; using the default.");
    }
}

/// Runs the daemon until a shutdown signal.
pub async fn run_until_signalled(
    origin: ConfigOrigin,
    env: Env,
    loaded: (Config, Layers),
    analyser: Box<dyn Analyser>,
) -> Result<(), AppError> {
    let (control, requests) = mpsc::channel(4);
    let signals = tokio::spawn(forward_signals(control));
    let result = app::run(origin, env, loaded, analyser, requests).await;
    signals.abort();
    result
}

async fn forward_signals(control: mpsc::Sender<Control>) {
    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("Cannot install signal handlers; stop the daemon with SIGKILL.");
        return;
    };
    let mut stopping = false;
    loop {
        let request = tokio::select! {
            _ = terminate.recv() => Control::Shutdown,
            _ = interrupt.recv() => Control::Shutdown,
            _ = hangup.recv() => Control::Reload,
        };
        if request == Control::Shutdown {
            if stopping {
                warn!("Second shutdown signal: exiting now.");
                std::process::exit(EXIT_INTERRUPTED);
            }
            stopping = true;
        }
        if control.send(request).await.is_err() {
            return;
        }
    }
}
