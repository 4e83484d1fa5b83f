//! The tasks: the questions Lookout asks about each camera, and the shape of answer each wants. Every
//! stage reads them (the gate schedules them, vision asks them, escalation keeps a policy per task,
//! publish announces them to Home Assistant), so they are words of the whole pipeline rather than the
//! config of one stage; each check records its problems with their field paths.

use std::time::Duration;

use serde::Deserialize;

use crate::validate::{self, Problems};

use super::{ASK_TASK, MAX_CLIP_FRAMES};

/// The longest question accepted, in characters (a prompt, not a document).
pub const MAX_QUESTION_CHARS: usize = 2_000;
const MAX_NEW_TOKENS_LIMIT: u32 = 1_024;

/// A question asked about a camera's frames.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub id: String,
    pub camera: String,
    pub question: String,
    #[serde(default)]
    pub kind: AnswerKind,
    pub trigger: Trigger,
    /// Cut large frames into tiles (slower, more detail).
    #[serde(default)]
    pub split: bool,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: u32,
    /// Ask about the last seconds of video instead of the newest frame.
    #[serde(default)]
    pub clip: Option<ClipConfig>,
}

fn default_max_new_tokens() -> u32 {
    64
}

/// What shape of answer a question wants.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AnswerKind {
    #[default]
    Text,
    YesNo,
    OneOf(Vec<String>),
}

/// The command line's spelling: `text`, `yes_no` or `one_of:label,label,...` (also the dataset's).
impl std::fmt::Display for AnswerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnswerKind::Text => f.write_str("text"),
            AnswerKind::YesNo => f.write_str("yes_no"),
            AnswerKind::OneOf(labels) => write!(f, "one_of:{}", labels.join(",")),
        }
    }
}

impl std::str::FromStr for AnswerKind {
    type Err = String;

    fn from_str(text: &str) -> Result<AnswerKind, String> {
        match text {
            "text" => Ok(AnswerKind::Text),
            "yes_no" => Ok(AnswerKind::YesNo),
            other => match other.strip_prefix("one_of:") {
                Some(labels) => Ok(AnswerKind::OneOf(
                    labels
                        .split(',')
                        .map(|label| label.trim().to_owned())
                        .collect(),
                )),
                None => Err("expected text, yes_no or one_of:label,label,...".to_owned()),
            },
        }
    }
}

/// When a task asks its question.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    Interval {
        secs: f64,
    },
    OnChange {
        #[serde(default = "default_threshold")]
        threshold: f64,
        #[serde(default = "default_min_interval")]
        min_interval_secs: f64,
    },
    OnDemand,
}

fn default_threshold() -> f64 {
    0.05
}
fn default_min_interval() -> f64 {
    1.0
}

impl TaskConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        validate::topic_segment(problems, &format!("{path}.id"), &self.id);
        if self.id == ASK_TASK {
            problems.push(
                format!("{path}.id"),
                format!("{ASK_TASK:?} is reserved for on-demand asks"),
            );
        }
        if let Err(reason) = check_question(&self.question) {
            problems.push(format!("{path}.question"), reason);
        }
        if let Err(reason) = self.kind.check() {
            problems.push(format!("{path}.kind"), reason);
        }
        if !(1..=MAX_NEW_TOKENS_LIMIT).contains(&self.max_new_tokens) {
            problems.push(
                format!("{path}.max_new_tokens"),
                format!(
                    "must be 1 to {MAX_NEW_TOKENS_LIMIT}, not {}",
                    self.max_new_tokens
                ),
            );
        }
        if let Some(clip) = &self.clip {
            clip.validate(&format!("{path}.clip"), problems);
            if self.split {
                problems.push(
                    format!("{path}.split"),
                    "a clip's frames are never split into tiles; remove split or clip",
                );
            }
        }
        match &self.trigger {
            Trigger::Interval { secs } => {
                validate::seconds(problems, &format!("{path}.trigger.secs"), *secs)
            }
            Trigger::OnChange {
                threshold,
                min_interval_secs,
            } => {
                if !(threshold.is_finite() && *threshold > 0.0 && *threshold <= 1.0) {
                    problems.push(
                        format!("{path}.trigger.threshold"),
                        format!("must be above 0 and at most 1, not {threshold}"),
                    );
                }
                validate::seconds(
                    problems,
                    &format!("{path}.trigger.min_interval_secs"),
                    *min_interval_secs,
                );
            }
            Trigger::OnDemand => {}
        }
    }
}

impl AnswerKind {
    /// Checks the labels of `one_of`: at least two, none empty, none repeated.
    pub fn check(&self) -> Result<(), String> {
        let AnswerKind::OneOf(labels) = self else {
            return Ok(());
        };
        if labels.len() < 2 {
            return Err("one_of needs at least two labels".to_owned());
        }
        if labels.iter().any(|label| label.trim().is_empty()) {
            return Err("one_of labels must not be empty".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(repeated) = labels.iter().find(|label| !seen.insert(label.as_str())) {
            return Err(format!("one_of label {repeated:?} appears twice"));
        }
        Ok(())
    }
}

pub fn check_question(question: &str) -> Result<(), String> {
    if question.trim().is_empty() {
        return Err("the question is empty".to_owned());
    }
    let chars = question.chars().count();
    if chars > MAX_QUESTION_CHARS {
        return Err(format!(
            "the question has {chars} characters; at most {MAX_QUESTION_CHARS} are accepted"
        ));
    }
    Ok(())
}

/// The longest window a clip task may ask about.
pub const MAX_CLIP_SECONDS: f64 = 3600.0;

/// A task's clip: `frames` frames spread over the last `seconds`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    pub seconds: f64,
    pub frames: usize,
}

impl ClipConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if !(self.seconds.is_finite() && self.seconds > 0.0 && self.seconds <= MAX_CLIP_SECONDS) {
            problems.push(
                format!("{path}.seconds"),
                format!(
                    "must be above 0 and at most {MAX_CLIP_SECONDS}, not {}",
                    self.seconds
                ),
            );
        }
        if !(1..=MAX_CLIP_FRAMES).contains(&self.frames) {
            problems.push(
                format!("{path}.frames"),
                format!(
                    "must be 1 to {MAX_CLIP_FRAMES} (SmolVLM2 takes at most {MAX_CLIP_FRAMES}), not {}",
                    self.frames
                ),
            );
        }
    }

    /// The time between two of its frames.
    pub(crate) fn spacing(&self) -> Duration {
        Duration::from_secs_f64(self.seconds / self.frames as f64)
    }
}
