//! Which values of a config and of the environment are secrets, so that the process keeps them out of
//! everything it writes (see `errors`): the router tokens (for `HF_TOKEN`, which `models fetch` sends
//! too, and each endpoint's variable: the variable, the file `<VAR>_FILE` names and the systemd
//! credential; and each endpoint's `token_file`), the broker password, the HTTP snapshot credentials
//! (a Basic password, a bearer token), and in every URL (snapshots, endpoints, the broker, the Hub) a
//! password and query values named like a credential. Token files are read at every load; the cloud client also holds each token file it
//! reads, so a file replaced between two reloads is covered.
//!
//! The daemon holds no signing key, only its public half; `lookout config sign` reads one and
//! prints nothing but the signature.

use std::path::Path;

use crate::errors::{MIN_SECRET_BYTES, Secrets};
use crate::source::{HttpAuth, SourceConfig};

use super::{Config, Env};

/// Query parameters of a snapshot URL whose value is a credential (`?pwd=`, `?auth=`, `?token=`...),
/// matched as parts of the lower-case name.
const CREDENTIAL_QUERY_NAMES: [&str; 6] = ["pass", "pwd", "token", "secret", "key", "auth"];

/// Every secret `config` and `env` hold. Warns about each one too short to be redacted, by where it
/// comes from.
pub fn secrets(config: &Config, env: &Env) -> Secrets {
    let mut found = Found::default();
    found.environment(env);
    let mut variables = Vec::new();
    for (index, endpoint) in config.escalation.endpoints.iter().enumerate() {
        found.url(&format!("escalation.endpoints[{index}].url"), &endpoint.url);
        if let Some(file) = &endpoint.token_file {
            found.file(&format!("escalation.endpoints[{index}].token_file"), file);
        }
        // HF_TOKEN is the environment's already.
        if !["", "HF_TOKEN"].contains(&endpoint.token_env.as_str()) {
            variables.push(endpoint.token_env.clone());
        }
    }
    variables.sort();
    variables.dedup();
    for variable in variables {
        found.variable(&variable, env);
    }
    if let Some(url) = &config.mqtt.url {
        found.url("mqtt.url", url);
    }
    for (index, camera) in config.cameras.iter().enumerate() {
        let SourceConfig::Http { url, auth, .. } = &camera.source else {
            continue;
        };
        let path = format!("cameras[{index}].source");
        found.url(&format!("{path}.url"), url);
        match auth {
            Some(HttpAuth::Basic { user, password }) => {
                found.basic(&format!("{path}.auth.basic.password"), user, password);
            }
            Some(HttpAuth::Bearer(token)) => found.plain(&format!("{path}.auth.bearer"), token),
            None => {}
        }
    }
    for origin in &found.too_short {
        tracing::warn!(secret = %origin, "This secret is shorter than {MIN_SECRET_BYTES} bytes, too short to be told apart from ordinary text, so it is not redacted from logs, payloads and files; use a longer one.");
    }
    found.secrets
}

/// The secrets of the environment alone (see `Found::environment`), held from the first log line on,
/// before a config is read. Silent: `secrets` warns about these too, once the config is read.
pub fn environment_secrets(env: &Env) -> Secrets {
    let mut found = Found::default();
    found.environment(env);
    found.secrets
}

#[derive(Default)]
struct Found {
    secrets: Secrets,
    /// Where each secret too short to be redacted comes from.
    too_short: Vec<String>,
}

impl Found {
    fn plain(&mut self, origin: &str, secret: &str) {
        self.check_length(origin, secret);
        self.secrets.add(secret);
    }

    fn check_length(&mut self, origin: &str, secret: &str) {
        if !secret.is_empty() && secret.len() < MIN_SECRET_BYTES {
            self.too_short.push(origin.to_owned());
        }
    }

    /// `HF_TOKEN` (which `models fetch` sends too), and a password in the Hub's URL (`HF_ENDPOINT`).
    fn environment(&mut self, env: &Env) {
        self.variable("HF_TOKEN", env);
        if let Some(url) = env.get("HF_ENDPOINT") {
            self.url("HF_ENDPOINT", url);
        }
    }

    /// A token's variable, the file `<VAR>_FILE` names and the systemd credential named like the
    /// variable in lower case.
    fn variable(&mut self, variable: &str, env: &Env) {
        if let Some(token) = env.get(variable) {
            self.plain(variable, token.trim());
        }
        let file_variable = format!("{variable}_FILE");
        if let Some(file) = env.get(&file_variable) {
            self.file(&file_variable, Path::new(file));
        }
        if let Some(credentials) = env.get("CREDENTIALS_DIRECTORY") {
            let name = variable.to_ascii_lowercase();
            self.file(
                &format!("the systemd credential {name}"),
                &Path::new(credentials).join(&name),
            );
        }
    }

    /// A file's content, trimmed as the cloud client trims it. An unreadable file is skipped: the
    /// cloud client says so when it needs the token.
    fn file(&mut self, origin: &str, path: &Path) {
        if let Ok(text) = std::fs::read_to_string(path) {
            self.plain(origin, text.trim());
        }
    }

    fn basic(&mut self, origin: &str, user: &str, password: &str) {
        self.check_length(origin, password);
        self.secrets.add_basic(user, password);
    }

    /// A URL's password as written, as decoded (reqwest sends it as a Basic credential; the MQTT
    /// client decodes `+` as a space too), and its credential-like query values.
    fn url(&mut self, origin: &str, url: &str) {
        let Ok(parsed) = url::Url::parse(url) else {
            return;
        };
        if let Some(password) = parsed.password() {
            let decode = |text: &str| {
                url::form_urlencoded::parse(format!("x={text}").as_bytes())
                    .next()
                    .map(|(_, value)| value.into_owned())
                    .unwrap_or_default()
            };
            let percent_decoded = |text: &str| decode(&text.replace('+', "%2B"));
            self.basic(
                origin,
                &percent_decoded(parsed.username()),
                &percent_decoded(password),
            );
            self.secrets.add(password);
            self.secrets.add(&decode(password));
        }
        for (name, value) in parsed.query_pairs() {
            let lower = name.to_ascii_lowercase();
            if CREDENTIAL_QUERY_NAMES
                .iter()
                .any(|credential| lower.contains(credential))
            {
                self.plain(&format!("{origin} (query {name})"), &value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn config(text: &str) -> Config {
        Config::from_toml(text, &Env::default()).unwrap()
    }

    fn leaks(secrets: &Secrets, text: &str) -> bool {
        secrets.redact(text.as_bytes()) != text.as_bytes()
    }

    #[test]
    fn every_kind_of_secret_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let endpoint_file = write("endpoint-token", "token-from-endpoint-file\n");
        let hf_file = write("hf-token", "token-from-hf-token-file\n");
        std::fs::create_dir(dir.path().join("credentials")).unwrap();
        write("credentials/router_b", "token-from-systemd-credential");
        let text = format!(
            r#"
            [mqtt]
            url = "mqtt://lookout:broker%2Bpass+word@127.0.0.1:1883"
            [[cameras]]
            id = "url"
            source = {{ kind = "http", url = "http://viewer:url-password@127.0.0.1/snap?pwd=query-password&size=large-image" }}
            [[cameras]]
            id = "basic"
            source = {{ kind = "http", url = "http://127.0.0.1/snap", auth = {{ basic = {{ user = "viewer", password = "basic-password" }} }} }}
            [[cameras]]
            id = "bearer"
            source = {{ kind = "http", url = "http://127.0.0.1/snap", auth = {{ bearer = "bearer-token-value" }} }}
            [escalation]
            endpoints = [
                {{ name = "a", url = "http://127.0.0.1/v1", model = "m", token_file = "{endpoint_file}" }},
                {{ name = "b", url = "http://proxy:endpoint-password@127.0.0.1/v1", model = "m", token_env = "ROUTER_B" }},
            ]
            "#
        );
        let env = Env::from_pairs([
            ("HF_TOKEN_FILE", hf_file.as_str()),
            ("ROUTER_B", " token-from-router-b-variable \n"),
            ("HF_ENDPOINT", "https://mirror:hub-mirror-password@hub.lan"),
            (
                "CREDENTIALS_DIRECTORY",
                &dir.path().join("credentials").display().to_string(),
            ),
        ]);
        let secrets = secrets(&config(&text), &env);
        let basic = |credential: &str| base64::engine::general_purpose::STANDARD.encode(credential);
        for secret in [
            "token-from-endpoint-file".to_owned(),
            "token-from-hf-token-file".to_owned(),
            "token-from-systemd-credential".to_owned(),
            "token-from-router-b-variable".to_owned(),
            "broker%2Bpass+word".to_owned(),
            "broker+pass word".to_owned(),
            "url-password".to_owned(),
            basic("viewer:url-password"),
            "query-password".to_owned(),
            "basic-password".to_owned(),
            basic("viewer:basic-password"),
            "bearer-token-value".to_owned(),
            "endpoint-password".to_owned(),
            "hub-mirror-password".to_owned(),
        ] {
            assert!(leaks(&secrets, &format!("echo: {secret}")), "{secret}");
        }
        // Names, hosts and ordinary query values are not secrets.
        for text in ["viewer", "lookout", "127.0.0.1", "large-image", "/snap"] {
            assert!(!leaks(&secrets, text), "{text}");
        }
    }

    #[test]
    fn a_short_secret_is_warned_about_by_where_it_comes_from() {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let logs = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer({
                let lines = lines.clone();
                move || lines.clone()
            })
            .finish();
        let env = Env::from_pairs([("HF_TOKEN", "hf_1234")]);
        let config = config(super::super::DEFAULT_TOML);
        let held = tracing::subscriber::with_default(logs, || secrets(&config, &env));
        assert!(held.is_empty());
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("secret=HF_TOKEN") && text.contains("shorter than 8 bytes"),
            "{text}"
        );
        assert!(!text.contains("hf_1234"), "{text}");
    }

    #[test]
    fn no_secret_no_redaction() {
        let secrets = secrets(&config(super::super::DEFAULT_TOML), &Env::default());
        assert!(secrets.is_empty());
    }
}
