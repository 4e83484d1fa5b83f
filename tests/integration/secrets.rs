//! No secret Lookout holds leaves the box, whatever a server sends back. Each kind of secret (router
//! tokens, HTTP snapshot credentials, the broker password, signing keys) is quoted back by a real
//! server on loopback, or refused by a real mosquitto, while a real `lookout run` logs at trace level;
//! then the secret is looked for in everything the process wrote: every line of its log, every MQTT
//! message on the broker (`#`), every file under its state and dataset folders. New secrets that a
//! reload or a push brings are looked for too.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::echo::{EchoServer, Reply, Request};
use common::process::Run;
use common::{Message, Mosquitto, Subscriber, Toml};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            found.push((path, bytes));
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Asserts that none of `secrets`, nor the first half of one (what a cut through it would leave), is
/// in `log`, in a message the daemon published (what the test itself sent on `config/desired` is the
/// operator's), or in a file under `folders` other than `except`.
fn assert_nowhere(
    secrets: &[&str],
    log: &str,
    messages: &[Message],
    folders: &[&Path],
    except: &[&str],
) {
    let halves = secrets.iter().map(|secret| &secret[..secret.len() / 2]);
    for secret in secrets.iter().copied().chain(halves) {
        if let Some(line) = log.lines().find(|line| line.contains(secret)) {
            panic!("{secret:?} is in the log: {line}");
        }
        for message in messages {
            if !message.topic.ends_with("/config/desired") {
                assert!(
                    !contains(&message.payload, secret),
                    "{secret:?} is in a message on {}: {}",
                    message.topic,
                    message.text()
                );
            }
        }
        for (path, bytes) in folders.iter().flat_map(|folder| files(folder)) {
            let name = path.file_name().unwrap().to_string_lossy();
            if !except.contains(&name.as_ref()) {
                assert!(
                    !contains(&bytes, secret),
                    "{secret:?} is in {}",
                    path.display()
                );
            }
        }
    }
}

/// Collects what arrives into `seen` until `done(seen, run)`; panics with the log after `WAIT`.
async fn collect_until(
    subscriber: &mut Subscriber,
    seen: &mut Vec<Message>,
    run: &Run,
    what: &str,
    done: impl Fn(&[Message], &Run) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(seen, run) {
        assert!(
            Instant::now() < deadline,
            "no {what}; log:\n{}",
            run.log_text()
        );
        seen.extend(subscriber.collect_for(Duration::from_millis(200)).await);
    }
}

fn is_cloud_answer(message: &Message) -> bool {
    message.topic.ends_with("/answer") && message.json()["tier"] == "cloud"
}

/// A chat-completions server that quotes the key back: 401 with `Incorrect API key provided:
/// <token>` for every token but `answering`, and for that one an answer that quotes it too.
fn chat_completions(answering: &'static str) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    move |request| {
        let token = request.credential().to_owned();
        if token == answering {
            let text = format!(
                "A grey picture. You sent {}.",
                request.header("authorization")
            );
            Reply::json(
                200,
                &json!({
                    "id": "chatcmpl-echo",
                    "object": "chat.completion",
                    "model": "big-vlm",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                }),
            )
        } else {
            // Padded so that the daemon's cut of a server's message at 200 characters goes through
            // the key, after its first 25.
            let message = format!(
                "{}Incorrect API key provided: {token}. You can find your API key at https://huggingface.co/settings/tokens.",
                "-".repeat(147)
            );
            Reply::json(
                401,
                &json!({"error": {"message": message, "type": "invalid_request_error"}}),
            )
        }
    }
}

const ANSWERING_TOKEN: &str = "hf_AnsweringVariableToken0123456789";

fn router_config(
    broker: &Mosquitto,
    cloud: &EchoServer,
    token_file: &Path,
    dataset: &Path,
) -> String {
    Toml::device("tokens")
        .mqtt(&broker.url())
        .key("stats_interval_secs", 0.5)
        .smolvlm()
        .camera("cam", 320, 240, 5.0)
        .task("describe", "cam", "Describe what you see.")
        .interval(1.0)
        .raw(&format!(
            r#"[escalation]
enabled = true
mode = "always"
min_interval_secs = 0.0
duplicate_distance = -1
breaker_failures = 100
[escalation.budget]
per_minute = 100000
per_hour = 100000
per_day = 100000
[[escalation.endpoints]]
name = "hf-token-file"
url = "{cloud}/v1"
model = "big-vlm"
token_env = "HF_TOKEN"
[[escalation.endpoints]]
name = "credential"
url = "{cloud}/v1"
model = "big-vlm"
token_env = "ROUTER_CREDENTIAL"
[[escalation.endpoints]]
name = "token-file"
url = "{cloud}/v1"
model = "big-vlm"
token_file = "{token_file}"
[[escalation.endpoints]]
name = "variable"
url = "{cloud}/v1"
model = "big-vlm"
token_env = "ROUTER_VARIABLE"
[dataset]
enabled = true
cameras = ["cam"]
dir = "{dataset}"
"#,
            cloud = cloud.url,
            token_file = token_file.display(),
            dataset = dataset.display(),
        ))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_tokens_a_server_quotes_back_never_leave_the_box() {
    let hf_token_file = "hf_FromTheHfTokenFileVariable0123456789";
    let credential = "hf_FromTheSystemdCredential0123456789";
    let endpoint_file = "hf_FromTheEndpointsTokenFile0123456789";
    let reloaded = "hf_ANewTokenFileAfterTheReload0123456789";
    let broker = Mosquitto::start();
    let mut subscriber = Subscriber::connect(broker.port, &["#"]).await;
    let cloud = EchoServer::start(chat_completions(ANSWERING_TOKEN)).await;
    let work = tempfile::tempdir().unwrap();
    let (state, dataset) = (work.path().join("state"), work.path().join("dataset"));
    let write = |name: &str, text: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let hf_file = write("hf-token", &format!("{hf_token_file}\n"));
    std::fs::create_dir(work.path().join("credentials")).unwrap();
    write("credentials/router_credential", credential);
    let token_file = write("endpoint-token", endpoint_file);
    let credentials = work.path().join("credentials");
    let run = Run::start_with_env(
        work.path(),
        "tokens",
        &router_config(&broker, &cloud, &token_file, &dataset),
        &state,
        &[],
        &[
            ("LOOKOUT_LOG", "trace"),
            ("HF_TOKEN_FILE", hf_file.to_str().unwrap()),
            ("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap()),
            ("ROUTER_VARIABLE", ANSWERING_TOKEN),
        ],
    );

    let mut seen = Vec::new();
    collect_until(
        &mut subscriber,
        &mut seen,
        &run,
        "cloud answer saved in the dataset",
        |seen, _| {
            seen.iter().any(is_cloud_answer)
                && std::fs::read(dataset.join("metadata.jsonl")).is_ok_and(|rows| !rows.is_empty())
        },
    )
    .await;
    let tokens = [hf_token_file, credential, endpoint_file, ANSWERING_TOKEN];
    for token in tokens {
        assert!(cloud.was_sent(token), "{token} was not sent");
    }
    let log = run.log_text();
    assert_nowhere(&tokens, &log, &seen, &[&state, &dataset], &[]);
    // The refusals and the answer were there, quoting the keys, and were redacted.
    assert!(
        log.contains("Incorrect API key provided: REDACTED"),
        "{log}"
    );
    let answer = seen
        .iter()
        .find(|message| is_cloud_answer(message))
        .unwrap();
    assert_eq!(
        answer.json()["answer"],
        "A grey picture. You sent Bearer REDACTED."
    );

    // A reload brings a new token file: its token is kept out too.
    std::fs::write(work.path().join("reloaded-token"), reloaded).unwrap();
    std::fs::write(
        work.path().join("tokens.toml"),
        router_config(
            &broker,
            &cloud,
            &work.path().join("reloaded-token"),
            &dataset,
        ),
    )
    .unwrap();
    run.signal("HUP");
    run.wait_for("the new token sent", |_| cloud.was_sent(reloaded));
    // The escalation that sent it publishes its answer after its refusal is logged.
    let before = seen
        .iter()
        .filter(|message| is_cloud_answer(message))
        .count();
    collect_until(
        &mut subscriber,
        &mut seen,
        &run,
        "two cloud answers after the reload",
        |seen, _| {
            seen.iter()
                .filter(|message| is_cloud_answer(message))
                .count()
                >= before + 2
        },
    )
    .await;

    assert_nowhere(
        &[
            hf_token_file,
            credential,
            endpoint_file,
            ANSWERING_TOKEN,
            reloaded,
        ],
        &run.log_text(),
        &seen,
        &[&state, &dataset],
        &[],
    );
}

fn camera(id: &str, url: &str, auth: Option<serde_json::Value>) -> serde_json::Value {
    let mut source = json!({"kind": "http", "url": url, "interval_secs": 0.3, "timeout_secs": 5.0});
    if let Some(auth) = auth {
        source["auth"] = auth;
    }
    json!({"id": id, "source": source})
}

/// The four cameras: a password in the URL, Basic, bearer, and a password in the query.
fn cameras(server: &EchoServer, basic_password: &str, bearer: &str) -> serde_json::Value {
    let host = server.url.trim_start_matches("http://");
    json!([
        camera(
            "userinfo",
            &format!("http://viewer:{URL_PASSWORD}@{host}/userinfo?size=large"),
            None
        ),
        camera(
            "basic",
            &format!("{}/basic", server.url),
            Some(json!({"basic": {"user": "viewer", "password": basic_password}}))
        ),
        camera(
            "bearer",
            &format!("{}/bearer", server.url),
            Some(json!({"bearer": bearer}))
        ),
        camera(
            "query",
            &format!("{}/query?user=viewer&pwd={QUERY_PASSWORD}", server.url),
            None
        ),
    ])
}

const URL_PASSWORD: &str = "url-password-0123";
const QUERY_PASSWORD: &str = "query-password-0123";

/// A snapshot server that quotes back the credentials and the URL it was sent: to each camera in turn
/// a 401 and a 500 with them in the body, and a 200 that names them in its content type (which the
/// daemon reports: it is not an image). The camera with a password in its query gets no answer at all,
/// so the client's error names the URL.
fn snapshots() -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let counts = std::sync::Mutex::new(std::collections::HashMap::<String, usize>::new());
    move |request| {
        let path = request.target.split('?').next().unwrap().to_owned();
        if path == "/query" {
            return Reply::Hang;
        }
        let echo = format!(
            "authorization=\"{}\"; url=\"{}\"",
            request.header("authorization"),
            request.target
        );
        let mut counts = counts.lock().unwrap();
        let count = counts.entry(path).or_default();
        *count += 1;
        match *count % 3 {
            0 => Reply::text(200, &format!("text/html; {echo}"), "<html></html>"),
            1 => Reply::text(401, "text/plain", &format!("denied: {echo}")),
            _ => Reply::text(500, "text/plain", &format!("broken: {echo}")),
        }
    }
}

/// Log lines that report the snapshot server's answer to the camera at `path` (it names the URL).
fn quoted(run: &Run, path: &str) -> usize {
    let url = format!("url=\"/{path}");
    run.log_text()
        .lines()
        .filter(|line| line.contains("not an image") && line.contains(&url))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_credentials_a_camera_quotes_back_never_leave_the_box() {
    let (basic_password, bearer) = ("basic-password-0123", "bearer-token-0123");
    let (reloaded_password, pushed_bearer) = ("reloaded-password-0123", "pushed-bearer-0123");
    let broker = Mosquitto::start();
    let mut subscriber = Subscriber::connect(broker.port, &["#"]).await;
    let server = EchoServer::start(snapshots()).await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let config = |basic_password: &str| {
        let cameras: toml::Value =
            serde_json::from_value(cameras(&server, basic_password, bearer)).unwrap();
        let mut document: toml::Table = Toml::device("snapshots")
            .mqtt(&broker.url())
            .key("stats_interval_secs", 0.5)
            .smolvlm()
            .section("remote")
            .key("allow_unsigned", true)
            .to_string()
            .parse()
            .unwrap();
        document.insert("cameras".to_owned(), cameras);
        document.to_string()
    };
    let run = Run::start_with_env(
        work.path(),
        "snapshots",
        &config(basic_password),
        &state,
        &[],
        &[("LOOKOUT_LOG", "trace")],
    );
    let (url_basic, basic_basic) = (
        basic("viewer", URL_PASSWORD),
        basic("viewer", basic_password),
    );
    run.wait_for("every camera's credentials quoted back", |run| {
        ["userinfo", "basic", "bearer"]
            .iter()
            .all(|path| quoted(run, path) > 0)
            && run
                .log_text()
                .lines()
                .any(|line| line.contains("Source unavailable") && line.contains("/query?"))
    });
    let first = [url_basic.as_str(), &basic_basic, bearer, QUERY_PASSWORD];
    for credential in first {
        assert!(server.was_sent(credential), "{credential} was not sent");
    }
    assert_nowhere(&first, &run.log_text(), &[], &[&state], &[]);
    assert!(run.log_text().contains("pwd=REDACTED"));

    // A reload brings a new password, a push a new token: both are kept out too.
    std::fs::write(
        work.path().join("snapshots.toml"),
        config(reloaded_password),
    )
    .unwrap();
    run.signal("HUP");
    let reloaded_basic = basic("viewer", reloaded_password);
    run.wait_for("the reloaded password sent", |_| {
        server.was_sent(&reloaded_basic)
    });
    let before = quoted(&run, "basic");
    run.wait_for("the reloaded password quoted back", |run| {
        quoted(run, "basic") > before
    });
    let push = json!({
        "version": 1,
        "kind": "merge_patch",
        "config": {"cameras": cameras(&server, reloaded_password, pushed_bearer)},
    });
    subscriber
        .publish("lookout/snapshots/config/desired", push.to_string())
        .await;
    let mut seen = Vec::new();
    collect_until(
        &mut subscriber,
        &mut seen,
        &run,
        "the push applied",
        |seen, _| {
            seen.iter().any(|message| {
                message.topic.ends_with("/config/ack") && message.json()["ok"] == true
            })
        },
    )
    .await;
    run.wait_for("the pushed token sent", |_| server.was_sent(pushed_bearer));
    let before = quoted(&run, "bearer");
    run.wait_for("the pushed token quoted back", |run| {
        quoted(run, "bearer") > before
    });
    seen.extend(subscriber.collect_for(Duration::from_secs(1)).await);
    let reported = seen
        .iter()
        .rev()
        .find(|message| message.topic.ends_with("/config/reported"))
        .expect("config/reported");
    assert!(reported.text().contains("REDACTED"), "{}", reported.text());

    assert_nowhere(
        &[
            URL_PASSWORD,
            &url_basic,
            QUERY_PASSWORD,
            basic_password,
            &basic_basic,
            bearer,
            reloaded_password,
            &reloaded_basic,
            pushed_bearer,
        ],
        &run.log_text(),
        &seen,
        &[&state],
        // The pushed layer is configuration, kept as pushed so that the next start runs it.
        &["remote-config.json"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_password_never_leaves_the_box_right_or_wrong() {
    let (right, wrong) = ("broker-right-password-0123", "broker-wrong-password-0123");
    let port = common::free_port();
    let mut broker = Mosquitto::prepare(
        port,
        "allow_anonymous false\npassword_file {dir}/passwords\n",
    );
    let passwords = broker.dir().join("passwords");
    std::fs::write(&passwords, "").unwrap();
    let status = Command::new("mosquitto_passwd")
        .args(["-b", passwords.to_str().unwrap(), "lookout", right])
        .status()
        .expect("mosquitto_passwd is installed with mosquitto");
    assert!(status.success());
    broker.launch();
    let mut subscriber = Subscriber::connect_as(port, &["#"], Some(("lookout", right))).await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let config = |password: &str| {
        Toml::device("broker")
            .mqtt(&format!("mqtt://lookout:{password}@127.0.0.1:{port}"))
            .key("stats_interval_secs", 0.5)
            .smolvlm()
            .to_string()
    };

    // Refused: the broker says no, the daemon retries and says why, never with what it sent. The
    // wrong password comes from the environment, the way a unit file gives it.
    let url = format!("mqtt://lookout:{wrong}@127.0.0.1:{port}");
    let refused = Run::start_with_env(
        work.path(),
        "refused",
        &config(right),
        &state,
        &[],
        &[("LOOKOUT_LOG", "trace"), ("LOOKOUT_MQTT_URL", &url)],
    );
    refused.wait_for("the refusal logged", |run| {
        run.log_text().contains("MQTT connection failed")
    });
    let refused_log = refused.log_text();
    drop(refused);

    let accepted = Run::start_with_env(
        work.path(),
        "accepted",
        &config(right),
        &state,
        &[],
        &[("LOOKOUT_LOG", "trace")],
    );
    let mut seen = Vec::new();
    collect_until(
        &mut subscriber,
        &mut seen,
        &accepted,
        "the running config reported and stats",
        |seen, _| {
            seen.iter()
                .any(|message| message.topic == "lookout/broker/config/reported")
                && seen
                    .iter()
                    .any(|message| message.topic == "lookout/broker/stats")
        },
    )
    .await;
    let reported = seen
        .iter()
        .find(|message| message.topic == "lookout/broker/config/reported")
        .unwrap();
    assert!(reported.text().contains("REDACTED"), "{}", reported.text());
    assert_nowhere(
        &[right, wrong],
        &format!("{refused_log}{}", accepted.log_text()),
        &seen,
        &[&state],
        &[],
    );
}

/// The daemon holds only the public half of a signing key; the CLI that holds the secret one says
/// nothing of it, whatever file it is given in its place.
#[test]
fn the_signing_key_is_never_printed() {
    let lookout = env!("CARGO_BIN_EXE_lookout");
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("push.key");
    let output = |args: &[&str]| {
        let output = Command::new(lookout).args(args).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let key_arg = key.to_str().unwrap();
    output(&["config", "keygen", "--out", key_arg]);
    let secret = std::fs::read_to_string(&key).unwrap().trim().to_owned();
    let as_json = work.path().join("push.json");
    std::fs::copy(&key, &as_json).unwrap();
    let with_key = work.path().join("with-key.toml");
    std::fs::write(
        &with_key,
        format!("[remote]\npublic_key = \"{secret}\"\nbogus = 1\n"),
    )
    .unwrap();
    let good = work.path().join("good.toml");
    std::fs::write(&good, "[escalation]\nthreshold = 0.7\n").unwrap();
    for args in [
        vec!["config", "check", key_arg],
        vec![
            "config",
            "sign",
            "--key",
            key_arg,
            "--version",
            "1",
            key_arg,
        ],
        vec![
            "config",
            "sign",
            "--key",
            key_arg,
            "--version",
            "1",
            as_json.to_str().unwrap(),
        ],
        vec![
            "config",
            "sign",
            "--key",
            key_arg,
            "--version",
            "1",
            good.to_str().unwrap(),
        ],
        vec![
            "config",
            "sign",
            "--key",
            with_key.to_str().unwrap(),
            "--version",
            "1",
            good.to_str().unwrap(),
        ],
        vec!["config", "show", "--config", with_key.to_str().unwrap()],
    ] {
        let printed = output(&args);
        assert!(
            !printed.contains(&secret),
            "{args:?} printed the key: {printed}"
        );
    }
}
