//! Which of the embedded broker's log events are noise.
//!
//! rumqttd logs some ordinary events at ERROR: a connection closed before its MQTT CONNECT (our own
//! readiness probe, any port check), both halves of a client's clean disconnect (the router lets go
//! of the link, then hears of the disconnect again), and a client whose socket was reset without a
//! DISCONNECT (a subscriber killed, or closing with bytes unread). `OrdinaryBrokerEvents`, installed
//! with the daemon's logging, drops exactly those from the log, so an ERROR line from the broker means
//! something went wrong; every other one is kept.

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// A log layer that drops rumqttd's ERROR events for ordinary happenings (see the module doc).
pub(crate) struct OrdinaryBrokerEvents;

impl<S: Subscriber> Layer<S> for OrdinaryBrokerEvents {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() != Level::ERROR || !metadata.target().starts_with("rumqttd") {
            return true;
        }
        let mut fields = BrokerFields::default();
        event.record(&mut fields);
        !fields.ordinary()
    }
}

/// The two fields rumqttd's error events carry.
#[derive(Default)]
struct BrokerFields {
    message: String,
    error: String,
}

impl Visit for BrokerFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

impl BrokerFields {
    fn ordinary(&self) -> bool {
        let message = self.message.as_str();
        // The peer closed the connection before sending CONNECT (aborted, or reset when it closed
        // with bytes unread, as a port check under load may).
        (message == "Error while handling MQTT connect packet"
            && (self.error.contains("ConnectionAborted") || self.error.contains("ConnectionReset")))
            // The router dropped the link of a client that disconnected.
            || (message == "router-drop" && self.error.starts_with("Recv("))
            // The disconnect heard twice: from the DISCONNECT packet and from the closed link.
            || (message.starts_with("no-connection id ") && message.ends_with(" is already gone"))
            // A connected client whose socket was reset (closed with bytes unread, or its process
            // killed) without a DISCONNECT; a plain close, rumqttd itself logs at INFO.
            || (message == "disconnected" && self.error.contains("ConnectionReset"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::layer::SubscriberExt;

    use tracing::error;

    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn logged(emit: impl FnOnce()) -> usize {
        let count = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(OrdinaryBrokerEvents)
            .with(Count(count.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        count.load(Ordering::SeqCst)
    }

    #[test]
    fn ordinary_broker_errors_are_dropped_and_real_ones_kept() {
        let aborted = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "closed by peer");
        let ordinary = logged(|| {
            error!(target: "rumqttd::server::broker", error = ?aborted, "Error while handling MQTT connect packet");
            error!(target: "rumqttd::server::broker", error = ?format_args!("Recv(Disconnected)"), "router-drop");
            error!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 0);
        });
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let ordinary = ordinary
            + logged(|| {
                error!(target: "rumqttd::server::broker", error = ?reset, "Error while handling MQTT connect packet");
                error!(target: "rumqttd::server::broker", error = ?format_args!("Network(Io({reset:?}))"), "disconnected");
            });
        assert_eq!(ordinary, 0);
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "no CONNECT");
        let real = logged(|| {
            error!(target: "rumqttd::server::broker", error = ?timed_out, "Error while handling MQTT connect packet");
            error!(target: "rumqttd::server::broker", error = ?format_args!("Send(SendError {{ .. }})"), "router-drop");
            error!(target: "rumqttd::server::broker", error = "address in use", "Server error - V4");
            error!(target: "rumqttd::server::broker", error = ?format_args!("Network(Io({timed_out:?}))"), "disconnected");
            // The same words from elsewhere, or below ERROR, are not the broker's to judge.
            error!(target: "lookout::publish", "router-drop");
            tracing::info!(target: "rumqttd::server::broker", error = ?aborted, "disconnected");
        });
        assert_eq!(real, 6);
    }
}
