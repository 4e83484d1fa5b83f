//! A circuit breaker per endpoint: after `failures` failed requests in a row the endpoint is left alone
//! for a cool-down, then one probe is let through; its success closes the breaker, its failure opens it
//! for another cool-down. An endpoint that is down then costs one request per cool-down instead of one
//! per escalation, and escalations fail over to the next endpoint at once.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down is over and one probe is out. A probe that never reports (abandoned at shutdown
    /// or by the deadline) does not keep the endpoint shut: after another cool-down, another probe.
    HalfOpen {
        until: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    state: State,
    failures: u32,
    cooldown: Duration,
}

impl Breaker {
    pub fn new(failures: u32, cooldown: Duration) -> Breaker {
        Breaker {
            state: State::Closed { failures: 0 },
            failures,
            cooldown,
        }
    }

    /// Whether a request may go now; when the cool-down is over, this one is the probe.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } | State::HalfOpen { until } if now >= until => {
                self.state = State::HalfOpen {
                    until: now + self.cooldown,
                };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    pub fn succeeded(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// Records a failed request; returns true when this opened the breaker.
    pub fn failed(&mut self, now: Instant) -> bool {
        let open = match self.state {
            State::Closed { failures } if failures + 1 < self.failures => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            _ => true,
        };
        if open {
            self.state = State::Open {
                until: now + self.cooldown,
            };
        }
        open
    }

    /// `closed`, `open` or `half_open`, for stats.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_then_lets_one_probe_through() {
        let start = Instant::now();
        let mut breaker = Breaker::new(3, Duration::from_secs(30));
        for _ in 0..2 {
            assert!(breaker.allow(start));
            assert!(!breaker.failed(start));
        }
        assert!(breaker.allow(start));
        assert!(breaker.failed(start), "the third failure opens it");
        assert_eq!(breaker.state_name(), "open");
        assert!(!breaker.allow(start + Duration::from_secs(29)));

        // Half-open: one probe, nobody else until it is decided.
        let later = start + Duration::from_secs(30);
        assert!(breaker.allow(later));
        assert_eq!(breaker.state_name(), "half_open");
        assert!(!breaker.allow(later));
        // The probe fails: open for another cool-down at once.
        assert!(breaker.failed(later));
        assert!(!breaker.allow(later + Duration::from_secs(29)));
        // The next probe succeeds: closed, and failures count from zero again.
        let probe = later + Duration::from_secs(30);
        assert!(breaker.allow(probe));
        // A probe that never reports is replaced after another cool-down.
        assert!(!breaker.allow(probe + Duration::from_secs(29)));
        assert!(breaker.allow(probe + Duration::from_secs(30)));
        breaker.succeeded();
        assert_eq!(breaker.state_name(), "closed");
        assert!(!breaker.failed(later));
        assert!(breaker.allow(later));
    }
}
