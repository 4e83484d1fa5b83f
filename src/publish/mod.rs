//! Publishing over MQTT: answers (QoS 1), the retained `status` with its `offline` last will, retained
//! stats on an interval, and on-demand asks coming back in.
//!
//! rumqttc splits a connection into a client (a handle that queues requests) and an event loop that
//! must be polled for anything to move. Exactly one task, the driver, polls it; after a connection error
//! it sleeps with jittered exponential backoff before the next poll reconnects (rumqttc retries at once
//! otherwise, burning CPU and logs while a broker is down). The publisher task feeds the client from the
//! vision stage's outcomes; the client's request channel is bounded, so while the broker is away the
//! publisher waits and that wait travels upstream as backpressure.

mod broker;
mod topics;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::{Problems, validate};
use crate::gate::{ASK_TASK, Ask, AskError, AskRouter};
use crate::stats::Stats;
use crate::vision::{Answer, Outcome};

pub use broker::BrokerError;
pub use topics::Topics;

/// Requests the client may queue before `publish` waits (the bound on answers held in memory).
const REQUEST_CAPACITY: usize = 64;

/// How to reach the broker.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://[user:password@]host[:port]` or `mqtts://...`; `None` starts the embedded broker.
    pub url: Option<String>,
    pub embedded_listen: SocketAddr,
    pub prefix: String,
    pub client_id: Option<String>,
    pub keep_alive_secs: u64,
    pub stats_interval_secs: f64,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: None,
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            prefix: "lookout".to_owned(),
            client_id: None,
            keep_alive_secs: 30,
            stats_interval_secs: 30.0,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// The URL may carry a password: Debug shows it redacted.
impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("embedded_listen", &self.embedded_listen)
            .field("prefix", &self.prefix)
            .field("client_id", &self.client_id)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("stats_interval_secs", &self.stats_interval_secs)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish()
    }
}

/// The URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

/// The broker endpoint a config resolves to.
#[derive(Clone, PartialEq)]
struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
    credentials: Option<(String, String)>,
}

impl MqttConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        validate::topic_segment(problems, &format!("{path}.prefix"), &self.prefix);
        if let Some(client_id) = &self.client_id {
            validate::topic_segment(problems, &format!("{path}.client_id"), client_id);
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            problems.push(
                format!("{path}.keep_alive_secs"),
                format!("must be 5 to 3600, not {}", self.keep_alive_secs),
            );
        }
        validate::seconds(
            problems,
            &format!("{path}.stats_interval_secs"),
            self.stats_interval_secs,
        );
        let endpoint = match self.endpoint() {
            Ok(endpoint) => Some(endpoint),
            Err(reason) => {
                problems.push(format!("{path}.url"), reason);
                None
            }
        };
        for (field, file) in [
            ("ca_file", &self.ca_file),
            ("client_cert_file", &self.client_cert_file),
            ("client_key_file", &self.client_key_file),
        ] {
            let Some(file) = file else { continue };
            if !file.is_file() {
                problems.push(
                    format!("{path}.{field}"),
                    format!("{} is not a readable file", file.display()),
                );
            }
            if endpoint.as_ref().is_some_and(|endpoint| !endpoint.tls) {
                problems.push(
                    format!("{path}.{field}"),
                    "TLS files are only used with an mqtts:// url",
                );
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            problems.push(
                format!("{path}.client_cert_file"),
                "give both client_cert_file and client_key_file, or neither",
            );
        }
    }

    fn endpoint(&self) -> Result<Endpoint, String> {
        let Some(url) = &self.url else {
            return Ok(Endpoint {
                host: self.embedded_listen.ip().to_string(),
                port: self.embedded_listen.port(),
                tls: false,
                credentials: None,
            });
        };
        let parsed = url::Url::parse(url).map_err(|error| format!("not a URL ({error})"))?;
        let tls = match parsed.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("scheme {other:?} is not mqtt or mqtts")),
        };
        let host = parsed
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or("the URL has no host")?;
        if parsed.path().len() > 1 || parsed.query().is_some() {
            return Err("the URL must be just scheme, credentials, host and port".to_owned());
        }
        let decode = |text: &str| {
            url::form_urlencoded::parse(format!("x={text}").as_bytes())
                .next()
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        };
        let credentials = (!parsed.username().is_empty()).then(|| {
            (
                decode(parsed.username()),
                parsed.password().map(decode).unwrap_or_default(),
            )
        });
        Ok(Endpoint {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: parsed.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            credentials,
        })
    }

    /// Whether the daemon must start its own broker.
    pub fn uses_embedded_broker(&self) -> bool {
        self.url.is_none()
    }
}

/// Why publishing could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid broker settings: {0}")]
    Settings(String),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Starts the embedded broker when the config has no URL.
pub fn start_embedded_broker_if_needed(config: &MqttConfig) -> Result<(), PublishError> {
    if config.uses_embedded_broker() {
        broker::start(config.embedded_listen)?;
    }
    Ok(())
}

fn options(
    config: &MqttConfig,
    device: &str,
    topics: &Topics,
) -> Result<MqttOptions, PublishError> {
    let endpoint = config.endpoint().map_err(PublishError::Settings)?;
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("lookout-{device}"));
    let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_last_will(LastWill::new(
            topics.status(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some((user, password)) = endpoint.credentials {
        options.set_credentials(user, password);
    }
    if endpoint.tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| PublishError::ReadFile {
                path: path.clone(),
                source,
            })
        };
        let transport = match &config.ca_file {
            Some(ca_file) => {
                let client_auth = match (&config.client_cert_file, &config.client_key_file) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                };
                Transport::tls_with_config(TlsConfiguration::Simple {
                    ca: read(ca_file)?,
                    alpn: None,
                    client_auth,
                })
            }
            None => Transport::tls_with_default_config(),
        };
        options.set_transport(transport);
    }
    Ok(options)
}

/// Who the publisher is and where it publishes.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    pub mqtt: MqttConfig,
    pub device: String,
}

/// The error reply to an ask that could not be taken or answered.
#[derive(Debug, Serialize)]
struct AskFailure<'a> {
    device: &'a str,
    camera: &'a str,
    task: &'static str,
    ask_id: Option<&'a str>,
    error: String,
}

/// An answer as published: the answer with the device it came from.
#[derive(Serialize)]
struct Published<'a> {
    device: &'a str,
    #[serde(flatten)]
    answer: &'a Answer,
}

/// A configured MQTT connection, ready to run.
pub struct Publisher {
    client: AsyncClient,
    eventloop: EventLoop,
    replies: Replies,
    stats_interval: Duration,
}

impl Publisher {
    /// Builds the connection from settings (reading TLS files); connecting happens in `run`.
    pub fn new(
        settings: &PublishSettings,
        asks: AskRouter,
        stats: Arc<Stats>,
    ) -> Result<Publisher, PublishError> {
        let topics = Topics::new(&settings.mqtt.prefix, &settings.device);
        let options = options(&settings.mqtt, &settings.device, &topics)?;
        let (host, port) = options.broker_address();
        info!(broker = %format!("{host}:{port}"), client_id = %options.client_id(), "Connecting to the MQTT broker.");
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        Ok(Publisher {
            replies: Replies {
                client: client.clone(),
                topics,
                device: settings.device.clone(),
                asks,
                stats,
            },
            client,
            eventloop,
            stats_interval: Duration::from_secs_f64(settings.mqtt.stats_interval_secs),
        })
    }

    /// Publishes every outcome until `outcomes` closes, then says `offline` and disconnects.
    pub async fn run(self, mut outcomes: mpsc::Receiver<Outcome>) {
        let Publisher {
            client,
            eventloop,
            replies,
            stats_interval,
        } = self;
        let (topics, device, stats) = (
            replies.topics.clone(),
            replies.device.clone(),
            replies.stats.clone(),
        );
        let stop_driver = CancellationToken::new();
        let driver = tokio::spawn(drive(eventloop, replies, stop_driver.clone()));

        // The first stats go out on connect (see `Replies::on_connected`); then one per interval.
        let mut stats_ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + stats_interval, stats_interval);
        stats_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                outcome = outcomes.recv() => match outcome {
                    Some(outcome) => publish_outcome(&client, &topics, &device, &stats, outcome).await,
                    None => break,
                },
                _ = stats_ticks.tick() => publish_stats(&client, &topics, &stats),
            }
        }

        // Outcomes are drained. Say goodbye: a clean DISCONNECT suppresses the last will, so the retained
        // status is set to offline first. When the queue is full the broker is unreachable, and the will
        // it already holds says offline for us.
        let _ = client.try_publish(topics.status(), QoS::AtLeastOnce, true, "offline");
        let _ = client.try_disconnect();
        stop_driver.cancel();
        let _ = driver.await;
        info!("Disconnected from the MQTT broker.");
    }
}

/// The retained stats message, replaced by each newer one: QoS 0, and never waiting on a full queue.
fn publish_stats(client: &AsyncClient, topics: &Topics, stats: &Stats) {
    let payload = serde_json::to_vec(&stats.snapshot()).expect("stats serialize");
    if client
        .try_publish(topics.stats(), QoS::AtMostOnce, true, payload)
        .is_err()
    {
        debug!("Stats not published: the client's queue is full.");
    }
}

async fn publish_outcome(
    client: &AsyncClient,
    topics: &Topics,
    device: &str,
    stats: &Stats,
    outcome: Outcome,
) {
    let (topic, payload) = match &outcome {
        Outcome::Answered(answer) => (
            topics.answer(&answer.camera, &answer.task),
            serde_json::to_vec(&Published { device, answer }).expect("answers serialize"),
        ),
        // A failed ask is answered with its error; a failed task was logged and counted by vision.
        Outcome::Failed(failure) if failure.ask_id.is_some() => (
            topics.answer(&failure.camera, ASK_TASK),
            serde_json::to_vec(&AskFailure {
                device,
                camera: &failure.camera,
                task: ASK_TASK,
                ask_id: failure.ask_id.as_deref(),
                error: failure.error.clone(),
            })
            .expect("failures serialize"),
        ),
        Outcome::Failed(_) => return,
    };
    match client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
    {
        Ok(()) => stats.published.inc(),
        Err(error) => {
            stats.publish_failures.inc();
            warn!(error = %error, "Could not hand an answer to the MQTT client.");
        }
    }
}

/// What the driver needs to answer the broker: subscribe on connect, reply to bad asks.
struct Replies {
    client: AsyncClient,
    topics: Topics,
    device: String,
    asks: AskRouter,
    stats: Arc<Stats>,
}

impl Replies {
    fn on_connected(&self) {
        // The driver must never wait on the client it drains, hence try_*: on a full queue the next
        // connect repeats these.
        if self
            .client
            .try_subscribe(self.topics.asks(), QoS::AtLeastOnce)
            .is_err()
        {
            warn!("Could not subscribe to asks: the client's queue is full.");
        }
        if self
            .client
            .try_publish(self.topics.status(), QoS::AtLeastOnce, true, "online")
            .is_err()
        {
            warn!("Could not publish the online status: the client's queue is full.");
        }
        publish_stats(&self.client, &self.topics, &self.stats);
    }

    fn on_publish(&self, topic: &str, payload: &[u8]) {
        let Some(camera) = self.topics.ask_camera(topic) else {
            return;
        };
        let (ask_id, result) = match Ask::parse(payload) {
            Ok(ask) => (Some(ask.id.clone()), self.asks.route(camera, ask)),
            Err(error) => (None, Err(error)),
        };
        let Err(error) = result else { return };
        self.stats.asks_rejected.inc();
        warn!(camera = %camera, ask_id = ?ask_id, error = %error, "Rejected an ask.");
        self.reply_error(camera, ask_id.as_deref(), &error);
    }

    fn reply_error(&self, camera: &str, ask_id: Option<&str>, error: &AskError) {
        let payload = serde_json::to_vec(&AskFailure {
            device: &self.device,
            camera,
            task: ASK_TASK,
            ask_id,
            error: error.to_string(),
        })
        .expect("failures serialize");
        if self
            .client
            .try_publish(
                self.topics.answer(camera, ASK_TASK),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .is_err()
        {
            warn!(camera = %camera, "Could not reply to a rejected ask: the client's queue is full.");
        }
    }
}

/// Polls the event loop for the connection's life: the one task that does. Ends after the clean
/// disconnect once `stop` is cancelled, or at once when `stop` is cancelled while disconnected.
async fn drive(mut eventloop: EventLoop, replies: Replies, stop: CancellationToken) {
    let stats = replies.stats.clone();
    let mut backoff = Backoff::new();
    let mut connected = false;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = stop.cancelled(), if !connected => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                backoff.reset();
                stats.broker_connects.inc();
                stats.broker_connected.store(true, Ordering::Relaxed);
                info!("Connected to the MQTT broker.");
                replies.on_connected();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                replies.on_publish(&publish.topic, &publish.payload)
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                stats.broker_connected.store(false, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(error) => {
                connected = false;
                stats.broker_connected.store(false, Ordering::Relaxed);
                stats.broker_errors.inc();
                let delay = backoff.next_delay();
                if backoff.is_first_failure() {
                    warn!(error = %error, "MQTT connection failed; retrying with backoff.");
                } else {
                    debug!(error = %error, delay_ms = delay.as_millis() as u64, "MQTT connection still failing.");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_to_endpoints_with_decoded_credentials() {
        let config = |url: &str| MqttConfig {
            url: Some(url.to_owned()),
            ..MqttConfig::default()
        };
        let plain = config("mqtt://broker.local").endpoint().unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.tls),
            ("broker.local", 1883, false)
        );
        let secure = config("mqtts://u%40x:p%2Fw@10.0.0.2:9999")
            .endpoint()
            .unwrap();
        assert_eq!((secure.port, secure.tls), (9999, true));
        assert_eq!(
            secure.credentials,
            Some(("u@x".to_owned(), "p/w".to_owned()))
        );
        assert_eq!(config("mqtts://h").endpoint().unwrap().port, 8883);
        for bad in ["http://h", "mqtt://", "not a url", "mqtt://h/topic"] {
            assert!(config(bad).endpoint().is_err(), "{bad} accepted");
        }
        let embedded = MqttConfig::default().endpoint().unwrap();
        assert_eq!((embedded.host.as_str(), embedded.port), ("127.0.0.1", 1883));
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let config = MqttConfig {
            url: Some("mqtt://user:hunter2@h:1883".to_owned()),
            ..MqttConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user:REDACTED@h"), "{shown}");
    }
}
