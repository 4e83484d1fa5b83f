//! The embedded MQTT broker (rumqttd), started when no broker URL is configured so that a fresh box
//! works with no other software. It listens on loopback by default; the daemon connects to it like to
//! any other broker, so every other part of the code sees one kind of broker.
//!
//! rumqttd's `start` blocks for the broker's life and has no stop, so it runs on its own thread and ends
//! with the process. Its memory is bounded by the router's segment settings below: a few small segments
//! per topic filter, sized for answers and stats, not for bulk data.
//!
//! rumqttd logs some ordinary events at ERROR: a connection closed before its MQTT CONNECT (our own
//! readiness probe, any port check), and both halves of a client's clean disconnect (the router lets go
//! of the link, then hears of the disconnect again). `OrdinaryBrokerEvents` drops exactly those from the
//! log, so an ERROR line from the broker means something went wrong; every other one is kept.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber, error, info};
use tracing_subscriber::layer::{Context, Layer};

/// Why the embedded broker did not come up.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "the embedded MQTT broker cannot listen on {listen}: {source} (is another broker running there? set mqtt.url or LOOKOUT_MQTT_URL to use it)"
    )]
    Listen {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded MQTT broker did not start accepting connections on {0}")]
    NotReady(SocketAddr),
}

fn config(listen: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "lookout-embedded".to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("lookout".to_owned(), server)])),
        ..Config::default()
    }
}

/// Starts the broker on `listen` and returns once it accepts connections.
pub fn start(listen: SocketAddr) -> Result<(), BrokerError> {
    // rumqttd only logs a failed bind from its own thread; checking first turns it into an error here.
    drop(TcpListener::bind(listen).map_err(|source| BrokerError::Listen { listen, source })?);
    let mut broker = Broker::new(config(listen));
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            if let Err(failure) = broker.start() {
                error!(error = %failure, "The embedded MQTT broker stopped.");
            }
        })
        .map_err(|source| BrokerError::Listen { listen, source })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            info!(listen = %listen, "Embedded MQTT broker started.");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotReady(listen))
}

/// A log layer that drops rumqttd's ERROR events for ordinary happenings (see the module doc).
pub struct OrdinaryBrokerEvents;

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
        // The peer closed the connection before sending CONNECT.
        (message == "Error while handling MQTT connect packet" && self.error.contains("ConnectionAborted"))
            // The router dropped the link of a client that disconnected.
            || (message == "router-drop" && self.error.starts_with("Recv("))
            // The disconnect heard twice: from the DISCONNECT packet and from the closed link.
            || (message.starts_with("no-connection id ") && message.ends_with(" is already gone"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::layer::SubscriberExt;

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
        assert_eq!(ordinary, 0);
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "no CONNECT");
        let real = logged(|| {
            error!(target: "rumqttd::server::broker", error = ?timed_out, "Error while handling MQTT connect packet");
            error!(target: "rumqttd::server::broker", error = ?format_args!("Send(SendError {{ .. }})"), "router-drop");
            error!(target: "rumqttd::server::broker", error = "address in use", "Server error - V4");
            // The same words from elsewhere, or below ERROR, are not the broker's to judge.
            error!(target: "lookout::publish", "router-drop");
            tracing::info!(target: "rumqttd::server::broker", error = ?aborted, "disconnected");
        });
        assert_eq!(real, 5);
    }
}
