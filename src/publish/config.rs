//! How to reach the broker: the `[mqtt]` section, its validation, and the rumqttc options it becomes
//! (the endpoint its URL resolves to, TLS files read, the session and packet limits the driver needs).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use serde::Deserialize;

use super::inflight::STATUS_SLOTS;
use super::{PublishError, Topics};
use crate::errors::redact_url;
use crate::validate::{self, Problems};

/// Requests the client may queue (subscriptions and stats; answers do not pass through it).
pub(super) const REQUEST_CAPACITY: usize = 64;
/// The largest packet read or written. Far above any answer or config push this daemon accepts, so an
/// oversized push arrives and is refused with an ack; rumqttc's default (10 kB) would drop the
/// connection instead, and the broker would deliver the same packet again after every reconnect.
const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// How to reach the broker.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://[user:password@]host[:port]` or `mqtts://...`; `None` starts the embedded broker.
    pub url: Option<String>,
    pub embedded_listen: SocketAddr,
    pub prefix: String,
    pub client_id: Option<String>,
    pub keep_alive_secs: u64,
    pub stats_interval_secs: f64,
    /// Answers sent and not yet acknowledged, at most.
    pub inflight: u16,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// One INFO line per published answer; fleets turn it off (applied on reload).
    pub log_answers: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: None,
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            prefix: "lookout".to_owned(),
            client_id: None,
            keep_alive_secs: 30,
            stats_interval_secs: 30.0,
            inflight: 16,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            log_answers: true,
        }
    }
}

impl MqttConfig {
    /// Whether `other` differs in a field that takes effect only at the next start (all but
    /// `log_answers`, which the publisher follows live).
    pub(crate) fn needs_restart_against(&self, other: &MqttConfig) -> bool {
        let live = |config: &MqttConfig| MqttConfig {
            log_answers: true,
            ..config.clone()
        };
        live(self) != live(other)
    }
}

/// The URL may carry a password: Debug shows it redacted.
impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("embedded_listen", &self.embedded_listen)
            .field("prefix", &self.prefix)
            .field("client_id", &self.client_id)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("stats_interval_secs", &self.stats_interval_secs)
            .field("inflight", &self.inflight)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("log_answers", &self.log_answers)
            .finish()
    }
}

/// The broker endpoint a config resolves to.
#[derive(Clone, PartialEq)]
struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
    credentials: Option<(String, String)>,
}

impl MqttConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        validate::topic_segment(problems, &format!("{path}.prefix"), &self.prefix);
        if let Some(client_id) = &self.client_id {
            validate::topic_segment(problems, &format!("{path}.client_id"), client_id);
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            problems.push(
                format!("{path}.keep_alive_secs"),
                format!("must be 5 to 3600, not {}", self.keep_alive_secs),
            );
        }
        if !(1..=1000).contains(&self.inflight) {
            problems.push(
                format!("{path}.inflight"),
                format!("must be 1 to 1000, not {}", self.inflight),
            );
        }
        validate::seconds(
            problems,
            &format!("{path}.stats_interval_secs"),
            self.stats_interval_secs,
        );
        let endpoint = match self.endpoint() {
            Ok(endpoint) => Some(endpoint),
            Err(reason) => {
                problems.push(format!("{path}.url"), reason);
                None
            }
        };
        for (field, file) in [
            ("ca_file", &self.ca_file),
            ("client_cert_file", &self.client_cert_file),
            ("client_key_file", &self.client_key_file),
        ] {
            let Some(file) = file else { continue };
            if !file.is_file() {
                problems.push(
                    format!("{path}.{field}"),
                    format!("{} is not a readable file", file.display()),
                );
            }
            if endpoint.as_ref().is_some_and(|endpoint| !endpoint.tls) {
                problems.push(
                    format!("{path}.{field}"),
                    "TLS files are only used with an mqtts:// url",
                );
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            problems.push(
                format!("{path}.client_cert_file"),
                "give both client_cert_file and client_key_file, or neither",
            );
        }
    }

    fn endpoint(&self) -> Result<Endpoint, String> {
        let Some(url) = &self.url else {
            return Ok(Endpoint {
                host: self.embedded_listen.ip().to_string(),
                port: self.embedded_listen.port(),
                tls: false,
                credentials: None,
            });
        };
        let parsed = url::Url::parse(url).map_err(|error| format!("not a URL ({error})"))?;
        let tls = match parsed.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("scheme {other:?} is not mqtt or mqtts")),
        };
        let host = parsed
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or("the URL has no host")?;
        if parsed.path().len() > 1 || parsed.query().is_some() {
            return Err("the URL must be just scheme, credentials, host and port".to_owned());
        }
        let decode = |text: &str| {
            url::form_urlencoded::parse(format!("x={text}").as_bytes())
                .next()
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        };
        let credentials = (!parsed.username().is_empty()).then(|| {
            (
                decode(parsed.username()),
                parsed.password().map(decode).unwrap_or_default(),
            )
        });
        Ok(Endpoint {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: parsed.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            credentials,
        })
    }

    /// Whether the daemon must start its own broker.
    pub(crate) fn uses_embedded_broker(&self) -> bool {
        self.url.is_none()
    }
}

/// The client options for `config`, reading its TLS files.
pub(super) fn options(
    config: &MqttConfig,
    device: &str,
    topics: &Topics,
) -> Result<MqttOptions, PublishError> {
    let endpoint = config.endpoint().map_err(PublishError::Settings)?;
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("lookout-{device}"));
    let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
        .set_clean_session(false)
        // Room for every packet id the driver may choose, so rumqttc never holds back the client's
        // own requests on their account.
        .set_inflight(config.inflight + STATUS_SLOTS + 1)
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_last_will(LastWill::new(
            topics.status(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some((user, password)) = endpoint.credentials {
        options.set_credentials(user, password);
    }
    if endpoint.tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| PublishError::ReadFile {
                path: path.clone(),
                source,
            })
        };
        let transport = match &config.ca_file {
            Some(ca_file) => {
                let client_auth = match (&config.client_cert_file, &config.client_key_file) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                };
                Transport::tls_with_config(TlsConfiguration::Simple {
                    ca: read(ca_file)?,
                    alpn: None,
                    client_auth,
                })
            }
            None => Transport::tls_with_default_config(),
        };
        options.set_transport(transport);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_to_endpoints_with_decoded_credentials() {
        let config = |url: &str| MqttConfig {
            url: Some(url.to_owned()),
            ..MqttConfig::default()
        };
        let plain = config("mqtt://broker.local").endpoint().unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.tls),
            ("broker.local", 1883, false)
        );
        let secure = config("mqtts://u%40x:p%2Fw@10.0.0.2:9999")
            .endpoint()
            .unwrap();
        assert_eq!((secure.port, secure.tls), (9999, true));
        assert_eq!(
            secure.credentials,
            Some(("u@x".to_owned(), "p/w".to_owned()))
        );
        assert_eq!(config("mqtts://h").endpoint().unwrap().port, 8883);
        for bad in ["http://h", "mqtt://", "not a url", "mqtt://h/topic"] {
            assert!(config(bad).endpoint().is_err(), "{bad} accepted");
        }
        let embedded = MqttConfig::default().endpoint().unwrap();
        assert_eq!((embedded.host.as_str(), embedded.port), ("127.0.0.1", 1883));
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let config = MqttConfig {
            url: Some("mqtt://user:hunter2@h:1883".to_owned()),
            ..MqttConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user:REDACTED@h"), "{shown}");
    }
}
