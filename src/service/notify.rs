//! The systemd notify protocol (sd_notify(3)): one datagram per state change to the socket systemd
//! names in `NOTIFY_SOCKET`.
//!
//! Written here rather than taken from a crate because it is a dozen lines over `UnixDatagram` and it
//! reads its variables from `Env`, as the rest of the daemon does, so tests drive it with a socket of
//! their own without touching the process environment. Outside systemd (no `NOTIFY_SOCKET`) every
//! call does nothing. A failed send is logged once and never stops the daemon: systemd's own timeouts
//! (start, watchdog) are what notice a daemon that cannot reach it.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::warn;

use crate::env::Env;

/// A connection to the service manager, or nothing when not run by one.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// `WATCHDOG_USEC`, when the watchdog is on and meant for this process.
    watchdog: Option<Duration>,
    send_failed: AtomicBool,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` and `WATCHDOG_USEC` / `WATCHDOG_PID` describe.
    pub fn from_env(env: &Env) -> Notifier {
        let target = env.get("NOTIFY_SOCKET").and_then(|name| {
            let address = match name.strip_prefix('@') {
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
                None => SocketAddr::from_pathname(name),
            };
            match (UnixDatagram::unbound(), address) {
                (Ok(socket), Ok(address)) => Some((socket, address)),
                (Err(error), _) | (_, Err(error)) => {
                    warn!(socket = name, error = %error, "Cannot use NOTIFY_SOCKET; systemd will not hear from Lookout.");
                    None
                }
            }
        });
        let for_this_process = env
            .get("WATCHDOG_PID")
            .is_none_or(|pid| pid.trim() == std::process::id().to_string());
        let watchdog = env
            .get("WATCHDOG_USEC")
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_this_process)
            .map(Duration::from_micros);
        Notifier {
            target,
            watchdog,
            send_failed: AtomicBool::new(false),
        }
    }

    /// The watchdog's timeout, when systemd expects pings.
    pub(crate) fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.target.is_some())
    }

    /// Start-up is complete: the model is loaded and the pipeline runs.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// The one-line state `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// The daemon is alive and its stages make progress.
    pub(crate) fn watchdog_ping(&self) {
        self.send("WATCHDOG=1");
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=Shutting down");
    }

    fn send(&self, message: &str) {
        let Some((socket, address)) = &self.target else {
            return;
        };
        if let Err(error) = socket.send_to_addr(message.as_bytes(), address)
            && !self.send_failed.swap(true, Ordering::Relaxed)
        {
            warn!(error = %error, "Cannot notify systemd; later failures are not logged.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening() -> (tempfile::TempDir, UnixDatagram, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path.display().to_string())
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 512];
        let len = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..len].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_the_socket_one_datagram_each() {
        let (_dir, socket, path) = listening();
        let notifier = Notifier::from_env(&Env::from_pairs([("NOTIFY_SOCKET", path)]));
        notifier.ready("Running");
        notifier.watchdog_ping();
        notifier.stopping();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=Running");
        assert_eq!(receive(&socket), "WATCHDOG=1");
        assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=Shutting down");
    }

    #[test]
    fn the_watchdog_is_on_only_when_meant_for_this_process() {
        let (_dir, _socket, path) = listening();
        let with = |pid: Option<String>, usec: &str| {
            let mut pairs = vec![
                ("NOTIFY_SOCKET".to_owned(), path.clone()),
                ("WATCHDOG_USEC".to_owned(), usec.to_owned()),
            ];
            pairs.extend(pid.map(|pid| ("WATCHDOG_PID".to_owned(), pid)));
            Notifier::from_env(&Env::from_pairs(pairs)).watchdog_timeout()
        };
        let own = std::process::id().to_string();
        assert_eq!(with(None, "3000000"), Some(Duration::from_secs(3)));
        assert_eq!(with(Some(own), "3000000"), Some(Duration::from_secs(3)));
        assert_eq!(with(Some("1".to_owned()), "3000000"), None);
        assert_eq!(with(None, "0"), None);
        assert_eq!(with(None, "soon"), None);
        let without_socket = Env::from_pairs([("WATCHDOG_USEC", "3000000")]);
        assert_eq!(Notifier::from_env(&without_socket).watchdog_timeout(), None);
    }

    #[test]
    fn outside_systemd_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier::from_env(&Env::default());
        notifier.ready("Running");
        notifier.watchdog_ping();
        let missing =
            Notifier::from_env(&Env::from_pairs([("NOTIFY_SOCKET", "/nonexistent/notify")]));
        missing.status("Running");
        missing.status("Still running");
    }
}
