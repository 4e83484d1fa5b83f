//! Retained messages on one connection: which of them the broker still needs to be sent.

use std::collections::BTreeSet;

use rumqttc::EventLoop;

use super::Retained;
use super::inflight::{Carried, InFlight, qos1};

/// The retained messages describing the box, and which of them this connection still needs: all of
/// them after a connect, the changed ones after an update, the discovery ones when Home Assistant
/// restarts. Only those are compared or sent, so the driver's loop does no work for them otherwise.
pub(super) struct RetainedState {
    current: Retained,
    due: BTreeSet<String>,
}

impl RetainedState {
    pub(super) fn new(current: Retained) -> RetainedState {
        let due = current.keys().cloned().collect();
        RetainedState { current, due }
    }

    /// A new connection has none of them.
    pub(super) fn all_due(&mut self) {
        self.due = self.current.keys().cloned().collect();
    }

    /// The messages whose payload differs from the current one become due.
    pub(super) fn update(&mut self, new: Retained) {
        for (topic, payload) in &new {
            if self.current.get(topic) != Some(payload) {
                self.due.insert(topic.clone());
            }
        }
        self.current = new;
    }

    /// Sets one message, due when its payload changed.
    pub(super) fn set(&mut self, topic: String, payload: Vec<u8>) {
        if self.current.get(&topic) != Some(&payload) {
            self.due.insert(topic.clone());
            self.current.insert(topic, payload);
        }
    }

    /// Every message under `prefix` becomes due again.
    pub(super) fn due_under(&mut self, prefix: &str) {
        let under = self
            .current
            .keys()
            .filter(|topic| topic.starts_with(prefix));
        self.due.extend(under.cloned());
    }

    /// Hands the event loop the due messages while the retained window has room.
    pub(super) fn send_due(&mut self, eventloop: &mut EventLoop, in_flight: &mut InFlight) {
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
