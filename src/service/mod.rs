//! The daemon's host: logging set-up, Unix signals turned into `app::Control` requests, and what
//! systemd hears (`notify`: the protocol; `watchdog`: readiness, state line and watchdog pings).
//!
//! SIGTERM and SIGINT ask for a graceful shutdown; a second one while shutting down exits at once (an
//! operator pressing Ctrl-C twice means it). SIGHUP asks for a config reload. `app` runs the daemon on
//! these requests; tests drive `app::run` through the same control channel, so everything but the
//! signal wiring itself is tested in-process.
//!
//! Logs go to stderr, one line per event with fields as `key=value`; colour only at a terminal, and no
//! timestamp under journald (`JOURNAL_STREAM` set), which stamps every line itself. Every line passes
//! one writer that replaces the secrets the process holds (`errors::redact_bytes`), whichever crate
//! logged it and at whatever level: it sees the event's whole text at once, so a secret the formatter
//! writes in two pieces is still found.

mod broker_log;
pub mod devices;
pub mod notify;
pub(crate) mod watchdog;

use std::io::{IsTerminal, Write};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, warn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config;
use crate::env::Env;
use crate::errors;

/// The default log filter: our info, the model runtime's and the embedded broker's warnings only.
pub(crate) const DEFAULT_LOG_FILTER: &str = "info,ort=warn,rumqttd=warn";

/// Exit status after a second shutdown signal.
const EXIT_INTERRUPTED: i32 = 130;

/// Logs to stderr (journald picks it up under systemd), filtered by `LOOKOUT_LOG`, without the
/// secrets the process holds; the environment's are held from the first line on.
pub fn init_logging(env: &Env) {
    errors::hold(&config::environment_secrets(env));
    let requested = env
        .get("LOOKOUT_LOG")
        .map(|directives| (directives, EnvFilter::try_new(directives)));
    let filter = match &requested {
        Some((_, Ok(filter))) => filter.clone(),
        _ => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactedStderr)
        // Colour codes only for a person at a terminal, never into journald or a log file.
        .with_ansi(std::io::stderr().is_terminal());
    // The embedded broker's ordinary events logged at ERROR are dropped (see `broker_log`).
    let quiet = broker_log::OrdinaryBrokerEvents;
    if env.get("JOURNAL_STREAM").is_some() {
        logs.without_time().finish().with(quiet).init();
    } else {
        logs.finish().with(quiet).init();
    }
    if let Some((directives, Err(error))) = requested {
        warn!(filter = %directives, error = %error, "LOOKOUT_LOG is not a valid filter; using the default.");
    }
}

/// Makes one `Redacted` writer per event, onto stderr.
struct RedactedStderr;

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = Redacted<std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Redacted::new(std::io::stderr())
    }
}

/// Collects one event's text and writes it to `out` redacted, in one write, when dropped.
struct Redacted<W: Write> {
    text: Vec<u8>,
    out: W,
}

impl<W: Write> Redacted<W> {
    fn new(out: W) -> Redacted<W> {
        Redacted {
            text: Vec::new(),
            out,
        }
    }
}

impl<W: Write> Write for Redacted<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for Redacted<W> {
    fn drop(&mut self) {
        // A log line that cannot be written has nowhere to be reported.
        let _ = self.out.write_all(&errors::redact_bytes(&self.text));
    }
}

/// What the host (signals, tests) asks of a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Read the config again; apply it if valid, else keep the running one.
    Reload,
    /// Stop gracefully.
    Shutdown,
}

/// Turns SIGTERM and SIGINT into `Control::Shutdown` and SIGHUP into `Control::Reload` on `control`
/// until it closes; a second shutdown signal exits at once.
pub(crate) async fn forward_signals(control: mpsc::Sender<Control>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_written_in_pieces_is_redacted_from_the_line() {
        errors::hold_secret("log-secret-for-the-writer-test");
        let mut out = Vec::new();
        {
            let mut line = Redacted::new(&mut out);
            line.write_all(b"level=WARN error=\"key log-secret-")
                .unwrap();
            line.write_all(b"for-the-writer-test refused\"\n").unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "level=WARN error=\"key REDACTED refused\"\n"
        );
    }
}
