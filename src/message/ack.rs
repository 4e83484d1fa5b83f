//! The answer to a pushed config, on `config/ack`: written by the control plane when it applies or
//! refuses a push, and by the publisher when a push cannot even be read.

use serde::Serialize;
use serde_json::Value;

use crate::validate::FieldError;

/// The answer to a push, on `config/ack`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ack {
    /// The push's version, when it could be read.
    pub version: Option<u64>,
    pub ok: bool,
    pub errors: Vec<FieldError>,
    /// Changed fields that take effect only at the next start (applied then from the persisted layer).
    pub restart_needed: Vec<&'static str>,
}

impl Ack {
    pub fn applied(version: u64, restart_needed: Vec<&'static str>) -> Ack {
        Ack {
            version: Some(version),
            ok: true,
            errors: Vec::new(),
            restart_needed,
        }
    }

    pub fn refused(version: Option<u64>, errors: Vec<FieldError>) -> Ack {
        Ack {
            version,
            ok: false,
            errors,
            restart_needed: Vec::new(),
        }
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("acks serialize")
    }
}

/// The push's version, read leniently for an ack when the push itself is refused.
pub fn version_of(payload: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    value.get("version")?.as_u64()
}
