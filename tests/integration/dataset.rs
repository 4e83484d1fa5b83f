//! The escalation dataset end to end, in-process against a real mosquitto and a loopback cloud:
//! escalations of opted-in cameras and tasks become rows holding exactly the images and text the cloud
//! received, and nothing else does; `lookout dataset export` copies the folder while the daemon writes
//! it, and Hugging Face `datasets` loads both; a damaged `metadata.jsonl` is mended at start-up; a
//! folder that cannot be written costs no answer. `dataset_process.rs` kills the daemon mid-write and
//! fills its disk.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cloud::{CloudServer, Reply};
use common::{Daemon, Message, Mosquitto, PixelAnalyser, Subscriber, Toml, datasets, free_port};
use lookout::dataset::{self, Row};
use serde_json::Value;

fn config(broker: &Mosquitto, cloud: &CloudServer, dataset_dir: &Path, http_port: u16) -> String {
    Toml::device("databox")
        .key("shutdown_timeout_secs", "5.0")
        .mqtt(&broker.url())
        .key("stats_interval_secs", 0.5)
        .section("http")
        .string("addr", format!("127.0.0.1:{http_port}"))
        .camera("porch", 320, 240, 10.0)
        .camera("yard", 160, 120, 10.0)
        .task("door", "porch", "Is the door open?")
        .kind("yes_no")
        .interval(0.3)
        .task("motion", "porch", "What moved?")
        .kind("text")
        .interval(0.5)
        .clip(1.0, 3)
        .task("gate", "yard", "Is the gate open: yes, no or unsure?")
        .key("kind", r#"{ one_of = ["yes", "no", "unsure"] }"#)
        .interval(0.3)
        .task("lamp", "yard", "Is the lamp on?")
        .kind("yes_no")
        .interval(0.3)
        .raw(&cloud.escalate_everything(2))
        .section("dataset")
        .key("enabled", true)
        .key("cameras", r#"["porch"]"#)
        .key("tasks", r#"["gate"]"#)
        .string("dir", dataset_dir.display())
        .to_string()
}

fn rows_of(dir: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("metadata.jsonl")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Files published answers by id and keeps the newest stats message.
fn sort_out(messages: Vec<Message>, answers: &mut HashMap<String, Value>, stats: &mut Value) {
    for message in messages {
        let body = message.json();
        if message.topic.ends_with("/stats") {
            *stats = body;
        } else {
            answers.insert(body["id"].as_str().unwrap().to_owned(), body);
        }
    }
}

fn lookout(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(args)
        .output()
        .expect("run lookout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_in_escalations_become_rows_that_datasets_loads() {
    let broker = Mosquitto::start();
    let cloud = CloudServer::start(vec![], Reply::answer("yes")).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dataset");
    let http_port = free_port();
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/databox/+/+/answer", "lookout/databox/stats"],
    )
    .await;
    let daemon = Daemon::start(&config(&broker, &cloud, &dir, http_port));

    // Until each opted-in task has rows, and a clip row holds two frames.
    let mut answers: HashMap<String, Value> = HashMap::new();
    let mut stats = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = subscriber.collect_for(Duration::from_millis(500)).await;
        sort_out(messages, &mut answers, &mut stats);
        let summary = dataset::summary(&dir).ok();
        let clip_of_two = summary.is_some()
            && rows_of(&dir)
                .iter()
                .any(|row| row.task == "motion" && row.frames_file_names.len() == 2);
        let tasks_done = summary.is_some_and(|summary| {
            ["door", "motion", "gate"]
                .iter()
                .all(|task| summary.by_task.get(*task).copied().unwrap_or(0) >= 3)
        });
        if tasks_done && clip_of_two {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows are missing; stats: {stats}"
        );
    }

    // An export while the daemon writes, through the command line.
    let exported = work.path().join("export");
    let output = lookout(&[
        "dataset",
        "export",
        "--dir",
        dir.to_str().unwrap(),
        "--to",
        exported.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let exported_rows = rows_of(&exported);
    let metrics = reqwest::get(format!("http://127.0.0.1:{http_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // No more cloud answers, so no more rows; then every row's answer is published before the daemon
    // stops (an answer still in the outbox at shutdown is published at the next start instead).
    cloud.set_otherwise(Reply::status(503));
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows_of(&dir)
        .iter()
        .any(|row| !answers.contains_key(&row.id))
    {
        assert!(Instant::now() < deadline, "a row's answer is not published");
        let messages = subscriber.collect_for(Duration::from_millis(300)).await;
        sort_out(messages, &mut answers, &mut stats);
    }
    daemon.shutdown().await;
    let messages = subscriber.collect_for(Duration::from_millis(700)).await;
    sort_out(messages, &mut answers, &mut stats);

    let rows = rows_of(&dir);
    let requests: Vec<(Vec<Vec<u8>>, String)> = cloud
        .received()
        .iter()
        .map(|request| (request.images(), request.text()))
        .collect();
    let tasks: HashSet<&str> = rows.iter().map(|row| row.task.as_str()).collect();
    assert_eq!(
        tasks,
        HashSet::from(["door", "motion", "gate"]),
        "lamp is not opted in"
    );
    for row in &rows {
        // Exactly the images and the text of one request the cloud answered.
        let images: Vec<Vec<u8>> = row
            .frames_file_names
            .iter()
            .map(|file| std::fs::read(dir.join(file)).unwrap())
            .collect();
        assert_eq!(row.file_name, row.frames_file_names[0]);
        assert!(
            requests
                .iter()
                .any(|(sent, text)| *sent == images && *text == row.prompt),
            "row {} matches no request",
            row.id
        );
        // The same answer as published, with the local one it replaced.
        let published = answers
            .get(&row.id)
            .unwrap_or_else(|| panic!("row {} was not published", row.id));
        assert_eq!(published["tier"], "cloud");
        assert_eq!(row.answer, published["answer"].as_str().unwrap());
        assert_eq!(
            row.local_answer,
            published["local"]["answer"].as_str().unwrap()
        );
        assert_eq!(
            row.local_confidence,
            published["local"]["confidence"].as_f64().unwrap()
        );
        assert_eq!(
            row.time,
            published["frame"]["captured_at"].as_str().unwrap()
        );
        assert_eq!(
            (
                row.model.as_str(),
                row.provider.as_str(),
                row.endpoint.as_str()
            ),
            ("big-vlm", "nebius", "loopback")
        );
        assert_eq!(row.reason, "always");
        let (camera, kind, frames) = match row.task.as_str() {
            "door" => ("porch", "yes_no", 1..=1),
            "motion" => ("porch", "text", 1..=2),
            "gate" => ("yard", "one_of:yes,no,unsure", 1..=1),
            other => panic!("task {other}"),
        };
        assert_eq!((row.camera.as_str(), row.kind.as_str()), (camera, kind));
        assert!(frames.contains(&row.frames_file_names.len()), "{row:?}");
    }
    // The last stats message counted what the folder held then.
    let counted = stats["dataset"]["rows"].as_u64().unwrap();
    assert!(counted > 0 && counted <= rows.len() as u64, "{stats}");
    assert_eq!(stats["dataset"]["saved"].as_u64(), Some(counted), "{stats}");
    assert!(metrics.contains("lookout_dataset_rows "), "{metrics}");
    assert!(
        metrics.contains("lookout_dataset_saved_total "),
        "{metrics}"
    );

    // The export is a consistent prefix of the folder; `datasets` loads it, images and all.
    assert!(!exported_rows.is_empty());
    assert_eq!(exported_rows, rows[..exported_rows.len()]);
    let loaded = datasets::load(&exported);
    assert_eq!(
        loaded["num_rows"].as_u64(),
        Some(exported_rows.len() as u64)
    );
    let features = &loaded["features"];
    assert!(
        features["image"].as_str().unwrap().starts_with("Image("),
        "{features}"
    );
    assert!(
        features["frames"]
            .as_str()
            .unwrap()
            .starts_with("List(Image("),
        "{features}"
    );
    for column in [
        "question",
        "answer",
        "local_answer",
        "kind",
        "prompt",
        "provider",
        "model",
        "time",
    ] {
        assert!(
            features[column].as_str().unwrap().contains("string"),
            "{column}: {features}"
        );
    }
    for (loaded_row, row) in loaded["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&exported_rows)
    {
        assert_eq!(loaded_row["id"], row.id.as_str());
        assert_eq!(loaded_row["answer"], row.answer.as_str());
        // A clip's frames are sent as its buffer keeps them: 512x512.
        let size = match row.task.as_str() {
            "door" => [320, 240],
            "motion" => [512, 512],
            _ => [160, 120],
        };
        assert_eq!(
            loaded_row["image_size"],
            serde_json::json!(size),
            "{loaded_row}"
        );
        assert_eq!(
            loaded_row["frame_sizes"].as_array().unwrap().len(),
            row.frames_file_names.len()
        );
    }
    // The daemon's own folder loads as it is, too.
    let live = datasets::load(&dir);
    assert_eq!(live["num_rows"].as_u64(), Some(rows.len() as u64));

    // The command line's summary agrees.
    let output = lookout(&["dataset", "stats", "--dir", dir.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{output:?}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["rows"].as_u64(), Some(rows.len() as u64));
    assert_eq!(summary["unreadable_lines"], 0);
}

/// A daemon on `config` that runs until the folder holds at least `rows` rows, one of task `door` among
/// them; returns them.
async fn run_until_rows(state: &Path, config: &str, dir: &Path, rows: usize) -> Vec<Row> {
    let daemon = Daemon::start_in(
        state,
        config,
        PixelAnalyser::boxed(),
        tempfile::tempdir().unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let enough =
        |summary: dataset::Summary| summary.rows >= rows && summary.by_task.contains_key("door");
    while !dataset::summary(dir).is_ok_and(enough) {
        assert!(Instant::now() < deadline, "fewer than {rows} rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.shutdown().await;
    rows_of(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_lines_are_skipped_at_start_and_reported_and_the_rest_kept() {
    let broker = Mosquitto::start();
    let cloud = CloudServer::start(vec![], Reply::answer("yes")).await;
    let work = tempfile::tempdir().unwrap();
    let (state, dir) = (work.path().join("state"), work.path().join("dataset"));
    let config = config(&broker, &cloud, &dir, free_port());
    let before = run_until_rows(&state, &config, &dir, 4).await;

    // A line of garbage in the middle and a torn last line (a power cut mid-append).
    let metadata = dir.join("metadata.jsonl");
    let text = std::fs::read_to_string(&metadata).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.insert(2, "{\"file_name\": \"images/x.jpg\", truncated".to_owned());
    let torn = lines.last().unwrap()[..40].to_owned();
    std::fs::write(&metadata, format!("{}\n{torn}", lines.join("\n"))).unwrap();
    let damaged = datasets_refuses(&dir);

    let mut subscriber = Subscriber::connect(broker.port, &["lookout/databox/stats"]).await;
    let daemon = Daemon::start_in(
        &state,
        &config,
        PixelAnalyser::boxed(),
        tempfile::tempdir().unwrap(),
    );
    let stats = subscriber
        .expect(Duration::from_secs(20), "stats after the repair", |m| {
            m.json()["dataset"]["skipped_lines"] == 2
        })
        .await
        .json();
    assert!(
        stats["dataset"]["rows"].as_u64().unwrap() >= before.len() as u64,
        "{stats}"
    );
    daemon.shutdown().await;

    let after = rows_of(&dir);
    assert_eq!(
        after[..before.len()],
        before[..],
        "every intact row is kept, in order"
    );
    let rejected = std::fs::read_to_string(dir.join(".rejected.jsonl")).unwrap();
    assert!(
        rejected.contains("truncated") && rejected.contains(&torn),
        "{rejected}"
    );
    let loaded = datasets::load(&dir);
    assert_eq!(loaded["num_rows"].as_u64(), Some(after.len() as u64));
    assert!(damaged, "the damaged folder did not load before the repair");
}

/// Whether `datasets` fails on the folder (as it must while `metadata.jsonl` holds garbage).
fn datasets_refuses(dir: &Path) -> bool {
    std::panic::catch_unwind(|| datasets::load(dir)).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_that_cannot_be_written_costs_no_answer() {
    let broker = Mosquitto::start();
    let cloud = CloudServer::start(vec![], Reply::answer("yes")).await;
    let work = tempfile::tempdir().unwrap();
    // Its parent is a file: no user, root included, can create it.
    std::fs::write(work.path().join("file"), b"").unwrap();
    let dir = work.path().join("file/dataset");
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/databox/porch/door/answer", "lookout/databox/stats"],
    )
    .await;
    let daemon = Daemon::start(&config(&broker, &cloud, &dir, free_port()));
    for _ in 0..3 {
        let answer = subscriber
            .expect(Duration::from_secs(20), "a cloud answer", |m| {
                m.topic.ends_with("/answer")
            })
            .await
            .json();
        assert_eq!(answer["tier"], "cloud", "{answer}");
    }
    let stats = subscriber
        .expect(Duration::from_secs(20), "stats naming the problem", |m| {
            m.topic.ends_with("/stats")
                && m.json()["dataset"]["dropped"]["unavailable"].as_u64() > Some(0)
        })
        .await
        .json();
    let error = stats["dataset"]["error"].as_str().unwrap();
    assert!(error.contains("file/dataset"), "{error}");
    daemon.shutdown().await;
}

#[test]
fn bad_dataset_settings_are_each_reported_with_their_path() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[[cameras]]
id = "cam"
source = { kind = "synthetic" }
[[tasks]]
id = "door"
camera = "cam"
question = "Is the door open?"
trigger = { kind = "interval", secs = 1.0 }
[dataset]
enabled = true
cameras = ["cam", "nope"]
tasks = ["ghost"]
max_mb = 0.0
max_age_days = -1.0
dir = ""
"#,
    )
    .unwrap();
    let output = lookout(&["config", "check", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    let text = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "dataset.cameras[1]: no camera has id \"nope\"",
        "dataset.tasks[0]: no task has id \"ghost\"",
        "dataset.max_mb: must be 1 to",
        "dataset.max_age_days: must be above 0",
        "dataset.dir: must not be empty",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    for (toml, expected) in [
        (
            "[dataset]\nenabled = true\n",
            "dataset.enabled: is true but no camera or task is opted in",
        ),
        (
            "[dataset]\nmax_age_days = nan\n",
            "dataset.max_age_days: must be a finite number, not NaN",
        ),
        (
            "[dataset]\nmax_mb = inf\n",
            "dataset.max_mb: must be a finite number, not inf",
        ),
    ] {
        std::fs::write(&file, toml).unwrap();
        let output = lookout(&["config", "check", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(64));
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(text.contains(expected), "{expected} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dataset_commands_refuse_bad_input_clearly() {
    let broker = Mosquitto::start();
    let cloud = CloudServer::start(vec![], Reply::answer("yes")).await;
    let work = tempfile::tempdir().unwrap();
    let (state, dir) = (work.path().join("state"), work.path().join("dataset"));
    run_until_rows(&state, &config(&broker, &cloud, &dir, free_port()), &dir, 1).await;
    let dir_arg = dir.to_str().unwrap();

    let missing = lookout(&["dataset", "stats", "--dir", "/nonexistent/dataset"]);
    assert_eq!(missing.status.code(), Some(66), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("is not a Lookout dataset"));

    let taken = work.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), b"mine").unwrap();
    let output = lookout(&[
        "dataset",
        "export",
        "--dir",
        dir_arg,
        "--to",
        taken.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(73), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("exists and is not an empty folder"));
    assert_eq!(std::fs::read(taken.join("keep.txt")).unwrap(), b"mine");

    let to = work.path().join("out");
    let to_arg = to.to_str().unwrap();
    for since in ["yesterday", "2026-13-45", "3 fortnights", ""] {
        let output = lookout(&[
            "dataset", "export", "--dir", dir_arg, "--to", to_arg, "--since", since,
        ]);
        assert_eq!(output.status.code(), Some(2), "{since}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("expected a time"),
            "{since}: {output:?}"
        );
    }
    let output = lookout(&[
        "dataset", "export", "--dir", dir_arg, "--to", to_arg, "--task", "nope",
    ]);
    // Nothing matched: 66 (nothing to read), which a script tells apart from a failure (1).
    assert_eq!(output.status.code(), Some(66), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no row matches of task \"nope\""));
    let output = lookout(&[
        "dataset",
        "export",
        "--dir",
        dir_arg,
        "--to",
        to_arg,
        "--since",
        "2999-01-01",
    ]);
    assert_eq!(output.status.code(), Some(66), "{output:?}");
    assert!(!to.exists(), "a failed export leaves nothing behind");

    // What does match is exported: the last day's rows of one task.
    let output = lookout(&[
        "dataset", "export", "--dir", dir_arg, "--to", to_arg, "--since", "1d", "--task", "door",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert!(rows_of(&to).iter().all(|row| row.task == "door"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_and_the_opt_in_lists_apply_on_reload() {
    let broker = Mosquitto::start();
    let cloud = CloudServer::start(vec![], Reply::answer("yes")).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dataset");
    let enabled = config(&broker, &cloud, &dir, free_port());
    let off = enabled.replace("[dataset]\nenabled = true", "[dataset]\nenabled = false");
    let daemon = Daemon::start(&off);
    let mut subscriber = Subscriber::connect(broker.port, &["lookout/databox/+/door/answer"]).await;
    for _ in 0..3 {
        subscriber
            .expect(Duration::from_secs(20), "a cloud answer", |_| true)
            .await;
    }
    assert!(!dir.exists(), "off: no folder, nothing kept");

    daemon.reload(&enabled).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dataset::summary(&dir).is_ok_and(|summary| summary.by_task.contains_key("door")) {
        assert!(Instant::now() < deadline, "no rows after turning it on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Only the yard's gate task now: the porch's rows stop.
    daemon
        .reload(&enabled.replace(r#"cameras = ["porch"]"#, "cameras = []"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let porch_rows = |dir: &Path| {
        rows_of(dir)
            .iter()
            .filter(|row| row.camera == "porch")
            .count()
    };
    let before = porch_rows(&dir);
    let gate_rows = rows_of(&dir)
        .iter()
        .filter(|row| row.task == "gate")
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(porch_rows(&dir), before, "the porch is no longer opted in");
    assert!(
        rows_of(&dir)
            .iter()
            .filter(|row| row.task == "gate")
            .count()
            > gate_rows
    );

    daemon.reload(&off).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = rows_of(&dir).len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows_of(&dir).len(), rows, "off again: nothing more is kept");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalations_answered_after_an_outage_are_kept_too() {
    let broker = Mosquitto::start();
    let cloud = CloudServer::start(vec![], Reply::status(503)).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dataset");
    let config = config(&broker, &cloud, &dir, free_port()).replace(
        "duplicate_distance = -1",
        "duplicate_distance = -1\nretries = 0\nbreaker_cooldown_secs = 1.0",
    );
    let mut subscriber =
        Subscriber::connect(broker.port, &["lookout/databox/porch/door/answer"]).await;
    let daemon = Daemon::start(&config);

    // The cloud is down: the door's escalations wait in the offline queue.
    let mut queued = HashSet::new();
    while queued.len() < 3 {
        let answer = subscriber
            .expect(Duration::from_secs(20), "a queued answer", |_| true)
            .await
            .json();
        assert_eq!(answer["escalation"], "queued", "{answer}");
        queued.insert(answer["id"].as_str().unwrap().to_owned());
    }
    assert!(dataset::summary(&dir).is_ok_and(|summary| summary.rows == 0));

    // Back: the replayed escalations become rows under their answers' ids.
    cloud.set_otherwise(Reply::answer("yes"));
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let kept: HashSet<String> = rows_of(&dir).into_iter().map(|row| row.id).collect();
        if queued.is_subset(&kept) {
            break;
        }
        assert!(Instant::now() < deadline, "replayed escalations not kept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.shutdown().await;
}
