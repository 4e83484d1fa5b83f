//! Remote configuration: what a push on `config/desired` may change, and how it is checked.
//!
//! The effective config is two layers: the local file, and on top of it the remote layer that pushes
//! build (a JSON object merged over the file as an RFC 7396 merge patch: objects merge key by key,
//! anything else replaces, `null` removes). A push carries `{version, kind, config, signature}`:
//! `kind = "full"` makes `config` the whole new remote layer (earlier pushes are forgotten),
//! `kind = "merge_patch"` patches the current layer with it. Versions only go up, so a stale or
//! replayed push is refused.
//!
//! Anyone who can publish to the broker can send a push, so a push is applied only when it is
//! signed: with ed25519 over the canonical bytes of `{config, kind, version}` (JSON, keys sorted, no
//! spaces; what `lookout config sign` writes) by the key whose public half the local file names.
//! Without a key, unsigned pushes are refused unless the local file says `allow_unsigned = true`.
//! The local file also locks fields no push may change (by default the broker, the device section
//! and the runtime library), and the `remote` section itself is the local file's alone.
//!
//! Everything here is pure: the daemon does the I/O (persisting the layer atomically, acking).

use std::fmt::Write;
use std::path::Path;

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::validate::{FieldError, Problems};

/// The `[remote]` section of the local file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// Whether pushes on `config/desired` are listened to at all.
    pub enabled: bool,
    /// The ed25519 public key (base64 of its 32 bytes) that signs pushes.
    pub public_key: Option<String>,
    /// Applies unsigned pushes when no key is set: only for brokers nobody untrusted can publish to.
    pub allow_unsigned: bool,
    /// Fields (dotted paths, `cameras` or `mqtt.url`...) no push may change.
    pub locked: Vec<String>,
    /// The largest push accepted, in bytes.
    pub max_push_bytes: usize,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            enabled: true,
            public_key: None,
            allow_unsigned: false,
            locked: vec![
                "device".to_owned(),
                "mqtt".to_owned(),
                "vision.runtime_library".to_owned(),
                "http".to_owned(),
            ],
            max_push_bytes: 1_000_000,
        }
    }
}

impl RemoteConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if let Some(key) = &self.public_key
            && let Err(message) = verifying_key(key)
        {
            problems.push(format!("{path}.public_key"), message);
        }
        for (index, locked) in self.locked.iter().enumerate() {
            if locked.is_empty() || locked.split('.').any(str::is_empty) {
                problems.push(
                    format!("{path}.locked[{index}]"),
                    format!("{locked:?} is not a dotted field path like \"mqtt.url\""),
                );
            }
        }
        if !(1024..=100_000_000).contains(&self.max_push_bytes) {
            problems.push(
                format!("{path}.max_push_bytes"),
                format!("must be 1024 to 100000000, not {}", self.max_push_bytes),
            );
        }
    }
}

/// How a push's `config` relates to the current remote layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    #[default]
    Full,
    MergePatch,
}

/// A push as received on `config/desired`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    pub version: u64,
    #[serde(default)]
    pub kind: PushKind,
    pub config: Map<String, Value>,
    #[serde(default)]
    pub signature: Option<String>,
}

/// The remote layer as persisted in the state directory.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// The version of the last push applied; 0 before any.
    pub version: u64,
    pub layer: Map<String, Value>,
}

impl Push {
    /// Parses a push, refusing anything larger than `max_bytes` before reading it.
    pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Push, FieldError> {
        if bytes.len() > max_bytes {
            return Err(FieldError::new(
                "",
                format!(
                    "the push is {} bytes; at most {max_bytes} are accepted",
                    bytes.len()
                ),
            ));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let path = if path == "." { String::new() } else { path };
            FieldError::new(path, format!("not a valid push: {}", error.into_inner()))
        })
    }

    /// Checks the signature against the local file's key, or that unsigned pushes are allowed.
    pub fn check_signature(&self, remote: &RemoteConfig) -> Result<(), FieldError> {
        let Some(key) = &remote.public_key else {
            return if remote.allow_unsigned {
                Ok(())
            } else {
                Err(FieldError::new(
                    "signature",
                    "this box applies only signed pushes, and its local file names no \
                     remote.public_key (or set remote.allow_unsigned = true)",
                ))
            };
        };
        let key = verifying_key(key).map_err(|message| FieldError::new("", message))?;
        let signature = self
            .signature
            .as_deref()
            .ok_or_else(|| FieldError::new("signature", "the push is not signed"))?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .map(|bytes| Signature::from_bytes(&bytes))
            .ok_or_else(|| {
                FieldError::new("signature", "not the base64 of a 64-byte ed25519 signature")
            })?;
        key.verify_strict(
            &signed_bytes(self.version, self.kind, &self.config),
            &signature,
        )
        .map_err(|_| {
            FieldError::new(
                "signature",
                "does not match this push signed by this box's key",
            )
        })
    }

    /// The remote layer after this push, if its version is newer than the current one's.
    pub fn next_layer(&self, current: &RemoteLayer) -> Result<RemoteLayer, FieldError> {
        if self.version <= current.version {
            return Err(FieldError::new(
                "version",
                format!(
                    "{} is not newer than the running version {}",
                    self.version, current.version
                ),
            ));
        }
        if self.config.contains_key("remote") {
            return Err(FieldError::new(
                "config.remote",
                "the remote section can only be set in the local file",
            ));
        }
        let layer = match self.kind {
            PushKind::Full => self.config.clone(),
            PushKind::MergePatch => {
                let mut layer = Value::Object(current.layer.clone());
                merge_patch(&mut layer, &Value::Object(self.config.clone()));
                match layer {
                    Value::Object(layer) => layer,
                    _ => unreachable!("patching an object with an object gives an object"),
                }
            }
        };
        Ok(RemoteLayer {
            version: self.version,
            layer,
        })
    }
}

/// The retained `config/reported` payload: the version running, whether fields wait for a restart,
/// and the effective document with its secrets redacted.
pub fn reported(version: u64, restart_needed: &[&'static str], effective: &Value) -> Vec<u8> {
    let mut config = effective.clone();
    redact(&mut config);
    let status = if restart_needed.is_empty() {
        "applied"
    } else {
        "restart_needed"
    };
    serde_json::to_vec(&serde_json::json!({
        "version": version,
        "status": status,
        "restart_needed": restart_needed,
        "config": config,
    }))
    .expect("reports serialize")
}

/// The bytes a push's signature covers: `{config, kind, version}` in canonical JSON.
pub(crate) fn signed_bytes(version: u64, kind: PushKind, config: &Map<String, Value>) -> Vec<u8> {
    let mut document = Map::new();
    document.insert("config".to_owned(), Value::Object(config.clone()));
    document.insert(
        "kind".to_owned(),
        serde_json::to_value(kind).expect("kinds serialize"),
    );
    document.insert("version".to_owned(), Value::from(version));
    canonical(&Value::Object(document)).into_bytes()
}

/// JSON with every object's keys sorted and no whitespace, whatever order the input had.
pub(crate) fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

/// RFC 7396: objects merge key by key, `null` removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The locked fields whose value differs between two effective configs (as JSON).
pub(crate) fn locked_changes(locked: &[String], before: &Value, after: &Value) -> Vec<FieldError> {
    locked
        .iter()
        .filter(|path| lookup(before, path) != lookup(after, path))
        .map(|path| FieldError::new(path.clone(), "locked by this box's local file"))
        .collect()
}

/// The value at a dotted path (`mqtt.url`), if any.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |value, key| value.get(key))
}

/// Replaces passwords and tokens with `REDACTED`, for what leaves the box (`config/reported`).
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let secret = ["password", "token", "secret", "private_key"]
                    .iter()
                    .any(|word| key.to_ascii_lowercase().contains(word))
                    && !key.ends_with("_env")
                    && !key.ends_with("_file");
                if secret && value.is_string() {
                    *value = Value::from("REDACTED");
                } else {
                    redact(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) if url::Url::parse(text).is_ok_and(|url| url.password().is_some()) => {
            *text = crate::errors::redact_url(text);
        }
        _ => {}
    }
}

/// The persisted layer, or an empty one (version 0) when there is no file.
pub(crate) fn load_layer(path: &Path) -> Result<RemoteLayer, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| format!("unreadable: {error}")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(RemoteLayer::default()),
        Err(error) => Err(error.to_string()),
    }
}

/// Persists the layer so that a power cut leaves either the old layer or the new one, never a mix.
pub(crate) fn save_layer(path: &Path, layer: &RemoteLayer) -> std::io::Result<()> {
    crate::durable::write(
        path,
        &serde_json::to_vec_pretty(layer).expect("layers serialize"),
    )
}

fn verifying_key(base64_key: &str) -> Result<VerifyingKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_key.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or("not the base64 of a 32-byte ed25519 public key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key".to_owned())
}

/// A new signing key: (secret, public), each base64.
pub fn generate_key() -> (String, String) {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let engine = base64::engine::general_purpose::STANDARD;
    (
        engine.encode(key.to_bytes()),
        engine.encode(key.verifying_key().to_bytes()),
    )
}

/// Reads a secret key file written by `generate_key` (base64 of the 32-byte seed).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .map(|bytes| SigningKey::from_bytes(&bytes))
        .ok_or_else(|| format!("{} is not a Lookout signing key", path.display()))
}

/// A complete, signed push of `config`.
pub fn signed_push(
    key: &SigningKey,
    version: u64,
    kind: PushKind,
    config: Map<String, Value>,
) -> Value {
    let signature = key.sign(&signed_bytes(version, kind, &config));
    serde_json::json!({
        "version": version,
        "kind": kind,
        "config": config,
        "signature": base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    fn keyed() -> (SigningKey, RemoteConfig) {
        let (secret, public) = generate_key();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), secret).unwrap();
        let key = read_signing_key(&dir.path().join("key")).unwrap();
        let remote = RemoteConfig {
            public_key: Some(public),
            ..RemoteConfig::default()
        };
        (key, remote)
    }

    fn parse(push: &Value) -> Push {
        Push::parse(push.to_string().as_bytes(), 1_000_000).unwrap()
    }

    #[test]
    fn canonical_bytes_ignore_key_order_and_spacing() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [1, {"z": 0, "y": 2.5}], "c": "x"}}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"c":"x","d":[1,{"y":2.5,"z":0}]},"b":1}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&b),
            r#"{"a":{"c":"x","d":[1,{"y":2.5,"z":0}]},"b":1}"#
        );
    }

    #[test]
    fn only_a_push_signed_by_the_configured_key_passes() {
        let (key, remote) = keyed();
        let config = object(json!({"escalation": {"threshold": 0.7}}));
        let good = parse(&signed_push(&key, 3, PushKind::MergePatch, config.clone()));
        assert_eq!(good.check_signature(&remote), Ok(()));

        // The same signature over other bytes (a changed value, version or kind).
        let mut tampered = good.clone();
        tampered.config = object(json!({"escalation": {"threshold": 0.1}}));
        assert!(tampered.check_signature(&remote).is_err());
        let mut replayed = good.clone();
        replayed.version = 4;
        assert!(replayed.check_signature(&remote).is_err());
        let mut kind = good.clone();
        kind.kind = PushKind::Full;
        assert!(kind.check_signature(&remote).is_err());

        // Another key's signature, no signature, a malformed one.
        let (other, _) = keyed();
        let foreign = parse(&signed_push(&other, 3, PushKind::MergePatch, config));
        assert!(foreign.check_signature(&remote).is_err());
        let mut unsigned = good.clone();
        unsigned.signature = None;
        assert_eq!(
            unsigned.check_signature(&remote).unwrap_err().message,
            "the push is not signed"
        );
        unsigned.signature = Some("bm90IGEgc2lnbmF0dXJl".to_owned());
        assert!(unsigned.check_signature(&remote).is_err());

        // No key: unsigned pushes only when the local file allows them.
        let open = RemoteConfig::default();
        assert!(good.check_signature(&open).is_err());
        let trusting = RemoteConfig {
            allow_unsigned: true,
            ..RemoteConfig::default()
        };
        assert_eq!(good.check_signature(&trusting), Ok(()));
    }

    #[test]
    fn versions_only_go_up_and_patches_build_on_the_layer() {
        let current = RemoteLayer {
            version: 5,
            layer: object(json!({"escalation": {"threshold": 0.7, "mode": "auto"}, "tasks": [1]})),
        };
        let patch = |version: u64, config: Value| Push {
            version,
            kind: PushKind::MergePatch,
            config: object(config),
            signature: None,
        };
        assert!(patch(5, json!({})).next_layer(&current).is_err());
        assert!(patch(2, json!({})).next_layer(&current).is_err());
        let next = patch(6, json!({"escalation": {"mode": null, "retries": 1}}))
            .next_layer(&current)
            .unwrap();
        assert_eq!(
            Value::Object(next.layer),
            json!({"escalation": {"threshold": 0.7, "retries": 1}, "tasks": [1]})
        );
        let full = Push {
            kind: PushKind::Full,
            ..patch(7, json!({"outbox": {"max_mb": 5}}))
        };
        assert_eq!(
            Value::Object(full.next_layer(&current).unwrap().layer),
            json!({"outbox": {"max_mb": 5}})
        );
        let sneaky = patch(8, json!({"remote": {"allow_unsigned": true}}));
        assert_eq!(
            sneaky.next_layer(&current).unwrap_err().path,
            "config.remote"
        );
    }

    #[test]
    fn bad_pushes_are_refused_with_a_reason() {
        let too_big = vec![b' '; 2000];
        assert!(
            Push::parse(&too_big, 1024)
                .unwrap_err()
                .message
                .contains("2000 bytes")
        );
        for (text, path) in [
            ("not json", ""),
            (r#"{"version": "7", "config": {}}"#, "version"),
            (r#"{"version": -1, "config": {}}"#, "version"),
            (r#"{"version": 1, "config": []}"#, "config"),
            (r#"{"version": 1, "config": {}, "extra": 1}"#, "extra"),
            (r#"{"version": 1, "kind": "replace", "config": {}}"#, "kind"),
            (r#"{"config": {}}"#, ""),
        ] {
            let error = Push::parse(text.as_bytes(), 1024).unwrap_err();
            assert_eq!(error.path, path, "{text}: {error}");
        }
    }

    #[test]
    fn the_layer_survives_a_save_and_a_missing_file_is_version_0() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/remote-config.json");
        assert_eq!(load_layer(&path), Ok(RemoteLayer::default()));
        let layer = RemoteLayer {
            version: 9,
            layer: object(json!({"outbox": {"max_mb": 3.5}})),
        };
        save_layer(&path, &layer).unwrap();
        assert_eq!(load_layer(&path), Ok(layer));
        std::fs::write(&path, "{ torn").unwrap();
        assert!(load_layer(&path).unwrap_err().starts_with("unreadable"));
    }

    #[test]
    fn locked_fields_and_secrets() {
        let before = json!({"mqtt": {"url": "mqtt://a:pw@h"}, "tasks": []});
        let after = json!({"mqtt": {"url": "mqtt://b@h"}, "tasks": [{"id": "t"}]});
        let locked = vec!["mqtt.url".to_owned(), "device".to_owned()];
        let changes = locked_changes(&locked, &before, &after);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "mqtt.url");

        let mut reported = json!({
            "mqtt": {"url": "mqtts://user:hunter2@broker:8883"},
            "cameras": [{"source": {"auth": {"basic": {"user": "v", "password": "s3cret"}}}}],
            "escalation": {"endpoints": [{"token_env": "HF_TOKEN", "token_file": "/run/creds/t"}]},
        });
        redact(&mut reported);
        let text = reported.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(
            text.contains("HF_TOKEN") && text.contains("/run/creds/t"),
            "{text}"
        );
    }
}
