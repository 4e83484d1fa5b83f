//! Publishing over MQTT: answers (QoS 1, through the on-disk outbox), the retained `status` with its
//! `offline` last will, retained stats on an interval, and on-demand asks coming back in.
//!
//! rumqttc splits a connection into a client (a handle that queues requests) and an event loop that
//! must be polled for anything to move. Exactly one task, the driver, polls it; after a connection error
//! it sleeps with jittered exponential backoff before the next poll reconnects (rumqttc retries at once
//! otherwise, burning CPU and logs while a broker is down).
//!
//! Answers never wait on the broker. The publisher task stores each one in the outbox (on disk) and
//! moves on; the driver takes them from the outbox in order, at most `mqtt.inflight` at a time, and
//! completes each when the broker's PubAck for it arrives. To know which PubAck is whose, the driver
//! chooses the packet ids of every QoS 1 publish itself and hands the packets straight to the event
//! loop; rumqttc's client only carries subscriptions and the QoS 0 stats. The session is persistent
//! (clean session off, fixed client id), so asks sent while the box was away are delivered on return.
//! After a reconnect, whatever was in flight is sent again from the outbox, in order; a subscriber may
//! see an answer twice, with the same `id`, and never loses one.

mod broker;
pub mod discovery;
mod topics;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Disconnect, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish,
    QoS, Request, Subscribe, SubscribeFilter, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::errors::redact_url;
use crate::message::{ASK_TASK, Ack, Answer, Ask, AskError, AskRouter, Outcome, Tier, version_of};
use crate::outbox::{Outbox, OutboxStatus};
use crate::stats::{Snapshot, Stats};
use crate::validate::{self, FieldError, Problems};
use discovery::HomeAssistantConfig;

pub use broker::{BrokerError, OrdinaryBrokerEvents};
pub use topics::Topics;

/// Requests the client may queue (subscriptions and stats; answers do not pass through it).
const REQUEST_CAPACITY: usize = 64;
/// The largest packet read or written. Far above any answer or config push this daemon accepts, so an
/// oversized push arrives and is refused with an ack; rumqttc's default (10 kB) would drop the
/// connection instead, and the broker would deliver the same packet again after every reconnect.
const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;
/// Retained messages describing the box (config/reported, discovery) in flight at most.
const RETAINED_WINDOW: u16 = 2;
/// Packet ids kept beyond the answers' window: the retained messages' and two for the status, so that
/// `offline` goes out at shutdown even while `online` and every retained message are unacknowledged.
const STATUS_SLOTS: u16 = RETAINED_WINDOW + 2;

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
    /// Answers sent and not yet acknowledged, at most.
    pub inflight: u16,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// One INFO line per published answer; fleets turn it off (applied on reload).
    pub log_answers: bool,
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
            inflight: 16,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            log_answers: true,
        }
    }
}

impl MqttConfig {
    /// Whether `other` differs in a field that takes effect only at the next start (all but
    /// `log_answers`, which the publisher follows live).
    pub fn needs_restart_against(&self, other: &MqttConfig) -> bool {
        let live = |config: &MqttConfig| MqttConfig {
            log_answers: true,
            ..config.clone()
        };
        live(self) != live(other)
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
            .field("inflight", &self.inflight)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("log_answers", &self.log_answers)
            .finish()
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
        if !(1..=1000).contains(&self.inflight) {
            problems.push(
                format!("{path}.inflight"),
                format!("must be 1 to 1000, not {}", self.inflight),
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
        .set_clean_session(false)
        // Room for every packet id the driver may choose, so rumqttc never holds back the client's
        // own requests on their account.
        .set_inflight(config.inflight + STATUS_SLOTS + 1)
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
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
    /// Home Assistant's announcements of itself re-send the discovery messages.
    pub home_assistant: HomeAssistantConfig,
}

/// Retained messages that describe the box (`config/reported`, Home Assistant discovery): topic to
/// payload, an empty payload clearing the topic.
pub type Retained = BTreeMap<String, Vec<u8>>;

/// The publisher's part in remote configuration: pushes received on `config/desired` go to `pushes`
/// (when remote config is on); each of the latest `retained` messages is published on every connect
/// and whenever its payload changes. Acks are answers like any other: they go through the outbox.
/// `log_answers` follows `mqtt.log_answers` across reloads.
pub struct ConfigChannel {
    pub pushes: Option<mpsc::Sender<Vec<u8>>>,
    pub retained: watch::Receiver<Retained>,
    pub log_answers: watch::Receiver<bool>,
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

/// The stats message: the counters, the outbox's state and the offline escalation queue's.
#[derive(Serialize)]
struct StatsMessage {
    #[serde(flatten)]
    counters: Snapshot,
    outbox: OutboxStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    escalation_queue: Option<OutboxStatus>,
}

/// A configured MQTT connection, ready to run.
pub struct Publisher {
    client: AsyncClient,
    eventloop: EventLoop,
    replies: Replies,
    retained: watch::Receiver<Retained>,
    log_answers: watch::Receiver<bool>,
    stats_interval: Duration,
    window: u16,
}

impl Publisher {
    /// Builds the connection from settings (reading TLS files); connecting happens in `run`.
    pub fn new(
        settings: &PublishSettings,
        asks: AskRouter,
        stats: Arc<Stats>,
        outbox: Arc<Outbox>,
        escalation_queue: Option<Arc<Outbox>>,
        config_channel: ConfigChannel,
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
                outbox,
                escalation_queue,
                pushes: config_channel.pushes,
                home_assistant: settings.home_assistant.clone(),
            },
            retained: config_channel.retained,
            log_answers: config_channel.log_answers,
            client,
            eventloop,
            stats_interval: Duration::from_secs_f64(settings.mqtt.stats_interval_secs),
            window: settings.mqtt.inflight,
        })
    }

    /// Stores every outcome in the outbox until `outcomes` closes, then says `offline` and disconnects.
    /// What the broker has not acknowledged by then stays in the outbox for the next start.
    pub async fn run(self, mut outcomes: mpsc::Receiver<Outcome>) {
        let Publisher {
            client,
            eventloop,
            replies,
            retained,
            log_answers,
            stats_interval,
            window,
        } = self;
        let (topics, device, stats, outbox, escalation_queue) = (
            replies.topics.clone(),
            replies.device.clone(),
            replies.stats.clone(),
            replies.outbox.clone(),
            replies.escalation_queue.clone(),
        );
        let stop_driver = CancellationToken::new();
        let driver = tokio::spawn(drive(
            eventloop,
            replies,
            retained,
            window,
            stop_driver.clone(),
        ));

        // The first stats go out on connect (see `Replies::on_subscribing`); then one per interval.
        let mut stats_ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + stats_interval, stats_interval);
        stats_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                outcome = outcomes.recv() => match outcome {
                    Some(outcome) => {
                        if let Outcome::Answered(answer) = &outcome && *log_answers.borrow() {
                            log_answer(answer);
                        }
                        store_outcome(&outbox, &stats, &topics, &device, outcome).await;
                    }
                    None => break,
                },
                _ = stats_ticks.tick() => {
                    publish_stats(&client, &topics, &stats, &outbox, escalation_queue.as_deref());
                }
            }
        }
        stop_driver.cancel();
        let _ = driver.await;
        info!("Disconnected from the MQTT broker.");
    }
}

/// The retained stats message, replaced by each newer one: QoS 0, and never waiting on a full queue.
/// None is queued while the broker is away (each would be stale when it arrived, and a subscriber
/// would read old figures as news); the connect publishes fresh ones.
fn publish_stats(
    client: &AsyncClient,
    topics: &Topics,
    stats: &Stats,
    outbox: &Outbox,
    escalation_queue: Option<&Outbox>,
) {
    if !stats.broker_connected.load(Ordering::Relaxed) {
        return;
    }
    let message = StatsMessage {
        counters: stats.snapshot(),
        outbox: outbox.status(),
        escalation_queue: escalation_queue.map(Outbox::status),
    };
    let payload = serde_json::to_vec(&message).expect("stats serialize");
    let payload = crate::errors::redact_bytes(&payload).into_owned();
    if client
        .try_publish(topics.stats(), QoS::AtMostOnce, true, payload)
        .is_err()
    {
        debug!("Stats not published: the client's queue is full.");
    }
}

/// Stores an outcome's message in the outbox (a synced disk write, so off the async threads).
async fn store_outcome(
    outbox: &Arc<Outbox>,
    stats: &Stats,
    topics: &Topics,
    device: &str,
    outcome: Outcome,
) {
    let (topic, payload, id) = match &outcome {
        Outcome::Answered(answer) => {
            count_answer(stats, answer);
            (
                topics.answer(&answer.camera, &answer.task),
                serde_json::to_vec(&Published { device, answer }).expect("answers serialize"),
                Some(answer.id),
            )
        }
        // A failed ask is answered with its error; a failed task was logged and counted by vision.
        Outcome::Failed(failure) if failure.ask_id.is_some() => {
            let (topic, payload) = ask_failure(
                topics,
                device,
                &failure.camera,
                failure.ask_id.as_deref(),
                failure.error.clone(),
            );
            (topic, payload, None)
        }
        Outcome::Failed(_) => return,
    };
    let outbox = outbox.clone();
    let _working = stats.progress.working("publish");
    match tokio::task::spawn_blocking(move || outbox.push(&topic, &payload)).await {
        Ok(seq) => match id {
            Some(id) => debug!(id = %id, seq, "Stored an answer in the outbox."),
            None => debug!(seq, "Stored an ask's error reply in the outbox."),
        },
        Err(failure) => warn!(error = %failure, "Storing an answer in the outbox failed."),
    }
}

/// Answers are cut to this many characters in the log line: enough to see what was answered.
const LOGGED_ANSWER_CHARS: usize = 80;

/// The one line per published answer, so that a running daemon is seen working.
fn log_answer(answer: &Answer) {
    // Redacted before it is cut: a cut through a secret would leave its start unrecognised.
    let whole = crate::errors::redact(&answer.answer);
    let text: String = whole.chars().take(LOGGED_ANSWER_CHARS).collect();
    let cut = if text.len() < whole.len() { "…" } else { "" };
    let tier = match answer.tier {
        Tier::Local => "local",
        Tier::Cloud => "cloud",
    };
    info!(
        camera = %answer.camera,
        task = %answer.task,
        answer = ?format!("{text}{cut}"),
        confidence = answer.confidence,
        tier = %tier,
        total_ms = answer.timings_ms.total.round() as u64,
        "Answered."
    );
}

/// Counts an answer for metrics: its tier, its confidence and its time in each stage.
fn count_answer(stats: &Stats, answer: &Answer) {
    let metrics = &stats.published_answers;
    let (count, confidence) = match answer.tier {
        Tier::Local => (&metrics.local, &metrics.local_confidence),
        Tier::Cloud => (&metrics.cloud, &metrics.cloud_confidence),
    };
    count.inc();
    if let Some(value) = answer.confidence {
        confidence.observe(value);
    }
    let timings = &answer.timings_ms;
    let stages = [
        Some(timings.capture),
        Some(timings.stages.preprocess),
        Some(timings.stages.vision),
        Some(timings.stages.prefill),
        Some(timings.stages.decode),
        timings.cloud,
        Some(timings.total),
    ];
    for (histogram, millis) in metrics.stage_seconds.iter().zip(stages) {
        if let Some(millis) = millis {
            histogram.observe(millis / 1000.0);
        }
    }
}

/// The topic and payload of the error reply to an ask.
fn ask_failure(
    topics: &Topics,
    device: &str,
    camera: &str,
    ask_id: Option<&str>,
    error: String,
) -> (String, Vec<u8>) {
    let payload = serde_json::to_vec(&AskFailure {
        device,
        camera,
        task: ASK_TASK,
        ask_id,
        error,
    })
    .expect("failures serialize");
    (topics.answer(camera, ASK_TASK), payload)
}

/// What a packet id in flight carries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Carried {
    /// The outbox entry with this sequence number.
    Answer(u64),
    Status,
    /// A retained message describing the box (see `Retained`).
    Retained,
    /// The asks subscription, whose id rumqttc chooses.
    Subscription,
}

/// The QoS 1 publishes in flight on this connection, by the packet id the driver chose for each.
struct InFlight {
    window: u16,
    by_pkid: HashMap<u16, Carried>,
    answers: u16,
    retained: u16,
    last_pkid: u16,
}

impl InFlight {
    fn new(window: u16) -> InFlight {
        InFlight {
            window,
            by_pkid: HashMap::new(),
            answers: 0,
            retained: 0,
            last_pkid: 0,
        }
    }

    fn has_room_for_answers(&self) -> bool {
        self.answers < self.window
    }

    /// A free packet id for `carried`, the next one after the last in cyclic order (as the MQTT
    /// specification expects), or `None` when none is free.
    fn assign(&mut self, carried: Carried) -> Option<u16> {
        if matches!(carried, Carried::Answer(_)) && !self.has_room_for_answers() {
            return None;
        }
        if carried == Carried::Retained && self.retained >= RETAINED_WINDOW {
            return None;
        }
        let max = self.window + STATUS_SLOTS;
        let pkid = (1..=max)
            .map(|step| (self.last_pkid + step - 1) % max + 1)
            .find(|pkid| !self.by_pkid.contains_key(pkid))?;
        self.last_pkid = pkid;
        self.by_pkid.insert(pkid, carried);
        match carried {
            Carried::Answer(_) => self.answers += 1,
            Carried::Retained => self.retained += 1,
            Carried::Status | Carried::Subscription => {}
        }
        Some(pkid)
    }

    /// Marks an id rumqttc chose as taken until it is acknowledged.
    fn reserve(&mut self, pkid: u16, carried: Carried) {
        self.by_pkid.insert(pkid, carried);
    }

    fn acknowledged(&mut self, pkid: u16) -> Option<Carried> {
        let carried = self.by_pkid.remove(&pkid)?;
        match carried {
            Carried::Answer(_) => self.answers -= 1,
            Carried::Retained => self.retained -= 1,
            Carried::Status | Carried::Subscription => {}
        }
        Some(carried)
    }

    fn clear(&mut self) {
        self.by_pkid.clear();
        self.answers = 0;
        self.retained = 0;
    }
}

/// A QoS 1 publish with the driver's packet id, for the event loop's queue. Every QoS 1 payload
/// passes here, and leaves without the secrets the process holds (`errors::redact_bytes`).
fn qos1(topic: String, payload: Vec<u8>, pkid: u16, retain: bool) -> Request {
    let payload = crate::errors::redact_bytes(&payload).into_owned();
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
    publish.pkid = pkid;
    publish.retain = retain;
    Request::Publish(publish)
}

/// Hands the event loop the next answers from the outbox while the window has room; each task's
/// answer also becomes that task's retained state.
fn send_waiting(
    eventloop: &mut EventLoop,
    outbox: &Outbox,
    in_flight: &mut InFlight,
    topics: &Topics,
    states: &mut RetainedState,
) {
    while in_flight.has_room_for_answers() {
        let Some(item) = outbox.next_unsent() else {
            return;
        };
        if let Some(state) = topics.state_of_answer(&item.key) {
            states.set(state, item.payload.clone());
        }
        let pkid = in_flight
            .assign(Carried::Answer(item.seq))
            .expect("the window has room");
        eventloop
            .pending
            .push_back(qos1(item.key, item.payload, pkid, false));
    }
}

/// Queues a retained status message (`online` / `offline`), if a status packet id is free.
fn send_status(eventloop: &mut EventLoop, in_flight: &mut InFlight, topics: &Topics, status: &str) {
    let Some(pkid) = in_flight.assign(Carried::Status) else {
        warn!(
            status,
            "Status not published: the broker has not acknowledged earlier ones."
        );
        return;
    };
    eventloop
        .pending
        .push_back(qos1(topics.status(), status.into(), pkid, true));
}

/// The retained messages describing the box, and which of them this connection still needs: all of
/// them after a connect, the changed ones after an update, the discovery ones when Home Assistant
/// restarts. Only those are compared or sent, so the driver's loop does no work for them otherwise.
struct RetainedState {
    current: Retained,
    due: BTreeSet<String>,
}

impl RetainedState {
    fn new(current: Retained) -> RetainedState {
        let due = current.keys().cloned().collect();
        RetainedState { current, due }
    }

    /// A new connection has none of them.
    fn all_due(&mut self) {
        self.due = self.current.keys().cloned().collect();
    }

    /// The messages whose payload differs from the current one become due.
    fn update(&mut self, new: Retained) {
        for (topic, payload) in &new {
            if self.current.get(topic) != Some(payload) {
                self.due.insert(topic.clone());
            }
        }
        self.current = new;
    }

    /// Sets one message, due when its payload changed.
    fn set(&mut self, topic: String, payload: Vec<u8>) {
        if self.current.get(&topic) != Some(&payload) {
            self.due.insert(topic.clone());
            self.current.insert(topic, payload);
        }
    }

    /// Every message under `prefix` becomes due again.
    fn due_under(&mut self, prefix: &str) {
        let under = self
            .current
            .keys()
            .filter(|topic| topic.starts_with(prefix));
        self.due.extend(under.cloned());
    }

    /// Hands the event loop the due messages while the retained window has room.
    fn send_due(&mut self, eventloop: &mut EventLoop, in_flight: &mut InFlight) {
        while let Some(topic) = self.due.first().cloned() {
            if let Some(payload) = self.current.get(&topic) {
                let Some(pkid) = in_flight.assign(Carried::Retained) else {
                    return;
                };
                eventloop
                    .pending
                    .push_back(qos1(topic.clone(), payload.clone(), pkid, true));
            }
            self.due.remove(&topic);
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
    outbox: Arc<Outbox>,
    escalation_queue: Option<Arc<Outbox>>,
    pushes: Option<mpsc::Sender<Vec<u8>>>,
    home_assistant: HomeAssistantConfig,
}

impl Replies {
    /// The subscription goes first, alone: rumqttc chooses its packet id, and the driver must know it
    /// before choosing any of its own (brokers mishandle two packets in flight with one id).
    fn on_connected(&self, eventloop: &mut EventLoop) {
        let mut filters = vec![
            SubscribeFilter::new(self.topics.asks(), QoS::AtLeastOnce),
            SubscribeFilter::new(self.home_assistant.status_topic(), QoS::AtLeastOnce),
        ];
        if self.pushes.is_some() {
            filters.push(SubscribeFilter::new(
                self.topics.config_desired(),
                QoS::AtLeastOnce,
            ));
        }
        eventloop
            .pending
            .push_back(Request::Subscribe(Subscribe::new_many(filters)));
    }

    /// The subscription has its id: say online, then answers may follow.
    fn on_subscribing(&self, eventloop: &mut EventLoop, in_flight: &mut InFlight) {
        send_status(eventloop, in_flight, &self.topics, "online");
        // The driver must never wait on the client it drains, hence try_publish inside.
        publish_stats(
            &self.client,
            &self.topics,
            &self.stats,
            &self.outbox,
            self.escalation_queue.as_deref(),
        );
    }

    /// Whether this message is Home Assistant announcing that it (re)started.
    fn home_assistant_restarted(&self, topic: &str, payload: &[u8]) -> bool {
        topic == self.home_assistant.status_topic() && payload == b"online"
    }

    fn on_publish(&self, topic: &str, payload: &[u8]) {
        if topic == self.topics.config_desired() {
            return self.on_push(payload);
        }
        let Some(camera) = self.topics.ask_camera(topic) else {
            return;
        };
        self.stats.asks_received.inc();
        let (ask_id, result) = match Ask::parse(payload) {
            Ok(ask) => (Some(ask.id.clone()), self.asks.route(camera, ask)),
            Err(error) => (Ask::readable_id(payload), Err(error)),
        };
        let Err(error) = result else { return };
        self.stats.asks_rejected.inc();
        warn!(camera = %camera, ask_id = ?ask_id, error = %error, "Rejected an ask.");
        self.reply_error(camera, ask_id.as_deref(), &error);
    }

    /// Hands a config push to the daemon, or acks it as refused when the daemon cannot take it now.
    fn on_push(&self, payload: &[u8]) {
        let Some(pushes) = &self.pushes else { return };
        let refusal = match pushes.try_send(payload.to_vec()) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "too many pushes are waiting; send it again",
            Err(mpsc::error::TrySendError::Closed(_)) => "the box is shutting down; send it again",
        };
        warn!(reason = refusal, "Refused a config push.");
        let ack = Ack::refused(version_of(payload), vec![FieldError::new("", refusal)]);
        self.outbox.push(&self.topics.config_ack(), &ack.to_json());
    }

    /// The error reply to a rejected ask goes through the outbox like any answer. Stored inline: a
    /// rare, small write, and the driver sends it next.
    fn reply_error(&self, camera: &str, ask_id: Option<&str>, error: &AskError) {
        let (topic, payload) = ask_failure(
            &self.topics,
            &self.device,
            camera,
            ask_id,
            error.to_string(),
        );
        self.outbox.push(&topic, &payload);
    }
}

/// Polls the event loop for the connection's life: the one task that does. Ends after the clean
/// disconnect once `stop` is cancelled, or at once when `stop` is cancelled while disconnected.
async fn drive(
    mut eventloop: EventLoop,
    replies: Replies,
    mut retained: watch::Receiver<Retained>,
    window: u16,
    stop: CancellationToken,
) {
    let (stats, outbox) = (replies.stats.clone(), replies.outbox.clone());
    let mut describing = RetainedState::new(retained.borrow_and_update().clone());
    // Each task's latest answer, retained on its state topic (see `Topics::state`).
    let mut states = RetainedState::new(Retained::new());
    let mut backoff = Backoff::new();
    let mut in_flight = InFlight::new(window);
    // Connected, and the subscription's packet id is known: the driver may choose its own.
    let mut ready = false;
    let mut stopping = false;
    loop {
        if ready && !stopping {
            describing.send_due(&mut eventloop, &mut in_flight);
            states.send_due(&mut eventloop, &mut in_flight);
            send_waiting(
                &mut eventloop,
                &outbox,
                &mut in_flight,
                &replies.topics,
                &mut states,
            );
        }
        let room = in_flight.has_room_for_answers();
        let event = tokio::select! {
            event = eventloop.poll() => event,
            () = outbox.arrived(), if ready && !stopping && room => continue,
            Ok(()) = retained.changed() => {
                describing.update(retained.borrow_and_update().clone());
                continue;
            }
            () = stop.cancelled(), if !stopping => {
                if !ready {
                    return;
                }
                // A clean DISCONNECT suppresses the last will, so the retained status says offline
                // first. Unacknowledged answers stay in the outbox for the next start.
                stopping = true;
                send_status(&mut eventloop, &mut in_flight, &replies.topics, "offline");
                eventloop.pending.push_back(Request::Disconnect(Disconnect));
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                stats.broker_connects.inc();
                stats.broker_connected.store(true, Ordering::Relaxed);
                info!(
                    session_present = ack.session_present,
                    "Connected to the MQTT broker."
                );
                // rumqttc would resend the last connection's unacknowledged publishes itself, with
                // the old packet ids and out of order; the outbox sends them again, in order.
                eventloop.pending.retain(
                    |request| !matches!(request, Request::Publish(publish) if publish.qos != QoS::AtMostOnce),
                );
                in_flight.clear();
                outbox.resend_all();
                describing.all_due();
                states.all_due();
                replies.on_connected(&mut eventloop);
            }
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                in_flight.reserve(pkid, Carried::Subscription);
                ready = true;
                replies.on_subscribing(&mut eventloop, &mut in_flight);
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                in_flight.acknowledged(ack.pkid);
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(Carried::Answer(seq)) = in_flight.acknowledged(ack.pkid) {
                    outbox.complete(seq);
                    stats.published.inc();
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if replies.home_assistant_restarted(&publish.topic, &publish.payload) {
                    let prefix = format!("{}/", replies.home_assistant.prefix);
                    describing.due_under(&prefix);
                    states.all_due();
                    info!(
                        "Home Assistant started: sending the discovery messages and states again."
                    );
                } else {
                    replies.on_publish(&publish.topic, &publish.payload);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                stats.broker_connected.store(false, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(error) => {
                ready = false;
                stats.broker_connected.store(false, Ordering::Relaxed);
                stats.broker_errors.inc();
                if stopping {
                    return;
                }
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
    fn packet_ids_cycle_skip_those_in_flight_and_respect_the_window() {
        let mut in_flight = InFlight::new(2);
        in_flight.reserve(1, Carried::Subscription);
        assert_eq!(in_flight.assign(Carried::Status), Some(2));
        assert_eq!(in_flight.assign(Carried::Answer(10)), Some(3));
        assert_eq!(in_flight.assign(Carried::Answer(11)), Some(4));
        // The window (2 answers) is full, though an id is free for a status.
        assert_eq!(in_flight.assign(Carried::Answer(12)), None);
        assert_eq!(in_flight.acknowledged(3), Some(Carried::Answer(10)));
        // Retained messages have a window of their own (2), leaving ids for the status.
        assert_eq!(in_flight.assign(Carried::Retained), Some(5));
        assert_eq!(in_flight.assign(Carried::Retained), Some(6));
        assert_eq!(in_flight.assign(Carried::Retained), None);
        assert_eq!(in_flight.assign(Carried::Status), Some(3));
        assert_eq!(in_flight.acknowledged(5), Some(Carried::Retained));
        assert_eq!(in_flight.acknowledged(3), Some(Carried::Status));
        // Ids run to the window plus the status slots (2 + 4), then wrap around.
        assert_eq!(in_flight.assign(Carried::Answer(12)), Some(5));
        assert_eq!(in_flight.acknowledged(6), Some(Carried::Retained));
        assert_eq!(in_flight.acknowledged(5), Some(Carried::Answer(12)));
        // Cyclic: after 6 comes 1, which the subscription holds, then 2 (status), then 3.
        assert_eq!(in_flight.assign(Carried::Answer(13)), Some(6));
        assert_eq!(in_flight.assign(Carried::Answer(14)), None);
        assert_eq!(in_flight.acknowledged(4), Some(Carried::Answer(11)));
        assert_eq!(in_flight.assign(Carried::Answer(14)), Some(3));
        assert_eq!(in_flight.acknowledged(1), Some(Carried::Subscription));
        assert_eq!(in_flight.acknowledged(1), None);
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
