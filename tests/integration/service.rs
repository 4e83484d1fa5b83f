//! Life under a supervisor: systemd's notify protocol against a real datagram socket set as
//! `NOTIFY_SOCKET` (READY, STATUS, WATCHDOG timing, no pings while a stage is stuck), and the local
//! HTTP endpoint's three routes over real HTTP, against a real mosquitto.
//!
//! The stuck stage is an accelerator that hangs inside a model run (a wedged GPU or NPU driver, which
//! these machines cannot produce), behind the same `Analyser` trait as the real model.

use crate::common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, Mosquitto, PixelAnalyser, Subscriber, Toml, config_with, free_port};
use lookout::message::Clip;
use lookout::message::Frame;
use lookout::message::Request;
use lookout::vision::{AnalyseError, Analyser, LocalAnswer};
use tokio::net::UnixDatagram;

const WAIT: Duration = Duration::from_secs(20);

/// The service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
    path: String,
    _dir: tempfile::TempDir,
}

/// One notify datagram and when it arrived.
struct Notice {
    at: Instant,
    text: String,
}

impl Manager {
    fn listen() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Manager {
            socket,
            path: path.display().to_string(),
            _dir: dir,
        }
    }

    async fn next(&self, timeout: Duration) -> Option<Notice> {
        let mut buffer = vec![0u8; 4096];
        let len = tokio::time::timeout(timeout, self.socket.recv(&mut buffer))
            .await
            .ok()?
            .unwrap();
        Some(Notice {
            at: Instant::now(),
            text: String::from_utf8(buffer[..len].to_vec()).unwrap(),
        })
    }

    /// Waits for a datagram containing `wanted`, returning it.
    async fn expect(&self, wanted: &str) -> Notice {
        let deadline = Instant::now() + WAIT;
        while let Some(notice) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            if notice.text.contains(wanted) {
                return notice;
            }
        }
        panic!("no {wanted:?} from the daemon within {WAIT:?}");
    }

    /// Every datagram within `window`.
    async fn collect_for(&self, window: Duration) -> Vec<Notice> {
        let deadline = Instant::now() + window;
        let mut notices = Vec::new();
        while let Some(notice) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            notices.push(notice);
        }
        notices
    }
}

fn pings(notices: &[Notice]) -> Vec<Instant> {
    notices
        .iter()
        .filter(|notice| notice.text == "WATCHDOG=1")
        .map(|notice| notice.at)
        .collect()
}

fn task() -> String {
    Toml::default()
        .task("person", "cam", "Is anyone there?")
        .kind("yes_no")
        .interval(0.2)
        .to_string()
}

fn start(config: &str, analyser: Box<dyn Analyser>, env: &[(&str, &str)]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    Daemon::start_in_env(&state_dir, config, analyser, dir, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_and_watchdog_pings_follow_the_daemon_and_its_broker() {
    let mut broker = Mosquitto::start();
    let manager = Manager::listen();
    let config = config_with("svc1", &broker.url(), &task());
    let daemon = start(
        &config,
        PixelAnalyser::boxed(),
        &[
            ("NOTIFY_SOCKET", &manager.path),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );

    let ready = manager.expect("READY=1").await;
    assert!(
        ready
            .text
            .contains("STATUS=Running: 1 camera(s), 1 task(s)"),
        "{}",
        ready.text
    );
    if !ready.text.contains("broker connected") {
        manager
            .expect("STATUS=Running: 1 camera(s), 1 task(s); broker connected")
            .await;
    }

    // Pings come at least twice per watchdog timeout (2 s), as sd_watchdog_enabled(3) advises.
    let notices = manager.collect_for(Duration::from_secs(4)).await;
    let times = pings(&notices);
    assert!(times.len() >= 3, "{} pings in 4 s", times.len());
    let longest = times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap();
    assert!(
        longest < Duration::from_secs(2),
        "a gap of {longest:?} between pings"
    );

    // A broker outage degrades the daemon; it keeps answering into its outbox and keeps pinging.
    broker.stop();
    manager.expect("STATUS=Degraded: broker down").await;
    let notices = manager.collect_for(Duration::from_secs(3)).await;
    assert!(
        pings(&notices).len() >= 2,
        "pings stop while the broker is down"
    );
    broker.launch();
    manager
        .expect("STATUS=Running: 1 camera(s), 1 task(s); broker connected")
        .await;

    let stopping = tokio::spawn(daemon.shutdown());
    manager.expect("STOPPING=1").await;
    stopping.await.unwrap();
}

/// Answers like the test analyser until told to hang, then blocks inside `answer` until released.
struct HangingAccelerator {
    inner: PixelAnalyser,
    gate: Arc<(Mutex<Hang>, Condvar)>,
}

#[derive(Default)]
struct Hang {
    hang: bool,
    hanging: bool,
}

impl Analyser for HangingAccelerator {
    fn model(&self) -> &str {
        self.inner.model()
    }

    fn runs_on(&self) -> &str {
        "cuda:0"
    }

    fn load_time(&self) -> Duration {
        Duration::from_millis(1500)
    }

    fn answer(
        &mut self,
        frame: &Frame,
        requests: &[Request],
    ) -> Vec<Result<LocalAnswer, AnalyseError>> {
        let (lock, wake) = &*self.gate;
        let mut state = lock.lock().unwrap();
        while state.hang {
            state.hanging = true;
            state = wake.wait(state).unwrap();
        }
        state.hanging = false;
        drop(state);
        self.inner.answer(frame, requests)
    }

    fn answer_clip(
        &mut self,
        clip: &Clip,
        requests: &[Request],
    ) -> Vec<Result<LocalAnswer, AnalyseError>> {
        self.inner.answer_clip(clip, requests)
    }
}

fn set_hang(gate: &Arc<(Mutex<Hang>, Condvar)>, hang: bool) {
    gate.0.lock().unwrap().hang = hang;
    gate.1.notify_all();
}

/// Releases a hanging accelerator when dropped, so a failing test ends instead of waiting forever
/// for the model run it froze.
struct ReleaseOnDrop(Arc<(Mutex<Hang>, Condvar)>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        set_hang(&self.0, false);
    }
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap_or_else(|error| panic!("GET {path}: {error}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Polls `path` until its status is `wanted`.
async fn wait_for_status(port: u16, path: &str, wanted: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(port, path).await;
        if status == wanted {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed {status} ({body}), not {wanted}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_stage_stops_the_watchdog_and_fails_healthz_until_it_moves_again() {
    let broker = Mosquitto::start();
    let manager = Manager::listen();
    let http_port = free_port();
    let config = config_with(
        "svc2",
        &broker.url(),
        &format!("{}\n[http]\naddr = \"127.0.0.1:{http_port}\"\n", task()),
    )
    .replace(
        "shutdown_timeout_secs = 5.0",
        "shutdown_timeout_secs = 5.0\nstall_timeout_secs = 1.0",
    );
    let gate = Arc::new((Mutex::new(Hang::default()), Condvar::new()));
    let _release = ReleaseOnDrop(gate.clone());
    let analyser = Box::new(HangingAccelerator {
        inner: PixelAnalyser {
            delay: Duration::ZERO,
        },
        gate: gate.clone(),
    });
    let daemon = start(
        &config,
        analyser,
        &[
            ("NOTIFY_SOCKET", &manager.path),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    manager.expect("READY=1").await;
    manager.expect("WATCHDOG=1").await;
    assert_eq!(wait_for_status(http_port, "/healthz", 200).await, "alive\n");

    set_hang(&gate, true);
    let stuck = manager.expect("STATUS=Stuck: vision busy for").await;
    assert!(stuck.text.contains("watchdog not fed"), "{}", stuck.text);
    let body = wait_for_status(http_port, "/healthz", 503).await;
    assert!(body.starts_with("stuck: vision busy for"), "{body}");
    let (_, metrics) = get(http_port, "/metrics").await;
    assert!(
        metrics.contains("lookout_stage_stuck{stage=\"vision\"} 1"),
        "{metrics}"
    );
    // The systemd watchdog (1 s here) would now fire: no ping for well over its timeout.
    let silent = manager.collect_for(Duration::from_secs(3)).await;
    assert!(
        pings(&silent).is_empty(),
        "pinged while the vision stage was stuck"
    );

    set_hang(&gate, false);
    manager.expect("WATCHDOG=1").await;
    manager.expect("STATUS=Running").await;
    assert_eq!(wait_for_status(http_port, "/healthz", 200).await, "alive\n");
    daemon.shutdown().await;
}

/// Every sample line of a Prometheus text exposition, as (name with labels, value); checks on the way
/// that each sample's family was declared with HELP and TYPE before it.
fn samples(exposition: &str) -> Vec<(String, f64)> {
    let mut declared = std::collections::HashMap::new();
    let mut samples = Vec::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "unknown type in {line}"
            );
            declared.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| declared.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(declared.contains_key(family), "{name} has no TYPE line");
        if declared[family] == "counter" {
            assert!(
                family.ends_with("_total"),
                "counter {family} must end in _total"
            );
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.push((series.to_owned(), value));
    }
    samples
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(name, _)| name == series)
        .unwrap_or_else(|| panic!("no sample {series}"))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_readyz_and_metrics_answer_over_http() {
    let mut broker = Mosquitto::start();
    let http_port = free_port();
    let config = config_with(
        "svc3",
        &broker.url(),
        &format!("{}\n[http]\naddr = \"127.0.0.1:{http_port}\"\n", task()),
    );
    let analyser = Box::new(HangingAccelerator {
        inner: PixelAnalyser {
            delay: Duration::ZERO,
        },
        gate: Arc::default(),
    });
    let mut answers = Subscriber::connect(broker.port, &["lookout/svc3/cam/person/answer"]).await;
    let daemon = start(&config, analyser, &[]);
    for _ in 0..3 {
        answers
            .expect(WAIT, "an answer", |message| {
                message.topic.ends_with("/answer")
            })
            .await;
    }

    assert_eq!(
        get(http_port, "/healthz").await,
        (200, "alive\n".to_owned())
    );
    let ready: serde_json::Value =
        serde_json::from_str(&wait_for_status(http_port, "/readyz", 200).await).unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"ready": true, "model": "test-pixel-analyser", "broker_connected": true})
    );

    let response = reqwest::get(format!("http://127.0.0.1:{http_port}/metrics"))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let exposition = response.text().await.unwrap();
    let scraped = samples(&exposition);
    assert!(value(&scraped, "lookout_frames_captured_total") > 0.0);
    let local = value(&scraped, "lookout_answers_total{tier=\"local\"}");
    assert!(local >= 3.0, "{local} local answers");
    assert_eq!(
        value(&scraped, "lookout_answers_total{tier=\"cloud\"}"),
        0.0
    );
    // The test analyser's confidence is 0.75: every local answer falls in the 0.8 bucket, not 0.7.
    let count = value(&scraped, "lookout_answer_confidence_count{tier=\"local\"}");
    assert_eq!(count, local);
    assert_eq!(
        value(
            &scraped,
            "lookout_answer_confidence_bucket{tier=\"local\",le=\"0.7\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &scraped,
            "lookout_answer_confidence_bucket{tier=\"local\",le=\"0.8\"}"
        ),
        count
    );
    assert_eq!(
        value(
            &scraped,
            "lookout_answer_confidence_bucket{tier=\"local\",le=\"+Inf\"}"
        ),
        count
    );
    let total_count = value(
        &scraped,
        "lookout_stage_latency_seconds_count{stage=\"total\"}",
    );
    assert_eq!(total_count, local);
    assert!(
        value(
            &scraped,
            "lookout_stage_latency_seconds_sum{stage=\"total\"}"
        ) > 0.0
    );
    // Buckets are cumulative.
    let buckets: Vec<f64> = scraped
        .iter()
        .filter(|(name, _)| {
            name.starts_with("lookout_stage_latency_seconds_bucket{stage=\"total\"")
        })
        .map(|(_, value)| *value)
        .collect();
    assert!(
        buckets.windows(2).all(|pair| pair[0] <= pair[1]),
        "{buckets:?}"
    );
    assert!(exposition.contains("# TYPE lookout_escalations_total counter"));
    assert_eq!(value(&scraped, "lookout_broker_connected"), 1.0);
    assert!(value(&scraped, "lookout_outbox_depth{store=\"answers\"}") >= 0.0);
    assert!(
        value(
            &scraped,
            "lookout_outbox_oldest_age_seconds{store=\"answers\"}"
        ) >= 0.0
    );
    assert_eq!(
        value(
            &scraped,
            "lookout_model_info{model=\"test-pixel-analyser\",runs_on=\"cuda:0\"}"
        ),
        1.0
    );
    assert_eq!(value(&scraped, "lookout_model_load_seconds"), 1.5);

    // Without the broker the box is alive but not ready, and answers pile up in the outbox.
    broker.stop();
    let body = wait_for_status(http_port, "/readyz", 503).await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["broker_connected"], false);
    assert_eq!(ready["ready"], false);
    assert_eq!(get(http_port, "/healthz").await.0, 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, exposition) = get(http_port, "/metrics").await;
        let now = samples(&exposition);
        assert_eq!(value(&now, "lookout_broker_connected"), 0.0);
        if value(&now, "lookout_outbox_depth{store=\"answers\"}") >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the outbox depth did not grow");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(http_port, "/nothing").await.0, 404);
    daemon.shutdown().await;
    assert!(
        reqwest::get(format!("http://127.0.0.1:{http_port}/healthz"))
            .await
            .is_err(),
        "the endpoint outlived the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_http_port_leaves_the_daemon_answering() {
    let broker = Mosquitto::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = config_with(
        "svc4",
        &broker.url(),
        &format!("{}\n[http]\naddr = \"127.0.0.1:{port}\"\n", task()),
    );
    let mut answers = Subscriber::connect(broker.port, &["lookout/svc4/cam/person/answer"]).await;
    let daemon = start(&config, PixelAnalyser::boxed(), &[]);
    answers
        .expect(WAIT, "an answer", |message| {
            message.topic.ends_with("/answer")
        })
        .await;
    daemon.shutdown().await;
}
