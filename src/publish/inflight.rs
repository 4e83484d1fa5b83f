//! The QoS 1 publishes in flight on one connection. The driver chooses every packet id itself, so
//! that each PubAck can be matched to what it acknowledges (an outbox entry, the status, a retained
//! message); each kind has its own window, so answers can never starve the status of an id.

use std::collections::HashMap;

use rumqttc::{Publish, QoS, Request};

/// Retained messages describing the box (config/reported, discovery) in flight at most.
const RETAINED_WINDOW: u16 = 2;
/// Packet ids kept beyond the answers' window: the retained messages' and two for the status, so that
/// `offline` goes out at shutdown even while `online` and every retained message are unacknowledged.
pub(super) const STATUS_SLOTS: u16 = RETAINED_WINDOW + 2;

/// What a packet id in flight carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Carried {
    /// The outbox entry with this sequence number.
    Answer(u64),
    Status,
    /// A retained message describing the box (see `Retained`).
    Retained,
    /// The asks subscription, whose id rumqttc chooses.
    Subscription,
}

/// The QoS 1 publishes in flight on this connection, by the packet id the driver chose for each.
pub(super) struct InFlight {
    window: u16,
    by_pkid: HashMap<u16, Carried>,
    answers: u16,
    retained: u16,
    last_pkid: u16,
}

impl InFlight {
    pub(super) fn new(window: u16) -> InFlight {
        InFlight {
            window,
            by_pkid: HashMap::new(),
            answers: 0,
            retained: 0,
            last_pkid: 0,
        }
    }

    pub(super) fn has_room_for_answers(&self) -> bool {
        self.answers < self.window
    }

    /// A free packet id for `carried`, the next one after the last in cyclic order (as the MQTT
    /// specification expects), or `None` when none is free.
    pub(super) fn assign(&mut self, carried: Carried) -> Option<u16> {
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
    pub(super) fn reserve(&mut self, pkid: u16, carried: Carried) {
        self.by_pkid.insert(pkid, carried);
    }

    pub(super) fn acknowledged(&mut self, pkid: u16) -> Option<Carried> {
        let carried = self.by_pkid.remove(&pkid)?;
        match carried {
            Carried::Answer(_) => self.answers -= 1,
            Carried::Retained => self.retained -= 1,
            Carried::Status | Carried::Subscription => {}
        }
        Some(carried)
    }

    pub(super) fn clear(&mut self) {
        self.by_pkid.clear();
        self.answers = 0;
        self.retained = 0;
    }
}

/// A QoS 1 publish with the driver's packet id, for the event loop's queue. Every QoS 1 payload
/// passes here, and leaves without the secrets the process holds (`errors::redact_bytes`).
pub(super) fn qos1(topic: String, payload: Vec<u8>, pkid: u16, retain: bool) -> Request {
    let payload = crate::errors::redact_bytes(&payload).into_owned();
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
    publish.pkid = pkid;
    publish.retain = retain;
    Request::Publish(publish)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
