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
//!
//! This file is the public face and the publisher task (outcomes into the outbox, stats on their
//! interval). Beside it: `config` (the `[mqtt]` section and the client options it becomes), `driver`
//! (the one task that polls the event loop), `inflight` (the packet ids it chooses and their windows),
//! `retained` (which retained messages a connection still needs), `inbound` (asks and config pushes
//! arriving), `answers` (what an outcome becomes in the outbox), `topics`, `discovery` (Home
//! Assistant) and `broker` (the embedded one).

mod answers;
mod broker;
mod config;
pub(crate) mod discovery;
mod driver;
mod inbound;
mod inflight;
mod retained;
mod topics;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, QoS};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use crate::message::AskRouter;
use crate::message::Outcome;
use crate::outbox::{Outbox, OutboxStatus};
use crate::stats::{Snapshot, Stats};
use answers::{log_answer, store_outcome};
use config::REQUEST_CAPACITY;
use discovery::HomeAssistantConfig;
use driver::Driver;
use inbound::Replies;

pub use broker::BrokerError;
pub use config::MqttConfig;
pub use topics::Topics;

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
pub(crate) fn start_embedded_broker_if_needed(config: &MqttConfig) -> Result<(), PublishError> {
    if config.uses_embedded_broker() {
        broker::start(config.embedded_listen)?;
    }
    Ok(())
}

/// Who the publisher is and where it publishes.
#[derive(Debug, Clone)]
pub(crate) struct PublishSettings {
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
pub(crate) struct ConfigChannel {
    pub pushes: Option<mpsc::Sender<Vec<u8>>>,
    pub retained: watch::Receiver<Retained>,
    pub log_answers: watch::Receiver<bool>,
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
pub(crate) struct Publisher {
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
        let options = config::options(&settings.mqtt, &settings.device, &topics)?;
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
        let driver = Driver::new(eventloop, replies, retained, window);
        let driver = tokio::spawn(driver.run(stop_driver.clone()));

        // The first stats go out on connect (see `Driver::on_subscribing`); then one per interval.
        let mut stats_ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + stats_interval, stats_interval);
        stats_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                outcome = outcomes.recv() => match outcome {
                    Some(outcome) => {
                        let (camera, task) = outcome.camera_and_task();
                        let span = info_span!("publish", camera = %camera, task = %task);
                        if let Outcome::Answered(answer) = &outcome && *log_answers.borrow() {
                            span.in_scope(|| log_answer(answer));
                        }
                        store_outcome(&outbox, &stats, &topics, &device, outcome)
                            .instrument(span)
                            .await;
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
