//! What an endpoint has asked of us, and what its failures say about it: the server's `Retry-After`
//! (no request before that time, whoever asks: live lanes, every task, the replayer) and a circuit
//! breaker. After `failures` failed requests in a row the endpoint is left alone for a cool-down, then
//! one probe is let through; its success closes the breaker, its failure opens it for another
//! cool-down. An endpoint that is down then costs one request per cool-down instead of one per
//! escalation, and escalations fail over to the next endpoint at once.
//!
//! The breaker also remembers whether the last failure was a refusal (401, 403, 404, 422, a reply that
//! is not an answer): an endpoint shut by refusals is not an outage that waiting cures, so escalations
//! it turns away are failures, not work for the offline queue.

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

/// Why no request may go to an endpoint now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shut {
    /// The server asked for no request before this time.
    RetryAfter(Instant),
    /// The breaker is open after failures that may pass.
    CoolingDown,
    /// The breaker is open after refusals; the last one said this (`HTTP 401`).
    Refusing(String),
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: State,
    failures: u32,
    cooldown: Duration,
    not_before: Option<Instant>,
    /// The last failure, when it was a refusal.
    refusal: Option<String>,
}

impl Breaker {
    pub fn new(failures: u32, cooldown: Duration) -> Breaker {
        Breaker {
            state: State::Closed { failures: 0 },
            failures,
            cooldown,
            not_before: None,
            refusal: None,
        }
    }

    /// Whether a request may go now; when the cool-down is over, this one is the probe. A pending
    /// `Retry-After` is looked at first, so no probe is spent before it has passed.
    pub fn allow(&mut self, now: Instant) -> Result<(), Shut> {
        if let Some(until) = self.not_before.filter(|until| now < *until) {
            return Err(Shut::RetryAfter(until));
        }
        match self.state {
            State::Closed { .. } => Ok(()),
            State::Open { until } | State::HalfOpen { until } if now >= until => {
                self.state = State::HalfOpen {
                    until: now + self.cooldown,
                };
                Ok(())
            }
            State::Open { .. } | State::HalfOpen { .. } => Err(match &self.refusal {
                Some(refusal) => Shut::Refusing(refusal.clone()),
                None => Shut::CoolingDown,
            }),
        }
    }

    /// The server's `Retry-After`: no request before `until` (a later promise is kept).
    pub(crate) fn retry_after(&mut self, until: Instant) {
        self.not_before = self.not_before.max(Some(until));
    }

    pub fn succeeded(&mut self) {
        self.state = State::Closed { failures: 0 };
        self.refusal = None;
    }

    /// Records a failed request, with what the server said when it was a refusal; returns true when
    /// this opened the breaker.
    pub fn failed(&mut self, now: Instant, refusal: Option<String>) -> bool {
        self.refusal = refusal;
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
    pub(crate) fn state_name(&self) -> &'static str {
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
            assert_eq!(breaker.allow(start), Ok(()));
            assert!(!breaker.failed(start, None));
        }
        assert_eq!(breaker.allow(start), Ok(()));
        assert!(breaker.failed(start, None), "the third failure opens it");
        assert_eq!(breaker.state_name(), "open");
        assert_eq!(
            breaker.allow(start + Duration::from_secs(29)),
            Err(Shut::CoolingDown)
        );

        // Half-open: one probe, nobody else until it is decided.
        let later = start + Duration::from_secs(30);
        assert_eq!(breaker.allow(later), Ok(()));
        assert_eq!(breaker.state_name(), "half_open");
        assert!(breaker.allow(later).is_err());
        // The probe fails: open for another cool-down at once.
        assert!(breaker.failed(later, None));
        assert!(breaker.allow(later + Duration::from_secs(29)).is_err());
        // The next probe succeeds: closed, and failures count from zero again.
        let probe = later + Duration::from_secs(30);
        assert_eq!(breaker.allow(probe), Ok(()));
        // A probe that never reports is replaced after another cool-down.
        assert!(breaker.allow(probe + Duration::from_secs(29)).is_err());
        assert_eq!(breaker.allow(probe + Duration::from_secs(30)), Ok(()));
        breaker.succeeded();
        assert_eq!(breaker.state_name(), "closed");
        assert!(!breaker.failed(later, None));
        assert_eq!(breaker.allow(later), Ok(()));
    }

    #[test]
    fn retry_after_shuts_the_endpoint_until_it_passes_and_spends_no_probe() {
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let mut breaker = Breaker::new(1, Duration::from_secs(1));
        breaker.retry_after(at(2000));
        // An earlier promise does not shorten a later one.
        breaker.retry_after(at(500));
        assert_eq!(breaker.allow(at(0)), Err(Shut::RetryAfter(at(2000))));
        assert_eq!(breaker.allow(at(1999)), Err(Shut::RetryAfter(at(2000))));
        assert_eq!(breaker.allow(at(2000)), Ok(()));

        // Open and asked to wait past the cool-down: the probe waits for the later of the two.
        assert!(breaker.failed(at(2000), None));
        breaker.retry_after(at(4000));
        assert_eq!(breaker.allow(at(3500)), Err(Shut::RetryAfter(at(4000))));
        assert_eq!(breaker.state_name(), "open");
        assert_eq!(breaker.allow(at(4000)), Ok(()));
        assert_eq!(breaker.state_name(), "half_open");
    }

    #[test]
    fn a_breaker_opened_by_refusals_says_so_until_a_success() {
        let start = Instant::now();
        let mut breaker = Breaker::new(2, Duration::from_secs(30));
        assert!(!breaker.failed(start, Some("HTTP 401".to_owned())));
        assert!(breaker.failed(start, Some("HTTP 401".to_owned())));
        assert_eq!(
            breaker.allow(start),
            Err(Shut::Refusing("HTTP 401".to_owned()))
        );
        // The probe meets an outage instead: the breaker is cooling down, not refusing.
        let probe = start + Duration::from_secs(30);
        assert_eq!(breaker.allow(probe), Ok(()));
        assert!(breaker.failed(probe, None));
        assert_eq!(breaker.allow(probe), Err(Shut::CoolingDown));
        let probe = probe + Duration::from_secs(30);
        assert_eq!(breaker.allow(probe), Ok(()));
        assert!(breaker.failed(probe, Some("HTTP 403".to_owned())));
        breaker.succeeded();
        assert_eq!(breaker.allow(probe), Ok(()));
    }
}
