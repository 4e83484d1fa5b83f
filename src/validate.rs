//! Collecting validation problems: each stage checks its own config and records what is wrong with the
//! field's full path, so one report lists every mistake in a file or a pushed config.

use std::fmt;

/// One problem with one field: `path` is like `tasks[2].trigger.secs`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The problems found so far.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<FieldError> {
        self.0
    }

    /// One line per problem, for error messages.
    pub fn summary(problems: &[FieldError]) -> String {
        let lines: Vec<String> = problems
            .iter()
            .map(|problem| format!("  {problem}"))
            .collect();
        format!(
            "{} problem(s) in the configuration:\n{}",
            problems.len(),
            lines.join("\n")
        )
    }
}

/// A duration in seconds: finite, above zero and at most a day.
pub fn seconds(problems: &mut Problems, path: &str, value: f64) {
    if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
        problems.push(
            path,
            format!("must be a number of seconds above 0 and at most 86400, not {value}"),
        );
    }
}

/// A rate in frames per second: finite, above zero, at most 120.
pub fn fps(problems: &mut Problems, path: &str, value: f64) {
    if !(value.is_finite() && value > 0.0 && value <= 120.0) {
        problems.push(
            path,
            format!("must be frames per second above 0 and at most 120, not {value}"),
        );
    }
}

/// An id that becomes one MQTT topic segment: no wildcards, separators or spaces.
pub(crate) fn topic_segment(problems: &mut Problems, path: &str, value: &str) {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        problems.push(
            path,
            format!(
                "{value:?} must be 1 to 64 letters, digits, '-' or '_' (it is used in MQTT topics)"
            ),
        );
    }
}
