//! What the broker sends the box: asks, routed to their camera or refused with an error reply, and
//! config pushes, handed to the daemon or refused with an ack; and the subscription that brings them.

use std::sync::Arc;

use rumqttc::{AsyncClient, EventLoop, QoS, Request, Subscribe, SubscribeFilter};
use tokio::sync::mpsc;
use tracing::warn;

use super::Topics;
use super::answers::ask_failure;
use super::discovery::HomeAssistantConfig;
use crate::message::{Ask, AskError, AskRouter};
use crate::outbox::Outbox;
use crate::stats::Stats;

/// What the driver needs to answer the broker: subscribe on connect, reply to bad asks, hand on
/// pushes; and the handles its stats on each connect need.
pub(super) struct Replies {
    pub(super) client: AsyncClient,
    pub(super) topics: Topics,
    pub(super) device: String,
    pub(super) asks: AskRouter,
    pub(super) stats: Arc<Stats>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) escalation_queue: Option<Arc<Outbox>>,
    pub(super) pushes: Option<mpsc::Sender<Vec<u8>>>,
    pub(super) home_assistant: HomeAssistantConfig,
}

impl Replies {
    /// The subscription goes first, alone: rumqttc chooses its packet id, and the driver must know it
    /// before choosing any of its own (brokers mishandle two packets in flight with one id).
    pub(super) fn subscribe(&self, eventloop: &mut EventLoop) {
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

    /// Whether this message is Home Assistant announcing that it (re)started.
    pub(super) fn home_assistant_restarted(&self, topic: &str, payload: &[u8]) -> bool {
        topic == self.home_assistant.status_topic() && payload == b"online"
    }

    pub(super) fn on_publish(&self, topic: &str, payload: &[u8]) {
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
        let ack = crate::message::Ack::refused(
            crate::message::version_of(payload),
            vec![crate::validate::FieldError::new("", refusal)],
        );
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
