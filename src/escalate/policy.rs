//! When an answer goes to the cloud: the task's mode and threshold, what its camera allows, a minimum
//! interval, near-duplicate frames, and budgets per task and in total over sliding windows.
//!
//! Pure bookkeeping with the time passed in, so every rule is tested without a clock or a network.
//! A budget is there to bound the bill, so it is charged for an escalation that sent a request the
//! provider may have billed: one answered with success, or given up after it was sent (a timeout).
//! One that sent nothing billable (every endpoint down, turned away with an error status, or shut by
//! its breaker or its `Retry-After`) costs nothing: the slot is taken when the escalation is decided,
//! so that lanes deciding at once cannot overspend, and given back when nothing was billed.
//!
//! Replays of the offline queue are charged to the total budget only. While escalations wait in the
//! queue, live escalations may use at most half of each of its windows, so the queue drains at half
//! the budget's rate or better however busy the live tasks are, and live escalations go on meanwhile.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use image::RgbImage;
use image::imageops::FilterType;

use super::config::{EscalationConfig, Limits, Mode};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Why an answer was or was not escalated; published as the answer's `escalation` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Escalated: the local answer was less confident than the threshold.
    BelowThreshold,
    /// Escalated: the task escalates every answer.
    Always,
    /// Escalation is off for the whole daemon.
    Disabled,
    /// The task never escalates.
    Never,
    /// The local answer was confident enough.
    Confident,
    /// The camera keeps its frames on the box.
    CameraPrivate,
    BudgetExhausted,
    MinInterval,
    /// The frame is nearly the same as the task's last escalated one.
    Duplicate,
    /// The task's answers are piling up behind its escalations: they go out local until they drain.
    Busy,
    /// Every endpoint failed in a way that may pass (network, 429, 5xx, timeouts).
    CloudUnreachable,
    /// Every endpoint failed, at least one for good (401, 404, a reply that is not an answer...).
    CloudFailed,
    /// Every endpoint was unreachable; the escalation waits in the offline queue.
    Queued,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BelowThreshold => "below_threshold",
            Reason::Always => "always",
            Reason::Disabled => "disabled",
            Reason::Never => "never",
            Reason::Confident => "confident",
            Reason::CameraPrivate => "camera_private",
            Reason::BudgetExhausted => "budget_exhausted",
            Reason::MinInterval => "min_interval",
            Reason::Duplicate => "duplicate",
            Reason::Busy => "busy",
            Reason::CloudUnreachable => "cloud_unreachable",
            Reason::CloudFailed => "cloud_failed",
            Reason::Queued => "queued",
        }
    }
}

/// What the policy says about one local answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Escalate(Reason),
    Keep(Reason),
}

/// Times of past escalations, enough to count them over the last minute, hour and day.
#[derive(Debug, Default)]
struct Window {
    times: VecDeque<Instant>,
}

impl Window {
    fn allows(&mut self, limits: &Limits, now: Instant) -> bool {
        self.frees_at(limits, now).is_none()
    }

    /// When the limits allow one more escalation: `None` if they do now, else the time the charge
    /// that holds the last slot of the fullest window leaves it.
    fn frees_at(&mut self, limits: &Limits, now: Instant) -> Option<Instant> {
        while self
            .times
            .front()
            .is_some_and(|time| now.duration_since(*time) >= DAY)
        {
            self.times.pop_front();
        }
        [
            (limits.per_minute, MINUTE),
            (limits.per_hour, HOUR),
            (limits.per_day, DAY),
        ]
        .into_iter()
        .filter_map(|(limit, span)| {
            let limit = limit? as usize;
            // Newest first: with `limit` or more inside the span, a slot frees when the
            // `limit`-th newest leaves it.
            let mut within = self
                .times
                .iter()
                .rev()
                .take_while(|time| now.duration_since(**time) < span);
            match limit.checked_sub(1) {
                Some(index) => within.nth(index).map(|time| *time + span),
                None => Some(now + span),
            }
        })
        .max()
    }

    fn charge(&mut self, now: Instant) {
        self.times.push_back(now);
    }

    /// Gives back the charge made at `at`.
    fn refund(&mut self, at: Instant) {
        if let Some(index) = self.times.iter().rposition(|time| *time == at) {
            self.times.remove(index);
        }
    }
}

#[derive(Debug, Default)]
struct TaskState {
    window: Window,
    last_escalated: Option<Instant>,
    last_hash: Option<u64>,
}

/// The escalation history the rules need, for every task and in total.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    total: Window,
    /// The live escalations among `total`'s.
    live: Window,
    tasks: HashMap<String, TaskState>,
}

impl Policy {
    /// Decides about a local answer of `task` about a frame of `camera` with this `confidence`, and
    /// charges the budgets at `now` when the answer is to be escalated (`refund` gives that back).
    /// `hash` is the frame's perceptual hash, computed only when the duplicate rule needs it; `busy`
    /// says the task's answers are waiting behind its escalations; `replays_waiting` that the
    /// offline queue holds escalations, which then get half the total budget.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one fact the rules weigh"
    )]
    pub(crate) fn decide(
        &mut self,
        config: &EscalationConfig,
        camera: &str,
        task: &str,
        confidence: f64,
        hash: impl FnOnce() -> u64,
        busy: bool,
        replays_waiting: bool,
        now: Instant,
    ) -> Decision {
        if !config.enabled {
            return Decision::Keep(Reason::Disabled);
        }
        let policy = config.policy_for(task);
        let reason = match policy.mode {
            Mode::Never => return Decision::Keep(Reason::Never),
            Mode::Auto if confidence >= policy.threshold => {
                return Decision::Keep(Reason::Confident);
            }
            Mode::Auto => Reason::BelowThreshold,
            Mode::Always => Reason::Always,
        };
        if config.image_for(camera).is_none() {
            return Decision::Keep(Reason::CameraPrivate);
        }
        if busy {
            return Decision::Keep(Reason::Busy);
        }
        let state = self.tasks.entry(task.to_owned()).or_default();
        if state
            .last_escalated
            .is_some_and(|last| now.duration_since(last).as_secs_f64() < policy.min_interval_secs)
        {
            return Decision::Keep(Reason::MinInterval);
        }
        let hash = (policy.duplicate_distance >= 0).then(hash);
        if let (Some(hash), Some(last)) = (hash, state.last_hash)
            && (hash ^ last).count_ones() as i32 <= policy.duplicate_distance
        {
            return Decision::Keep(Reason::Duplicate);
        }
        let total = config.total_budget();
        let live = if replays_waiting {
            total.halved()
        } else {
            total
        };
        if !state.window.allows(&policy.budget, now)
            || !self.total.allows(&total, now)
            || !self.live.allows(&live, now)
        {
            return Decision::Keep(Reason::BudgetExhausted);
        }
        state.window.charge(now);
        self.total.charge(now);
        self.live.charge(now);
        state.last_escalated = Some(now);
        state.last_hash = hash;
        Decision::Escalate(reason)
    }

    /// Gives back what `decide` charged `task` at `at`: the escalation sent nothing billable.
    pub(crate) fn refund(&mut self, task: &str, at: Instant) {
        if let Some(state) = self.tasks.get_mut(task) {
            state.window.refund(at);
        }
        self.total.refund(at);
        self.live.refund(at);
    }

    /// Charges a replay from the offline queue to the total budget at `now`, or says when the
    /// budget will allow one.
    pub(crate) fn charge_replay(
        &mut self,
        config: &EscalationConfig,
        now: Instant,
    ) -> Result<(), Instant> {
        match self.total.frees_at(&config.total_budget(), now) {
            Some(free) => Err(free),
            None => {
                self.total.charge(now);
                Ok(())
            }
        }
    }

    /// Gives back a replay's charge made at `at`: it sent nothing billable.
    pub(crate) fn refund_replay(&mut self, at: Instant) {
        self.total.refund(at);
    }
}

/// A 64-bit difference hash: the frame in grey at 9x8, one bit per horizontal neighbour pair saying
/// which is brighter. Robust to noise, compression and small exposure changes; near frames differ in
/// few bits.
pub(crate) fn difference_hash(image: &RgbImage) -> u64 {
    let grey = image::imageops::grayscale(image);
    let small = image::imageops::resize(&grey, 9, 8, FilterType::Triangle);
    let mut hash = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            let brighter = small.get_pixel(x + 1, y)[0] > small.get_pixel(x, y)[0];
            hash = (hash << 1) | u64::from(brighter);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escalate::config::{Budget, CameraPrivacy, Limit, TaskPolicy};

    fn enabled() -> EscalationConfig {
        EscalationConfig {
            enabled: true,
            min_interval_secs: 0.0,
            duplicate_distance: -1,
            budget: Budget {
                per_minute: Some(Limit::Unlimited),
                per_hour: Some(Limit::Unlimited),
                per_day: Some(Limit::Unlimited),
            },
            ..EscalationConfig::default()
        }
    }

    fn decide(
        policy: &mut Policy,
        config: &EscalationConfig,
        confidence: f64,
        at: Instant,
    ) -> Decision {
        policy.decide(config, "cam", "door", confidence, || 0, false, false, at)
    }

    #[test]
    fn threshold_and_modes() {
        let mut config = enabled();
        let now = Instant::now();
        let mut policy = Policy::default();
        assert_eq!(
            decide(&mut policy, &config, 0.9, now),
            Decision::Keep(Reason::Confident)
        );
        assert_eq!(
            decide(&mut policy, &config, 0.2, now),
            Decision::Escalate(Reason::BelowThreshold)
        );
        config.tasks.insert(
            "door".into(),
            TaskPolicy {
                mode: Some(Mode::Always),
                ..TaskPolicy::default()
            },
        );
        assert_eq!(
            decide(&mut policy, &config, 0.99, now),
            Decision::Escalate(Reason::Always)
        );
        config.tasks.get_mut("door").unwrap().mode = Some(Mode::Never);
        assert_eq!(
            decide(&mut policy, &config, 0.0, now),
            Decision::Keep(Reason::Never)
        );
        config.enabled = false;
        assert_eq!(
            decide(&mut policy, &config, 0.0, now),
            Decision::Keep(Reason::Disabled)
        );
    }

    #[test]
    fn a_private_camera_keeps_its_frames() {
        let mut config = enabled();
        config.cameras.insert(
            "cam".into(),
            CameraPrivacy {
                escalate: Some(false),
                ..CameraPrivacy::default()
            },
        );
        let mut policy = Policy::default();
        assert_eq!(
            decide(&mut policy, &config, 0.1, Instant::now()),
            Decision::Keep(Reason::CameraPrivate)
        );
    }

    #[test]
    fn budgets_run_out_and_come_back_per_window() {
        let mut config = enabled();
        config.task_budget = Budget {
            per_minute: Some(Limit::At(2)),
            per_hour: Some(Limit::At(3)),
            per_day: None,
        };
        let start = Instant::now();
        let mut policy = Policy::default();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert!(matches!(
            decide(&mut policy, &config, 0.1, at(0)),
            Decision::Escalate(_)
        ));
        assert!(matches!(
            decide(&mut policy, &config, 0.1, at(1)),
            Decision::Escalate(_)
        ));
        assert_eq!(
            decide(&mut policy, &config, 0.1, at(2)),
            Decision::Keep(Reason::BudgetExhausted)
        );
        // A minute later the minute allows again; the hour allows one more.
        assert!(matches!(
            decide(&mut policy, &config, 0.1, at(61)),
            Decision::Escalate(_)
        ));
        assert_eq!(
            decide(&mut policy, &config, 0.1, at(200)),
            Decision::Keep(Reason::BudgetExhausted)
        );
        assert!(matches!(
            decide(&mut policy, &config, 0.1, at(3601)),
            Decision::Escalate(_)
        ));
        // Another task has its own budget; the total is shared.
        config.budget.per_day = Some(Limit::At(5));
        assert!(matches!(
            policy.decide(&config, "cam", "other", 0.1, || 0, false, false, at(3602)),
            Decision::Escalate(_)
        ));
        assert_eq!(
            policy.decide(&config, "cam", "other", 0.1, || 0, false, false, at(3603)),
            Decision::Keep(Reason::BudgetExhausted)
        );
        assert_eq!(
            policy.charge_replay(&config, at(3604)),
            Err(at(86_400)),
            "the day's first escalation frees the slot"
        );
    }

    #[test]
    fn an_escalation_that_sent_nothing_is_refunded_and_the_replayer_waits_for_a_free_slot() {
        // The default total budget: 10 a minute.
        let config = EscalationConfig {
            budget: Budget::default(),
            ..enabled()
        };
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut policy = Policy::default();
        // An outage: twenty escalations decided in a minute, none sent, every one refunded.
        for second in 0..20 {
            assert!(matches!(
                decide(&mut policy, &config, 0.1, at(second)),
                Decision::Escalate(_)
            ));
            policy.refund("door", at(second));
        }
        // The cloud is back: the whole budget is there for the replays.
        for second in 20..30 {
            assert_eq!(policy.charge_replay(&config, at(second)), Ok(()));
        }
        // Spent: the slot frees when the first replay leaves the minute, not a fixed pause later.
        assert_eq!(policy.charge_replay(&config, at(31)), Err(at(80)));
        assert_eq!(policy.charge_replay(&config, at(80)), Ok(()));
        // A replay that sent nothing gives its slot back.
        assert!(policy.charge_replay(&config, at(80)).is_err());
        policy.refund_replay(at(80));
        assert_eq!(policy.charge_replay(&config, at(80)), Ok(()));
    }

    #[test]
    fn while_replays_wait_live_escalations_get_half_the_total_budget() {
        let config = EscalationConfig {
            budget: Budget::default(),
            ..enabled()
        };
        let now = Instant::now();
        let mut policy = Policy::default();
        let mut live = |replays_waiting: bool| {
            policy.decide(
                &config,
                "cam",
                "door",
                0.1,
                || 0,
                false,
                replays_waiting,
                now,
            )
        };
        let escalated = (0..10)
            .filter(|_| matches!(live(true), Decision::Escalate(_)))
            .count();
        assert_eq!(escalated, 5, "half of 10 a minute while the queue waits");
        assert_eq!(live(false), Decision::Escalate(Reason::BelowThreshold));
        // The replays' half is theirs: four more replays fill the minute.
        for _ in 0..4 {
            assert_eq!(policy.charge_replay(&config, now), Ok(()));
        }
        assert!(policy.charge_replay(&config, now).is_err());
    }

    #[test]
    fn min_interval_and_near_duplicates() {
        let mut config = enabled();
        config.min_interval_secs = 10.0;
        config.duplicate_distance = 4;
        let start = Instant::now();
        let mut policy = Policy::default();
        let mut ask = |hash: u64, secs: u64| {
            policy.decide(
                &config,
                "cam",
                "door",
                0.1,
                || hash,
                false,
                false,
                start + Duration::from_secs(secs),
            )
        };
        assert!(matches!(ask(0b1111, 0), Decision::Escalate(_)));
        assert_eq!(ask(u64::MAX, 5), Decision::Keep(Reason::MinInterval));
        assert_eq!(ask(0b1111_0000_1111, 20), Decision::Keep(Reason::Duplicate));
        assert!(matches!(ask(u64::MAX, 21), Decision::Escalate(_)));
        // Busy: not escalated, and nothing charged, so the next answer may go.
        let later = start + Duration::from_secs(40);
        assert_eq!(
            policy.decide(&config, "cam", "door", 0.1, || 7, true, false, later),
            Decision::Keep(Reason::Busy)
        );
        assert!(matches!(
            policy.decide(
                &config,
                "cam",
                "door",
                0.1,
                || u64::MAX >> 32,
                false,
                false,
                later
            ),
            Decision::Escalate(_)
        ));
    }

    #[test]
    fn the_hash_tells_near_frames_from_different_ones() {
        let gradient = RgbImage::from_fn(320, 240, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut noisy = gradient.clone();
        for (index, pixel) in noisy.pixels_mut().enumerate() {
            pixel[0] = pixel[0].saturating_add((index % 3) as u8);
        }
        let flipped = image::imageops::flip_horizontal(&gradient);
        let distance =
            |a: &RgbImage, b: &RgbImage| (difference_hash(a) ^ difference_hash(b)).count_ones();
        assert!(distance(&gradient, &noisy) <= 4);
        assert!(distance(&gradient, &flipped) > 16);
    }
}
