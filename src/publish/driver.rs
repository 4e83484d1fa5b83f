//! The driver: the one task that polls rumqttc's event loop for the connection's life. It chooses the
//! packet id of every QoS 1 publish (answers from the outbox, the status, retained messages), matches
//! each PubAck to what it acknowledges, hands what arrives to `inbound`, and sleeps with jittered
//! backoff after a connection error, so a broker that is down costs neither CPU nor log lines.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use rumqttc::{
    ConnectionError, Disconnect, Event, EventLoop, Outgoing, Packet, Publish, QoS, Request,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::inbound::Replies;
use super::inflight::{Carried, InFlight, qos1};
use super::retained::RetainedState;
use super::{Retained, Topics, publish_stats};
use crate::backoff::Backoff;
use crate::outbox::Outbox;

/// The driver's state on one connection and across reconnects.
pub(super) struct Driver {
    eventloop: EventLoop,
    replies: Replies,
    retained: watch::Receiver<Retained>,
    /// The retained messages describing the box (see `Retained`).
    describing: RetainedState,
    /// Each task's latest answer, retained on its state topic (see `Topics::state`).
    states: RetainedState,
    in_flight: InFlight,
    backoff: Backoff,
    /// Connected, and the subscription's packet id is known: the driver may choose its own.
    ready: bool,
    /// `offline` and the disconnect are queued; nothing else goes out.
    stopping: bool,
}

impl Driver {
    pub(super) fn new(
        eventloop: EventLoop,
        replies: Replies,
        mut retained: watch::Receiver<Retained>,
        window: u16,
    ) -> Driver {
        let describing = RetainedState::new(retained.borrow_and_update().clone());
        Driver {
            eventloop,
            replies,
            retained,
            describing,
            states: RetainedState::new(Retained::new()),
            in_flight: InFlight::new(window),
            backoff: Backoff::new(),
            ready: false,
            stopping: false,
        }
    }

    /// Polls the event loop until the clean disconnect once `stop` is cancelled, or until `stop` is
    /// cancelled while disconnected.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        loop {
            if self.ready && !self.stopping {
                self.describing
                    .send_due(&mut self.eventloop, &mut self.in_flight);
                self.states
                    .send_due(&mut self.eventloop, &mut self.in_flight);
                send_waiting(
                    &mut self.eventloop,
                    &self.replies.outbox,
                    &mut self.in_flight,
                    &self.replies.topics,
                    &mut self.states,
                );
            }
            let room = self.in_flight.has_room_for_answers();
            let event = tokio::select! {
                event = self.eventloop.poll() => event,
                () = self.replies.outbox.arrived(), if self.ready && !self.stopping && room => continue,
                Ok(()) = self.retained.changed() => {
                    self.describing.update(self.retained.borrow_and_update().clone());
                    continue;
                }
                () = stop.cancelled(), if !self.stopping => {
                    if !self.ready {
                        return;
                    }
                    self.stop();
                    continue;
                }
            };
            let flow = match event {
                Ok(event) => self.on_event(event),
                Err(error) => self.on_error(error, &stop).await,
            };
            if flow.is_break() {
                return;
            }
        }
    }

    /// A clean DISCONNECT suppresses the last will, so the retained status says offline first.
    /// Unacknowledged answers stay in the outbox for the next start.
    fn stop(&mut self) {
        self.stopping = true;
        send_status(
            &mut self.eventloop,
            &mut self.in_flight,
            &self.replies.topics,
            "offline",
        );
        self.eventloop
            .pending
            .push_back(Request::Disconnect(Disconnect));
    }

    fn on_event(&mut self, event: Event) -> ControlFlow<()> {
        let stats = &self.replies.stats;
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => self.on_connected(ack.session_present),
            Event::Outgoing(Outgoing::Subscribe(pkid)) => self.on_subscribing(pkid),
            Event::Incoming(Packet::SubAck(ack)) => {
                self.in_flight.acknowledged(ack.pkid);
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Carried::Answer(seq)) = self.in_flight.acknowledged(ack.pkid) {
                    self.replies.outbox.complete(seq);
                    stats.published.inc();
                }
            }
            Event::Incoming(Packet::Publish(publish)) => self.on_publish(&publish),
            Event::Outgoing(Outgoing::Disconnect) => {
                stats.broker_connected.store(false, Ordering::Relaxed);
                return ControlFlow::Break(());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn on_connected(&mut self, session_present: bool) {
        let stats = &self.replies.stats;
        self.backoff.reset();
        stats.broker_connects.inc();
        stats.broker_connected.store(true, Ordering::Relaxed);
        info!(session_present, "Connected to the MQTT broker.");
        // rumqttc would resend the last connection's unacknowledged publishes itself, with the old
        // packet ids and out of order; the outbox sends them again, in order.
        self.eventloop.pending.retain(
            |request| !matches!(request, Request::Publish(publish) if publish.qos != QoS::AtMostOnce),
        );
        self.in_flight.clear();
        self.replies.outbox.resend_all();
        self.describing.all_due();
        self.states.all_due();
        self.replies.subscribe(&mut self.eventloop);
    }

    /// The subscription has its id: say online, then answers may follow.
    fn on_subscribing(&mut self, pkid: u16) {
        self.in_flight.reserve(pkid, Carried::Subscription);
        self.ready = true;
        send_status(
            &mut self.eventloop,
            &mut self.in_flight,
            &self.replies.topics,
            "online",
        );
        // The driver must never wait on the client it drains, hence try_publish inside.
        let replies = &self.replies;
        publish_stats(
            &replies.client,
            &replies.topics,
            &replies.stats,
            &replies.outbox,
            replies.escalation_queue.as_deref(),
        );
    }

    fn on_publish(&mut self, publish: &Publish) {
        if self
            .replies
            .home_assistant_restarted(&publish.topic, &publish.payload)
        {
            let prefix = format!("{}/", self.replies.home_assistant.prefix);
            self.describing.due_under(&prefix);
            self.states.all_due();
            info!("Home Assistant started: sending the discovery messages and states again.");
        } else {
            self.replies.on_publish(&publish.topic, &publish.payload);
        }
    }

    /// Counts a connection error and waits out the backoff; breaks when stopping or stopped meanwhile.
    async fn on_error(
        &mut self,
        error: ConnectionError,
        stop: &CancellationToken,
    ) -> ControlFlow<()> {
        let stats = &self.replies.stats;
        self.ready = false;
        stats.broker_connected.store(false, Ordering::Relaxed);
        stats.broker_errors.inc();
        if self.stopping {
            return ControlFlow::Break(());
        }
        let delay = self.backoff.next_delay();
        if self.backoff.is_first_failure() {
            warn!(error = %error, "MQTT connection failed; retrying with backoff.");
        } else {
            debug!(error = %error, delay_ms = delay.as_millis() as u64, "MQTT connection still failing.");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => ControlFlow::Continue(()),
            _ = stop.cancelled() => ControlFlow::Break(()),
        }
    }
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
