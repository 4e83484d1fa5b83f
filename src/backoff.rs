//! Retry delays for anything that reconnects (camera devices, snapshot servers, the MQTT broker):
//! exponential growth with full jitter, so a fleet of boxes that lost the same broker does not come
//! back in lockstep, and a capped maximum, so recovery is noticed within half a minute.

use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// Records a failure and returns the delay before the next try: uniform in
    /// [0, min(30 s, 0.5 s x 2^(failures - 1))].
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = Self::BASE
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Records a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the last failure was the first since a success (worth a warning; repeats are not).
    pub(crate) fn is_first_failure(&self) -> bool {
        self.failures == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_jittered_and_capped() {
        let mut backoff = Backoff::new();
        let first: Vec<Duration> = (0..200)
            .map(|_| {
                backoff.reset();
                backoff.next_delay()
            })
            .collect();
        assert!(first.iter().all(|d| *d <= Duration::from_millis(500)));
        assert!(
            first.iter().any(|d| *d != first[0]),
            "jitter varies the delay"
        );
        for _ in 0..40 {
            assert!(backoff.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(backoff.failures(), 41);
        assert!(!backoff.is_first_failure());
    }
}
