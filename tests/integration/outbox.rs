//! Never lose an answer: the on-disk outbox against a real mosquitto that goes away, comes back, or
//! never acknowledges; a full outbox; a damaged one; state the daemon cannot use. The daemon runs
//! in-process here (the pixel analyser stands in for the model); `outbox_process.rs` kills a real
//! `lookout run` with SIGKILL and fills its disk.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, Message, Mosquitto, PixelAnalyser, Subscriber, Toml, config_with, free_port};
use lookout::app::AppError;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

fn two_tasks() -> String {
    Toml::default()
        .task("a", "cam", "What is it?")
        .interval(0.1)
        .task("b", "cam", "Is it bright?")
        .kind("yes_no")
        .interval(0.15)
        .to_string()
}

/// What a subscriber saw: answers by id in order of first arrival, and the stats messages.
#[derive(Default)]
struct Seen {
    answers: Vec<Value>,
    ids: HashSet<String>,
    stats: Vec<Value>,
}

impl Seen {
    fn add(&mut self, messages: Vec<Message>) {
        for message in messages {
            if message.topic.ends_with("/stats") {
                self.stats.push(message.json());
            } else if message.topic.ends_with("/answer") {
                let answer = message.json();
                if self.ids.insert(answer["id"].as_str().unwrap().to_owned()) {
                    self.answers.push(answer);
                }
            }
        }
    }

    fn last_stats(&self) -> &Value {
        self.stats.last().expect("a stats message")
    }

    /// Collects until the latest stats say the outbox is empty and every answer the daemon produced
    /// has arrived (`dropped` of them excepted), or panics after `timeout` with the figures. Only
    /// stats taken at `from_uptime_s` or later count: older ones (from before an outage, or queued
    /// during it) may agree with what arrived while answers are still on their way.
    async fn until_delivered(
        &mut self,
        subscriber: &mut Subscriber,
        from_uptime_s: u64,
        timeout: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.add(subscriber.collect_for(Duration::from_millis(600)).await);
            let current = self
                .stats
                .last()
                .filter(|stats| stats["uptime_s"].as_u64().unwrap() >= from_uptime_s);
            if let Some(stats) = current {
                let produced = stats["answers"].as_u64().unwrap();
                let dropped = stats["outbox"]["dropped"].as_u64().unwrap();
                if stats["outbox"]["depth"] == 0 && self.answers.len() as u64 + dropped == produced
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not delivered: {} answers arrived; last stats {:?}",
                self.answers.len(),
                self.stats.last()
            );
        }
    }
}

/// The daemon uptime, in whole seconds as stats give it, that only stats taken after this call
/// can show; `daemon_started` is an instant taken just before the daemon was started.
fn uptime_from_now(daemon_started: Instant) -> u64 {
    daemon_started.elapsed().as_secs() + 1
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// When an answer was made, from its UUIDv7 id.
fn id_ms(answer: &Value) -> u64 {
    let id = uuid::Uuid::parse_str(answer["id"].as_str().unwrap()).unwrap();
    let (seconds, nanos) = id.get_timestamp().expect("a UUIDv7").to_unix();
    seconds * 1000 + u64::from(nanos) / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_made_while_the_broker_is_away_all_arrive_in_order() {
    let mut broker = Mosquitto::start_persistent();
    let filters = ["lookout/away/cam/+/answer", "lookout/away/stats"];
    let mut subscriber = Subscriber::connect_persistent(broker.port, "away-sub", &filters).await;
    let daemon_started = Instant::now();
    let daemon = Daemon::start(&config_with("away", &broker.url(), &two_tasks()));
    let mut seen = Seen::default();
    seen.add(subscriber.collect_for(Duration::from_secs(2)).await);
    assert!(!seen.answers.is_empty(), "no answer before the outage");

    let outage_began = unix_ms_now();
    broker.stop_gracefully();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.launch();
    let outage_ended = unix_ms_now();
    seen.add(subscriber.collect_for(Duration::from_secs(2)).await);
    daemon.reload(&config_with("away", &broker.url(), "")).await;
    let settled = uptime_from_now(daemon_started);
    seen.until_delivered(&mut subscriber, settled, Duration::from_secs(30))
        .await;

    // The outage really held answers back: many were made while the broker was down (a UUIDv7 says
    // when it was made) and arrived afterwards.
    let made_during_outage = seen
        .answers
        .iter()
        .filter(|answer| (outage_began..outage_ended).contains(&id_ms(answer)))
        .count();
    assert!(
        made_during_outage >= 10,
        "only {made_during_outage} answers made during the outage"
    );
    assert_eq!(seen.last_stats()["outbox"]["dropped"], 0);
    // In order per task: ids are UUIDv7, so first arrivals must be sorted.
    let mut by_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for answer in &seen.answers {
        by_task
            .entry(answer["task"].as_str().unwrap().to_owned())
            .or_default()
            .push(answer["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(by_task.len(), 2);
    for (task, ids) in by_task {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "task {task} arrived out of order");
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_and_the_daemon_keeps_running() {
    let mut broker = Mosquitto::start_persistent();
    let filters = ["lookout/full/cam/+/answer", "lookout/full/stats"];
    let mut subscriber = Subscriber::connect_persistent(broker.port, "full-sub", &filters).await;
    broker.stop_gracefully();

    // Room for about twenty answers; the broker is away while about sixty are made.
    let small = format!("{}\n[outbox]\nmax_mb = 0.01\n", two_tasks());
    let daemon_started = Instant::now();
    let daemon = Daemon::start(&config_with("full", &broker.url(), &small));
    tokio::time::sleep(Duration::from_secs(4)).await;
    daemon
        .reload(&config_with(
            "full",
            &broker.url(),
            "[outbox]\nmax_mb = 0.01\n",
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = uptime_from_now(daemon_started);
    broker.launch();
    let mut seen = Seen::default();
    seen.until_delivered(&mut subscriber, settled, Duration::from_secs(30))
        .await;

    let stats = seen.last_stats();
    let dropped = stats["outbox"]["dropped"].as_u64().unwrap();
    assert!(dropped >= 10, "nothing worth mentioning dropped: {stats}");
    assert!(
        (5..=25).contains(&seen.answers.len()),
        "{} answers kept in a 10 kB outbox",
        seen.answers.len()
    );
    // The oldest went first: what was kept is the newest, so nothing kept is older than a drop. The
    // survivors' ids, sorted, are the last ones made, and the daemon still answers afterwards.
    let newest_kept = seen
        .answers
        .iter()
        .map(|answer| answer["id"].as_str().unwrap().to_owned())
        .max()
        .unwrap();
    daemon
        .reload(&config_with("full", &broker.url(), &two_tasks()))
        .await;
    let next = subscriber
        .expect(Duration::from_secs(15), "an answer after the drops", |m| {
            m.topic.ends_with("/answer")
        })
        .await;
    assert!(next.json()["id"].as_str().unwrap() > newest_kept.as_str());
    daemon.shutdown().await;
}

/// The number of answers stored in an outbox file (each answer's JSON names its question once).
fn stored_answers(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .windows(b"\"question\"".len())
        .filter(|window| *window == b"\"question\"")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_outbox_keeps_every_intact_answer() {
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let state = tempfile::tempdir().unwrap();
    let outbox = state.path().join("answers.outbox");

    // No broker: answers pile up in the outbox, then the daemon stops.
    let daemon = Daemon::start_in(
        state.path(),
        &config_with("damaged", &url, &two_tasks()),
        PixelAnalyser::boxed(),
        tempfile::tempdir().unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.shutdown().await;
    let stored = stored_answers(&outbox);
    assert!(stored >= 6, "only {stored} answers stored");

    // Flip a byte in the middle (one record) and cut the last bytes (a torn final write).
    let mut bytes = std::fs::read(&outbox).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&outbox, &bytes).unwrap();

    let broker = Mosquitto::start_with(port, "allow_anonymous true\n");
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/damaged/cam/+/answer", "lookout/damaged/stats"],
    )
    .await;
    let daemon = Daemon::start_in(
        state.path(),
        &config_with("damaged", &url, ""),
        PixelAnalyser::boxed(),
        tempfile::tempdir().unwrap(),
    );
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.answers.len() < stored - 2 && tokio::time::Instant::now() < deadline {
        seen.add(subscriber.collect_for(Duration::from_millis(500)).await);
    }
    seen.add(subscriber.collect_for(Duration::from_secs(1)).await);
    assert_eq!(
        seen.answers.len(),
        stored - 2,
        "every intact answer, and only those"
    );
    assert!(
        seen.last_stats()["outbox"]["damaged_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let copies = std::fs::read_dir(state.path())
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("answers.damaged-")
        })
        .count();
    assert_eq!(copies, 1, "the damaged file is kept aside for inspection");
    daemon.shutdown().await;
}

async fn start_error(state_dir: &Path) -> String {
    let daemon = Daemon::start_in(
        state_dir,
        &config_with(
            "bad",
            &format!("mqtt://127.0.0.1:{}", free_port()),
            &two_tasks(),
        ),
        PixelAnalyser::boxed(),
        tempfile::tempdir().unwrap(),
    );
    let result = tokio::time::timeout(Duration::from_secs(10), daemon.task)
        .await
        .expect("the daemon stops at once")
        .unwrap();
    match result {
        Err(error @ AppError::Outbox(_)) => error.to_string(),
        other => panic!("expected an outbox error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_state_is_a_clear_error_and_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();

    // A state directory that cannot be created (a file is in the way).
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let error = start_error(&blocker.join("state")).await;
    assert!(error.contains("cannot create the directory"), "{error}");
    assert!(error.contains("a-file/state"), "{error}");

    // An outbox written by a newer Lookout: refused, and not touched.
    let newer = dir.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    let mut header = b"LKOUTBOX".to_vec();
    header.extend_from_slice(&7u32.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(b"records a newer format would hold");
    std::fs::write(newer.join("answers.outbox"), &header).unwrap();
    let error = start_error(&newer).await;
    assert!(error.contains("newer Lookout (outbox format 7"), "{error}");
    assert_eq!(std::fs::read(newer.join("answers.outbox")).unwrap(), header);

    // Two daemons on one state directory would corrupt it: the second is refused.
    let shared = dir.path().join("shared");
    let first = Daemon::start_in(
        &shared,
        &config_with("first", "mqtt://127.0.0.1:9", ""),
        PixelAnalyser::boxed(),
        tempfile::tempdir().unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let error = start_error(&shared).await;
    assert!(
        error.contains("in use by another Lookout process"),
        "{error}"
    );
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_acknowledges_holds_nothing_up() {
    let broker = Mosquitto::start();
    // A QoS 1 subscriber that takes messages and never acknowledges them: the broker's window for it
    // fills after 20, and the broker must keep acknowledging the daemon regardless.
    let mut options = MqttOptions::new("never-acks", "127.0.0.1", broker.port);
    options.set_manual_acks(true);
    let (stuck, mut stuck_loop) = AsyncClient::new(options, 10);
    stuck
        .subscribe("lookout/stuck/cam/+/answer", QoS::AtLeastOnce)
        .await
        .unwrap();
    let stuck_task = tokio::spawn(async move {
        let mut received = 0;
        while let Ok(event) = stuck_loop.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = event {
                received += 1;
            }
            if received >= 1000 {
                break;
            }
        }
    });
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/stuck/cam/+/answer", "lookout/stuck/stats"],
    )
    .await;
    let daemon = Daemon::start(&config_with("stuck", &broker.url(), &two_tasks()));
    let mut seen = Seen::default();
    seen.add(subscriber.collect_for(Duration::from_secs(6)).await);
    assert!(
        seen.answers.len() >= 40,
        "only {} answers",
        seen.answers.len()
    );
    let depth = seen.last_stats()["outbox"]["depth"].as_u64().unwrap();
    assert!(depth <= 16, "answers back up in the outbox: {depth}");
    daemon.shutdown().await;
    stuck_task.abort();
}
