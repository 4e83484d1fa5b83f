//! The embedded MQTT broker (rumqttd), started when no broker URL is configured so that a fresh box
//! works with no other software. It listens on loopback by default; the daemon connects to it like to
//! any other broker, so every other part of the code sees one kind of broker.
//!
//! rumqttd's `start` blocks for the broker's life and has no stop, so it runs on its own thread and ends
//! with the process. Its memory is bounded by the router's segment settings below: a few small segments
//! per topic filter, sized for answers and stats, not for bulk data.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info};

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
