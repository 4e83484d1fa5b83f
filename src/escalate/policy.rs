//! When an answer goes to the cloud: the task's mode and threshold, what its camera allows, a minimum
//! interval, near-duplicate frames, and budgets per task and in total over sliding windows.
//!
//! Pure bookkeeping with the time passed in, so every rule is tested without a clock or a network.
//! A budget is charged when an escalation is decided, not when it succeeds: a request that failed
//! may still have been billed, and a budget is there to bound the bill.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use image::RgbImage;
use image::imageops::FilterType;

use super::config::{Budget, EscalationConfig, Mode};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Why an answer was or was not escalated; published as the answer's `escalation` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
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
pub enum Decision {
    Escalate(Reason),
    Keep(Reason),
}

/// Times of past escalations, enough to count them over the last minute, hour and day.
#[derive(Debug, Default)]
struct Window {
    times: VecDeque<Instant>,
}

impl Window {
    fn allows(&mut self, budget: &Budget, now: Instant) -> bool {
        while self
            .times
            .front()
            .is_some_and(|time| now.duration_since(*time) >= DAY)
        {
            self.times.pop_front();
        }
        let within = |span: Duration| {
            self.times
                .iter()
                .rev()
                .take_while(|time| now.duration_since(**time) < span)
                .count()
        };
        [
            (budget.per_minute, MINUTE),
            (budget.per_hour, HOUR),
            (budget.per_day, DAY),
        ]
        .into_iter()
        .all(|(limit, span)| limit.is_none_or(|limit| within(span) < limit as usize))
    }

    fn charge(&mut self, now: Instant) {
        self.times.push_back(now);
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
pub struct Policy {
    total: Window,
    tasks: HashMap<String, TaskState>,
}

impl Policy {
    /// Decides about a local answer of `task` about a frame of `camera` with this `confidence`, and
    /// charges the budgets when the answer is to be escalated. `hash` is the frame's perceptual hash,
    /// computed only when the duplicate rule needs it; `busy` says the task's answers are waiting
    /// behind its escalations.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one fact the rules weigh"
    )]
    pub fn decide(
        &mut self,
        config: &EscalationConfig,
        camera: &str,
        task: &str,
        confidence: f64,
        hash: impl FnOnce() -> u64,
        busy: bool,
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
        if !state.window.allows(&policy.budget, now) || !self.total.allows(&config.budget, now) {
            return Decision::Keep(Reason::BudgetExhausted);
        }
        state.window.charge(now);
        self.total.charge(now);
        state.last_escalated = Some(now);
        state.last_hash = hash;
        Decision::Escalate(reason)
    }

    /// Whether the total budget allows a replay from the offline queue now. Replays are charged only
    /// when answered: while the cloud is down they fail without a bill, again and again.
    pub fn allows_replay(&mut self, config: &EscalationConfig, now: Instant) -> bool {
        self.total.allows(&config.budget, now)
    }

    pub fn charge_replay(&mut self, now: Instant) {
        self.total.charge(now);
    }
}

/// A 64-bit difference hash: the frame in grey at 9x8, one bit per horizontal neighbour pair saying
/// which is brighter. Robust to noise, compression and small exposure changes; near frames differ in
/// few bits.
pub fn difference_hash(image: &RgbImage) -> u64 {
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
    use crate::escalate::config::{CameraPrivacy, TaskPolicy};

    fn enabled() -> EscalationConfig {
        EscalationConfig {
            enabled: true,
            min_interval_secs: 0.0,
            duplicate_distance: -1,
            budget: Budget::default(),
            ..EscalationConfig::default()
        }
    }

    fn decide(
        policy: &mut Policy,
        config: &EscalationConfig,
        confidence: f64,
        at: Instant,
    ) -> Decision {
        policy.decide(config, "cam", "door", confidence, || 0, false, at)
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
            per_minute: Some(2),
            per_hour: Some(3),
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
        config.budget.per_day = Some(5);
        assert!(matches!(
            policy.decide(&config, "cam", "other", 0.1, || 0, false, at(3602)),
            Decision::Escalate(_)
        ));
        assert_eq!(
            policy.decide(&config, "cam", "other", 0.1, || 0, false, at(3603)),
            Decision::Keep(Reason::BudgetExhausted)
        );
        assert!(!policy.allows_replay(&config, at(3604)));
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
            policy.decide(&config, "cam", "door", 0.1, || 7, true, later),
            Decision::Keep(Reason::Busy)
        );
        assert!(matches!(
            policy.decide(&config, "cam", "door", 0.1, || u64::MAX >> 32, false, later),
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
