//! Escalation to the cloud, against a real HTTP server on loopback that speaks chat completions and
//! injects faults: the client's retries, `Retry-After`, timeouts, replies that are not answers, huge
//! bodies, failover and breakers; then the daemon: unsure answers replaced by the cloud's with their
//! provenance, budgets that run out without holding local answers up, and escalations that wait out a
//! cloud outage in the on-disk queue and are answered with the same id when it ends.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cloud::{CloudServer, Reply};
use common::{Daemon, Mosquitto, Subscriber, Toml, config_with};
use lookout::env::Env;
use lookout::escalate::{Cloud, CloudError, EndpointConfig, EscalationConfig, Question};
use lookout::message::AnswerKind;
use lookout::stats::Stats;
use serde_json::{Value, json};

const TOKEN: &str = "hf_test_secret_token";

fn endpoint(name: &str, url: &str) -> EndpointConfig {
    EndpointConfig {
        name: name.to_owned(),
        url: url.to_owned(),
        model: "org/big-vlm:fastest".to_owned(),
        ..EndpointConfig::default()
    }
}

fn settings(endpoints: Vec<EndpointConfig>) -> EscalationConfig {
    EscalationConfig {
        enabled: true,
        endpoints,
        request_timeout_secs: 5.0,
        deadline_secs: 20.0,
        retries: 2,
        ..EscalationConfig::default()
    }
}

fn client(config: &EscalationConfig) -> (Cloud, Arc<Stats>) {
    let stats = Arc::new(Stats::default());
    let env = Env::from_pairs([("HF_TOKEN", TOKEN)]);
    (Cloud::new(config, env, stats.clone()), stats)
}

fn jpeg() -> Vec<u8> {
    let image =
        image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut bytes)
        .encode_image(&image)
        .unwrap();
    bytes
}

async fn ask_yes_no(cloud: &Cloud) -> Result<lookout::escalate::CloudAnswer, CloudError> {
    cloud
        .ask(
            Question {
                text: "Is the door open?",
                kind: &AnswerKind::YesNo,
                jpegs: &[jpeg()],
            },
            || {},
        )
        .await
}

#[tokio::test]
async fn a_clip_goes_as_its_frames_in_order_at_most_the_endpoints_cap() {
    let server = CloudServer::start(vec![], Reply::answer("yes")).await;
    let mut target = endpoint("router", &server.url);
    target.max_images = 3;
    let (cloud, _) = client(&settings(vec![target]));
    // Five distinct frames, oldest first.
    let frames: Vec<Vec<u8>> = (0..5u8).map(|index| vec![index; 16]).collect();
    let answer = cloud
        .ask(
            Question {
                text: "Did anyone come in?",
                kind: &AnswerKind::YesNo,
                jpegs: &frames,
            },
            || {},
        )
        .await
        .unwrap();
    assert_eq!(answer.answer, "yes");
    let received = &server.received()[0];
    let sent = received.images();
    // Spread from the first to the last: frames 0, 2 and 4.
    assert_eq!(
        sent,
        [frames[0].clone(), frames[2].clone(), frames[4].clone()]
    );
    let text = received.text();
    assert!(
        text.starts_with("The 3 images are frames of a video, oldest first.\nDid anyone come in?"),
        "{text}"
    );
}

fn gap(server: &CloudServer, from: usize) -> Duration {
    let received = server.received();
    received[from + 1].at - received[from].at
}

#[tokio::test]
async fn the_request_carries_frame_question_token_and_billing_and_the_answer_its_provenance() {
    let server = CloudServer::start(vec![], Reply::answer("Yes, it is.")).await;
    let mut target = endpoint("router", &server.url);
    target.bill_to = Some("acme-org".to_owned());
    let (cloud, _) = client(&settings(vec![target]));

    let answer = ask_yes_no(&cloud).await.unwrap();
    assert_eq!(answer.answer, "yes");
    assert_eq!(answer.endpoint, "router");
    assert_eq!(answer.model, "big-vlm");
    assert_eq!(answer.provider.as_deref(), Some("nebius"));
    assert_eq!(answer.request_id.as_deref(), Some("req-42"));
    assert_eq!(answer.usage.as_ref().unwrap().prompt_tokens, Some(812));

    let received = server.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(request.headers["x-hf-bill-to"], "acme-org");
    assert_eq!(request.body["model"], "org/big-vlm:fastest");
    assert_eq!(request.images(), [jpeg()]);
    let text = request.text();
    assert!(
        text.starts_with("Is the door open?") && text.contains("yes or no"),
        "{text}"
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_as_the_server_asks() {
    // A date with whole seconds, reached about 2.5 s after the second request.
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(4));
    let server = CloudServer::start(
        vec![
            Reply::status(429).header("retry-after", "1"),
            Reply::status(503).header("retry-after", &date),
            Reply::status(500),
        ],
        Reply::answer("no"),
    )
    .await;
    let mut config = settings(vec![endpoint("router", &server.url)]);
    config.retries = 3;
    let (cloud, _) = client(&config);
    assert_eq!(ask_yes_no(&cloud).await.unwrap().answer, "no");
    assert_eq!(server.received().len(), 4);
    assert!(
        gap(&server, 0) >= Duration::from_secs(1),
        "Retry-After in seconds honoured"
    );
    assert!(
        gap(&server, 1) >= Duration::from_millis(1500),
        "Retry-After as a date honoured"
    );
}

#[tokio::test]
async fn a_retry_after_holds_every_caller_off_the_endpoint_until_it_passes() {
    for (status, secs) in [(503, 2), (429, 1)] {
        let server = CloudServer::start(
            vec![Reply::status(status).header("retry-after", &secs.to_string())],
            Reply::answer("yes"),
        )
        .await;
        let mut config = settings(vec![endpoint("router", &server.url)]);
        config.retries = 0;
        let (cloud, _) = client(&config);
        assert!(matches!(
            ask_yes_no(&cloud).await,
            Err(CloudError::Unreachable(_))
        ));
        // Other callers inside the window (other lanes, the replayer) send nothing.
        let (first, second) = tokio::join!(ask_yes_no(&cloud), ask_yes_no(&cloud));
        for error in [first.unwrap_err(), second.unwrap_err()] {
            assert!(matches!(error, CloudError::Unreachable(_)), "{error}");
            assert!(error.to_string().contains("(Retry-After)"), "{error}");
        }
        assert_eq!(server.received().len(), 1, "HTTP {status}");
        tokio::time::sleep(Duration::from_secs(secs)).await;
        assert_eq!(ask_yes_no(&cloud).await.unwrap().answer, "yes");
        assert!(
            gap(&server, 0) >= Duration::from_secs(secs),
            "HTTP {status}: {:?}",
            gap(&server, 0)
        );
    }
}

#[tokio::test]
async fn an_endpoint_shut_by_refusals_fails_escalations_instead_of_queueing_them() {
    let server = CloudServer::start(vec![], Reply::status(401)).await;
    let mut config = settings(vec![endpoint("router", &server.url)]);
    config.breaker_failures = 2;
    let (cloud, stats) = client(&config);
    for _ in 0..2 {
        let error = ask_yes_no(&cloud).await.unwrap_err();
        assert!(matches!(error, CloudError::Failed(_)), "{error}");
    }
    // The breaker is open: nothing is sent, and the escalation is a failure, not an outage.
    let error = ask_yes_no(&cloud).await.unwrap_err();
    assert_eq!(
        error,
        CloudError::Failed(vec![
            "router: left alone after refusals (last: HTTP 401)".to_owned()
        ])
    );
    assert_eq!(server.received().len(), 2);
    assert_eq!(stats.refusals()["router"][&401], 2);
    assert_eq!(stats.snapshot().escalations.refusals["router"][&401], 2);
}

#[tokio::test]
async fn the_request_id_falls_back_to_other_headers_and_the_completion_id() {
    let server = CloudServer::start(
        vec![
            Reply::completion("yes"),
            Reply::completion("yes").header("x-litellm-call-id", "call-7"),
        ],
        Reply::answer("yes"),
    )
    .await;
    let (cloud, _) = client(&settings(vec![endpoint("router", &server.url)]));
    for expected in ["chatcmpl-1", "call-7", "req-42"] {
        let answer = ask_yes_no(&cloud).await.unwrap();
        assert_eq!(answer.request_id.as_deref(), Some(expected));
    }
}

#[tokio::test]
async fn a_reply_slower_than_the_timeout_is_given_up() {
    let server =
        CloudServer::start(vec![], Reply::answer("yes").after(Duration::from_secs(30))).await;
    let mut config = settings(vec![endpoint("router", &server.url)]);
    config.request_timeout_secs = 0.3;
    config.retries = 1;
    let (cloud, _) = client(&config);
    let started = Instant::now();
    let error = ask_yes_no(&cloud).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout cut the wait"
    );
    assert!(matches!(&error, CloudError::Unreachable(_)), "{error}");
    assert!(
        error.to_string().contains("no reply within 0.3 s"),
        "{error}"
    );
    assert_eq!(server.received().len(), 2, "a timeout is retried");
}

#[tokio::test]
async fn replies_that_are_not_answers_fail_at_once_with_a_clear_reason() {
    let html = b"<!DOCTYPE html><html><body><h1>Gateway</h1></body></html>";
    let cases = [
        (
            Reply::raw(200, "application/json", b"{\"choices\": [{\"mess"),
            "not a chat completion",
        ),
        (Reply::raw(200, "text/html", html), "an HTML page"),
        (Reply::json(200, &json!({"choices": []})), "no choices"),
        (
            Reply::json(200, &json!({"choices": [{"message": {"content": ""}}]})),
            "message is empty",
        ),
        (Reply::answer("Perhaps"), "not yes or no"),
        (Reply::status(401), "HTTP 401: status 401"),
        (Reply::status(400), "HTTP 400"),
        (Reply::status(404), "HTTP 404"),
        (Reply::status(422), "HTTP 422"),
        (Reply::status(501), "HTTP 501"),
        (Reply::huge(50_000_000), "larger than 1000000 bytes"),
    ];
    for (reply, expected) in cases {
        let server = CloudServer::start(vec![], reply).await;
        let (cloud, _) = client(&settings(vec![endpoint("router", &server.url)]));
        let error = ask_yes_no(&cloud).await.unwrap_err();
        assert!(
            matches!(&error, CloudError::Failed(_)),
            "{expected}: {error}"
        );
        assert!(error.to_string().contains(expected), "{expected}: {error}");
        assert_eq!(server.received().len(), 1, "{expected}: not retried");
    }
}

#[tokio::test]
async fn an_html_error_page_is_retried_and_reported_briefly() {
    let html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
    let server = CloudServer::start(vec![], Reply::raw(502, "text/html", html)).await;
    let mut config = settings(vec![endpoint("router", &server.url)]);
    config.retries = 1;
    let (cloud, _) = client(&config);
    let error = ask_yes_no(&cloud).await.unwrap_err();
    assert_eq!(
        error,
        CloudError::Unreachable(vec!["router: HTTP 502: an HTML error page".to_owned()])
    );
    assert_eq!(server.received().len(), 2);
}

#[tokio::test]
async fn endpoints_are_tried_in_order_until_one_answers() {
    let down = CloudServer::start(vec![], Reply::status(503)).await;
    let refusing = CloudServer::start(vec![], Reply::status(403)).await;
    let working = CloudServer::start(vec![], Reply::answer("yes")).await;
    let mut config = settings(vec![
        endpoint("fastest", &down.url),
        endpoint("cheapest", &refusing.url),
        endpoint("self-hosted", &working.url),
    ]);
    config.retries = 1;
    let (cloud, _) = client(&config);
    let answer = ask_yes_no(&cloud).await.unwrap();
    assert_eq!(answer.endpoint, "self-hosted");
    assert_eq!(down.received().len(), 2);
    assert_eq!(refusing.received().len(), 1);
    assert_eq!(working.received().len(), 1);
    assert!(down.received()[1].at <= refusing.received()[0].at);
    assert!(refusing.received()[0].at <= working.received()[0].at);

    // With every endpoint down the error names each, and says the cloud may come back.
    working.set_otherwise(Reply::status(503));
    let error = ask_yes_no(&cloud).await.unwrap_err();
    let CloudError::Unreachable(reasons) = error else {
        panic!("{error}")
    };
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[1].starts_with("cheapest: HTTP 403"), "{reasons:?}");
}

#[tokio::test]
async fn a_failing_endpoint_is_left_alone_then_probed() {
    let flaky = CloudServer::start(vec![], Reply::status(503)).await;
    let backup = CloudServer::start(vec![], Reply::answer("yes")).await;
    let mut config = settings(vec![
        endpoint("flaky", &flaky.url),
        endpoint("backup", &backup.url),
    ]);
    config.retries = 0;
    config.breaker_failures = 2;
    config.breaker_cooldown_secs = 1.0;
    let (cloud, stats) = client(&config);
    let breaker = || stats.breakers.lock().unwrap()["flaky"];

    for _ in 0..2 {
        assert_eq!(ask_yes_no(&cloud).await.unwrap().endpoint, "backup");
    }
    assert_eq!(flaky.received().len(), 2);
    assert_eq!(breaker(), "open");
    // Open: escalations go straight to the backup.
    for _ in 0..3 {
        assert_eq!(ask_yes_no(&cloud).await.unwrap().endpoint, "backup");
    }
    assert_eq!(flaky.received().len(), 2);

    // After the cool-down one probe goes through; it fails, so the breaker opens again at once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ask_yes_no(&cloud).await.unwrap().endpoint, "backup");
    assert_eq!(ask_yes_no(&cloud).await.unwrap().endpoint, "backup");
    assert_eq!(flaky.received().len(), 3);
    assert_eq!(breaker(), "open");

    // The endpoint recovers: the next probe succeeds and closes the breaker.
    flaky.set_otherwise(Reply::answer("no"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ask_yes_no(&cloud).await.unwrap().endpoint, "flaky");
    assert_eq!(breaker(), "closed");
    assert_eq!(ask_yes_no(&cloud).await.unwrap().endpoint, "flaky");
}

#[tokio::test]
async fn the_token_comes_from_a_file_or_credentials_and_its_absence_is_clear() {
    let server = CloudServer::start(vec![], Reply::answer("yes")).await;
    let config = settings(vec![endpoint("router", &server.url)]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "from-file\n").unwrap();
    std::fs::write(dir.path().join("hf_token"), "from-credentials\n").unwrap();
    let token_file = dir.path().join("token");
    let envs = [
        (
            Env::from_pairs([("HF_TOKEN_FILE", token_file.to_str().unwrap())]),
            "from-file",
        ),
        (
            Env::from_pairs([("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]),
            "from-credentials",
        ),
    ];
    for (env, token) in envs {
        let cloud = Cloud::new(&config, env, Arc::new(Stats::default()));
        ask_yes_no(&cloud).await.unwrap();
        let last = server.received().pop().unwrap();
        assert_eq!(last.headers["authorization"], format!("Bearer {token}"));
    }

    // No token at all, and the empty credential a fresh install leaves: nothing is sent.
    let before = server.received().len();
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("hf_token"), "").unwrap();
    let without = [
        Env::default(),
        Env::from_pairs([("CREDENTIALS_DIRECTORY", empty.path().to_str().unwrap())]),
    ];
    for env in without {
        let cloud = Cloud::new(&config, env, Arc::new(Stats::default()));
        let error = ask_yes_no(&cloud).await.unwrap_err();
        assert!(matches!(error, CloudError::Failed(_)));
        assert!(
            error.to_string().contains("no token: set HF_TOKEN"),
            "{error}"
        );
    }
    assert_eq!(
        server.received().len(),
        before,
        "nothing sent without a token"
    );
}

/// The daemon's config: one synthetic camera, escalation to `url` with the token in a file and the
/// extra `[escalation]` keys in `settings`, then `rest` (tasks, per-task policies).
fn daemon_config(
    device: &str,
    broker: &str,
    url: &str,
    token_file: &std::path::Path,
    settings: &str,
    rest: &str,
) -> String {
    config_with(
        device,
        broker,
        &format!(
            r#"
[escalation]
enabled = true
min_interval_secs = 0.0
duplicate_distance = -1
retries = 0
breaker_failures = 1000
{settings}
[[escalation.endpoints]]
name = "router"
url = "{url}"
model = "org/big-vlm:fastest"
token_file = "{}"
{rest}
"#,
            token_file.display()
        ),
    )
}

/// Every answer the subscriber receives in `window`.
async fn answers_for(subscriber: &mut Subscriber, window: Duration) -> Vec<Value> {
    let messages = subscriber.collect_for(window).await;
    messages.iter().map(|message| message.json()).collect()
}

fn of_task<'a>(answers: &'a [Value], task: &str) -> Vec<&'a Value> {
    answers
        .iter()
        .filter(|answer| answer["task"] == task)
        .collect()
}

fn token_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("hf_token");
    std::fs::write(&path, TOKEN).unwrap();
    path
}

/// An unsure yes/no task and a surer text task, every 0.2 s, each with its own escalation threshold.
fn two_tasks() -> String {
    Toml::default()
        .task("unsure", "cam", "Is the door open?")
        .kind("yes_no")
        .interval(0.2)
        .task("sure", "cam", "What is it?")
        .interval(0.2)
        .section("escalation.tasks.unsure")
        .key("threshold", 0.9)
        .key("budget", "{ per_minute = 3 }")
        .section("escalation.tasks.sure")
        .key("threshold", 0.5)
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsure_answers_are_replaced_by_the_cloud_until_the_budget_runs_out() {
    let broker = Mosquitto::start();
    let server = CloudServer::start(vec![], Reply::answer("Yes.")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut subscriber = Subscriber::connect(broker.port, &["lookout/esc/cam/+/answer"]).await;
    let config = daemon_config(
        "esc",
        &broker.url(),
        &server.url,
        &token_file(&dir),
        "",
        &two_tasks(),
    );
    let daemon = Daemon::start(&config);

    let answers = answers_for(&mut subscriber, Duration::from_secs(4)).await;
    let of = |task: &str| of_task(&answers, task);
    let (unsure, sure) = (of("unsure"), of("sure"));
    assert!(
        unsure.len() >= 6 && sure.len() >= 6,
        "{} and {}",
        unsure.len(),
        sure.len()
    );

    // The PixelAnalyser is 0.75 sure: below 0.9, so the first three go to the cloud...
    for answer in &unsure[..3] {
        assert_eq!(answer["tier"], "cloud", "{answer}");
        assert_eq!(answer["escalated"], true);
        assert_eq!(answer["escalation"], "below_threshold");
        assert_eq!(answer["answer"], "yes");
        assert_eq!(answer["model"], "big-vlm");
        assert_eq!(answer["endpoint"], "router");
        assert_eq!(answer["provider"], "nebius");
        assert_eq!(answer["request_id"], "req-42");
        assert_eq!(answer["usage"]["completion_tokens"], 3);
        assert_eq!(answer["confidence"], Value::Null);
        assert_eq!(answer["local"]["confidence"], 0.75);
        assert_eq!(answer["local"]["model"], "test-pixel-analyser");
        let cloud = answer["timings_ms"]["cloud"].as_f64().unwrap();
        assert!(cloud > 0.0, "{answer}");
        assert!(
            answer["timings_ms"]["total"].as_f64().unwrap() >= cloud,
            "the total covers the cloud: {answer}"
        );
    }
    // ...then the budget is spent and local answers keep coming, saying so.
    for answer in &unsure[3..] {
        assert_eq!(answer["tier"], "local", "{answer}");
        assert_eq!(answer["escalated"], false);
        assert_eq!(answer["escalation"], "budget_exhausted");
    }
    // Above its threshold: never sent.
    for answer in &sure {
        assert_eq!(answer["tier"], "local");
        assert_eq!(answer["escalation"], "confident");
    }
    assert_eq!(server.received().len(), 3);
    // In order per task, escalated or not.
    let ids: Vec<&str> = unsure.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    // The token went to the cloud and nowhere else.
    assert!(
        answers
            .iter()
            .all(|answer| !answer.to_string().contains(TOKEN))
    );
    daemon.shutdown().await;
}

/// A yes/no task `id` every `secs` seconds whose every answer is escalated.
fn door_always(id: &str, secs: f64) -> String {
    Toml::default()
        .task(id, "cam", "Is the door open?")
        .kind("yes_no")
        .interval(secs)
        .section(&format!("escalation.tasks.{id}"))
        .string("mode", "always")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalations_wait_out_a_cloud_outage_and_are_answered_with_the_same_id() {
    let broker = Mosquitto::start();
    let server = CloudServer::start(vec![], Reply::status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/offline/cam/+/answer", "lookout/offline/stats"],
    )
    .await;
    let config = daemon_config(
        "offline",
        &broker.url(),
        &server.url,
        &token_file(&dir),
        "",
        &door_always("door", 0.3),
    );
    let daemon = Daemon::start(&config);

    // The cloud is down: local answers go out at once, their escalations queued.
    let mut queued = Vec::new();
    while queued.len() < 3 {
        let message = subscriber
            .expect(Duration::from_secs(15), "a queued answer", |m| {
                m.topic.ends_with("/answer")
            })
            .await;
        let answer = message.json();
        assert_eq!(answer["tier"], "local", "{answer}");
        assert_eq!(answer["escalation"], "queued", "{answer}");
        queued.push(answer["id"].as_str().unwrap().to_owned());
    }
    // Stop making answers, then let the cloud come back.
    daemon
        .reload(&daemon_config(
            "offline",
            &broker.url(),
            &server.url,
            &token_file(&dir),
            "",
            "",
        ))
        .await;
    server.set_otherwise(Reply::answer("yes"));

    let mut answered = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !queued.iter().all(|id| answered.contains(id)) {
        assert!(
            Instant::now() < deadline,
            "queued escalations not answered: {queued:?}, got {answered:?}"
        );
        for message in subscriber.collect_for(Duration::from_millis(500)).await {
            if message.topic.ends_with("/answer") {
                let answer = message.json();
                if answer["tier"] == "cloud" {
                    assert_eq!(answer["escalated"], true);
                    assert_eq!(answer["escalation"], "always");
                    assert_eq!(answer["local"]["model"], "test-pixel-analyser");
                    answered.insert(answer["id"].as_str().unwrap().to_owned());
                }
            } else {
                let stats = message.json();
                assert!(stats["escalation_queue"]["depth"].is_u64(), "{stats}");
            }
        }
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_slow_cloud_and_the_escalation_survives_a_restart() {
    let broker = Mosquitto::start();
    let server =
        CloudServer::start(vec![], Reply::answer("yes").after(Duration::from_secs(60))).await;
    let slow = "request_timeout_secs = 60.0\ndeadline_secs = 60.0";
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(
        "slow",
        &broker.url(),
        &server.url,
        &token_file(&dir),
        slow,
        &door_always("door", 0.3),
    );
    let daemon = Daemon::start_in(state.path(), &config, common::PixelAnalyser::boxed(), dir);
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.received().is_empty() {
        assert!(Instant::now() < deadline, "no escalation reached the cloud");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = daemon.shutdown().await;
    assert!(
        took < Duration::from_secs(5),
        "shutdown waited {took:?} for the cloud"
    );

    // The next start finds the escalation in the queue and the cloud answers it.
    server.set_otherwise(Reply::answer("yes"));
    let mut subscriber = Subscriber::connect(broker.port, &["lookout/slow/cam/+/answer"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(
        "slow",
        &broker.url(),
        &server.url,
        &token_file(&dir),
        "",
        "",
    );
    let daemon = Daemon::start_in(state.path(), &config, common::PixelAnalyser::boxed(), dir);
    let answer = subscriber
        .expect(
            Duration::from_secs(20),
            "the queued escalation's answer",
            |m| m.json()["tier"] == "cloud",
        )
        .await
        .json();
    assert_eq!(answer["task"], "door");
    assert_eq!(answer["escalation"], "always");
    assert_eq!(answer["answer"], "yes");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_token_the_daemon_answers_locally_and_sends_nothing() {
    let broker = Mosquitto::start();
    let mut subscriber = Subscriber::connect(broker.port, &["lookout/lazy/cam/+/answer"]).await;
    // The default endpoint is the real router; with no token nothing is sent to it (nor anywhere).
    // Duplicate suppression is off: the synthetic camera's frames can hash alike.
    let config = config_with(
        "lazy",
        &broker.url(),
        &format!(
            "{}\n[escalation]\nenabled = true\nmin_interval_secs = 0.0\nduplicate_distance = -1\n",
            door_always("door", 0.3)
        ),
    );
    let daemon = Daemon::start(&config);
    // More answers than `breaker_failures` (5): a missing token never opens the endpoint's breaker.
    for _ in 0..7 {
        let answer = subscriber
            .expect(Duration::from_secs(10), "a local answer", |m| {
                m.topic.ends_with("/answer")
            })
            .await
            .json();
        assert_eq!(answer["tier"], "local", "{answer}");
        assert_eq!(answer["escalation"], "cloud_failed", "{answer}");
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cloud_holds_back_only_its_own_task_and_skips_escalations_while_busy() {
    let broker = Mosquitto::start();
    let server =
        CloudServer::start(vec![], Reply::answer("yes").after(Duration::from_secs(2))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut subscriber = Subscriber::connect(broker.port, &["lookout/busy/cam/+/answer"]).await;
    let other = Toml::default()
        .task("count", "cam", "How many?")
        .interval(0.3)
        .section("escalation.tasks.count")
        .string("mode", "never");
    let config = daemon_config(
        "busy",
        &broker.url(),
        &server.url,
        &token_file(&dir),
        "",
        &format!("{}{other}", door_always("door", 0.3)),
    );
    let daemon = Daemon::start(&config);
    let answers = answers_for(&mut subscriber, Duration::from_secs(5)).await;
    let of = |task: &str| of_task(&answers, task);
    // The other task went on at its own pace while the door task waited on the cloud.
    assert!(
        of("count").len() >= 10,
        "{} count answers",
        of("count").len()
    );
    let door = of("door");
    let escalations = |reason: &str| door.iter().filter(|a| a["escalation"] == reason).count();
    assert!(escalations("always") >= 1, "{door:?}");
    assert!(escalations("busy") >= 2, "{door:?}");
    // Never more than one request out for the task at a time, and answers in order.
    assert!(
        server.received().len() <= 3,
        "{} requests",
        server.received().len()
    );
    let ids: Vec<&str> = door.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    daemon.shutdown().await;
}

/// Waits until the server has received `count` requests.
async fn received_at_least(server: &CloudServer, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.received().len() < count {
        assert!(
            Instant::now() < deadline,
            "{} requests",
            server.received().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the first request after the `wait` that followed request `index`, answered with a
/// `Retry-After` of that length, and asserts that none came in between. Requests that arrived within
/// `IN_FLIGHT` of it had left before any lane could read the reply.
async fn assert_kept(server: &CloudServer, index: usize, wait: Duration) {
    const IN_FLIGHT: Duration = Duration::from_millis(100);
    let asked = server.received()[index].at;
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.received().last().unwrap().at - asked < wait {
        assert!(
            Instant::now() < deadline,
            "no request after the Retry-After"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inside: Vec<Duration> = server
        .received()
        .iter()
        .map(|request| request.at.saturating_duration_since(asked))
        .filter(|after| *after > IN_FLIGHT && *after < wait)
        .collect();
    assert!(
        inside.is_empty(),
        "requests {inside:?} after a Retry-After of {wait:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_is_kept_by_the_replayer_and_every_live_lane() {
    let broker = Mosquitto::start();
    // Two tasks escalating every answer: two live lanes, and the replayer for what they queue.
    let server = CloudServer::start(
        vec![Reply::status(503).header("retry-after", "2")],
        Reply::answer("yes"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(
        "promise",
        &broker.url(),
        &server.url,
        &token_file(&dir),
        "budget = { per_minute = 1000 }",
        &format!("{}{}", door_always("door", 0.3), door_always("gate", 0.3)),
    );
    let daemon = Daemon::start(&config);
    received_at_least(&server, 1).await;
    assert_kept(&server, 0, Duration::from_secs(2)).await;

    // The same for a 429 with Retry-After: 1 in the middle of the traffic.
    let index = server.then(vec![Reply::status(429).header("retry-after", "1")]);
    received_at_least(&server, index + 1).await;
    assert_kept(&server, index, Duration::from_secs(1)).await;
    daemon.shutdown().await;
}

/// Bound on how long after the cloud returns every escalation queued in a short outage is answered,
/// with the default budget (10 a minute) and live escalations going on.
const REPLAY_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_queue_is_replayed_with_the_default_budget_and_live_traffic() {
    let broker = Mosquitto::start();
    let server = CloudServer::start(vec![], Reply::status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut subscriber = Subscriber::connect(broker.port, &["lookout/starve/cam/+/answer"]).await;
    // No budget in the config: the default. An answer every 0.5 s, every one escalated.
    let config = daemon_config(
        "starve",
        &broker.url(),
        &server.url,
        &token_file(&dir),
        "",
        &door_always("door", 0.5),
    );
    let daemon = Daemon::start(&config);
    let mut queued = Vec::new();
    while queued.len() < 4 {
        let answer = subscriber
            .expect(Duration::from_secs(15), "a queued answer", |m| {
                m.topic.ends_with("/answer")
            })
            .await
            .json();
        if answer["escalation"] == "queued" {
            queued.push(answer["id"].as_str().unwrap().to_owned());
        }
    }
    // The cloud is back; the task goes on escalating live.
    server.set_otherwise(Reply::answer("yes"));
    let back = Instant::now();
    let mut replayed = std::collections::HashSet::new();
    let mut live = 0;
    while !queued.iter().all(|id| replayed.contains(id)) {
        assert!(
            back.elapsed() < REPLAY_BOUND,
            "after {REPLAY_BOUND:?} replayed {} of {} ({live} live cloud answers)",
            replayed.len(),
            queued.len()
        );
        for message in subscriber.collect_for(Duration::from_millis(250)).await {
            let answer = message.json();
            if answer["tier"] != "cloud" {
                continue;
            }
            let id = answer["id"].as_str().unwrap().to_owned();
            if queued.contains(&id) {
                replayed.insert(id);
            } else {
                live += 1;
            }
        }
    }
    daemon.shutdown().await;
}
