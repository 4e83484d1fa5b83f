//! Escalation: sending the answers the local model is unsure of to a larger hosted model.
//!
//! Its configuration has its place in the config file now, so that files written today keep working
//! when the cloud tier arrives; until then enabling it is a validation error rather than a silent no-op.

use serde::Deserialize;

use crate::config::Problems;

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    pub enabled: bool,
}

impl EscalationConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.enabled {
            problems.push(
                format!("{path}.enabled"),
                "this version of Lookout has no cloud tier yet; every answer is local",
            );
        }
    }
}
