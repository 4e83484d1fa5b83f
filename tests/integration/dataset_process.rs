//! The escalation dataset in a real `lookout run` process with the fixture model and a loopback cloud:
//! killed with SIGKILL again and again while it saves rows, and saving onto a disk that fills up. After
//! each, the folder is checked as Hugging Face `datasets` would see it, with no repair first: every line
//! a whole row, every image a row names present, and `load_dataset("imagefolder")` loading it.

use crate::common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cloud::{CloudServer, Reply};
use common::process::Run;
use common::{Mosquitto, Subscriber, Toml, datasets};
use lookout::dataset::Row;
use rand::Rng;

fn config(device: &str, broker: &Mosquitto, cloud: &CloudServer, dataset_dir: &Path) -> String {
    Toml::device(device)
        .mqtt(&broker.url())
        .key("stats_interval_secs", 0.5)
        .key("keep_alive_secs", 5)
        .smolvlm()
        .camera("cam", 320, 240, 20.0)
        .task("bright", "cam", "Is it bright?")
        .kind("yes_no")
        .interval(0.05)
        .task("recent", "cam", "Did it get brighter?")
        .kind("yes_no")
        .interval(0.2)
        .clip(1.0, 4)
        .raw(&cloud.escalate_everything(4))
        .section("dataset")
        .key("enabled", true)
        .key("cameras", r#"["cam"]"#)
        .string("dir", dataset_dir.display())
        .to_string()
}

/// What a folder holds as `datasets` would read it: its rows (every line must be one), and the files
/// in `images/` that no row names.
fn inspect(dir: &Path) -> (Vec<Row>, Vec<String>) {
    let text = std::fs::read_to_string(dir.join("metadata.jsonl")).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "a torn last line");
    let rows: Vec<Row> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let named: HashSet<&str> = rows
        .iter()
        .flat_map(|row| row.frames_file_names.iter().map(String::as_str))
        .collect();
    for file in &named {
        assert!(dir.join(file).is_file(), "{file} is named but missing");
    }
    let stray = std::fs::read_dir(dir.join("images"))
        .into_iter()
        .flatten()
        .map(|entry| format!("images/{}", entry.unwrap().file_name().to_string_lossy()))
        .filter(|file| !named.contains(file.as_str()))
        .collect();
    (rows, stray)
}

/// Freezes `run` (SIGSTOP) at random moments until it is caught between saving a row's images and
/// its line, then kills it there with SIGKILL. Returns how many moments it took.
fn kill_mid_row(mut run: Run, dir: &Path) -> usize {
    let mut rng = rand::rng();
    let deadline = Instant::now() + Duration::from_secs(60);
    for tries in 1.. {
        run.freeze();
        if !inspect(dir).1.is_empty() {
            run.kill_9();
            return tries;
        }
        run.signal("CONT");
        assert!(
            Instant::now() < deadline,
            "never caught mid-row in {tries} tries"
        );
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_row_the_folder_still_loads_and_the_next_start_tidies_it() {
    let broker = Mosquitto::start();
    let cloud = CloudServer::start(vec![], Reply::answer("yes")).await;
    let work = tempfile::tempdir().unwrap();
    let (state, dir) = (work.path().join("state"), work.path().join("dataset"));
    let config = config("k9data", &broker, &cloud, &dir);
    let mut saved = 0;
    for round in 0..5 {
        let run = Run::start(work.path(), &format!("run{round}"), &config, &state, &[]);
        run.wait_for("three more rows", |_| inspect(&dir).0.len() >= saved + 3);
        let tries = kill_mid_row(run, &dir);

        // Images of the row being saved are there without its line; datasets loads the folder as
        // it is, every row whole.
        let (rows, stray) = inspect(&dir);
        eprintln!(
            "kill {round}: caught after {tries} freezes, {} rows, left {stray:?}",
            rows.len()
        );
        assert!(!stray.is_empty());
        assert!(rows.len() >= saved, "rows were lost");
        saved = rows.len();
        let loaded = datasets::load(&dir);
        assert_eq!(loaded["num_rows"].as_u64(), Some(rows.len() as u64));
    }

    // The next start removes what the kill left half-saved and keeps every row.
    let mut run = Run::start(work.path(), "tidy", &config, &state, &[]);
    run.wait_for("the folder opened", |run| {
        run.log_text().contains("Dataset folder open.")
    });
    run.freeze();
    let (rows, stray) = inspect(&dir);
    assert!(rows.len() >= saved);
    // Only files of the row being saved now, if any: the kill's leftovers are gone.
    let stray_rows: HashSet<&str> = stray
        .iter()
        .map(|file| &file["images/".len()..][..36])
        .collect();
    assert!(stray_rows.len() <= 1, "{stray:?}");
    assert!(
        run.log_text()
            .contains("Removed images no row names (left by a crash while saving)."),
        "{}",
        run.log_text()
    );
    run.kill_9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_costs_rows_not_answers_and_leaves_no_half_row() {
    let broker = Mosquitto::start();
    let cloud = CloudServer::start(vec![], Reply::answer("yes")).await;
    let mut subscriber = Subscriber::connect(
        broker.port,
        &["lookout/fulldata/cam/+/answer", "lookout/fulldata/stats"],
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let (state, dir) = (work.path().join("state"), work.path().join("dataset"));
    std::fs::create_dir(&dir).unwrap();

    // The dataset folder is a 160 kB filesystem of the daemon's own (a private mount namespace, so
    // no privileges are needed and nothing is left mounted); its limit is far above that.
    let config = format!(
        "{}max_mb = 100.0\n",
        config("fulldata", &broker, &cloud, &dir)
    );
    let mount = r#"mount -t tmpfs -o size=160k lookout-test "$0" && exec "$@""#;
    let dir_arg = dir.to_str().unwrap().to_owned();
    let wrapper = [
        "unshare",
        "--mount",
        "--map-root-user",
        "sh",
        "-c",
        mount,
        dir_arg.as_str(),
    ];
    let run = Run::start(work.path(), "full", &config, &state, &wrapper);
    run.wait_for("a refused row", |run| {
        run.log_text()
            .contains("Cannot save an escalation to the dataset")
    });

    // Cloud answers keep coming.
    let later: Vec<_> = subscriber
        .collect_for(Duration::from_secs(2))
        .await
        .into_iter()
        .filter(|message| message.topic.ends_with("/answer"))
        .map(|message| message.json())
        .collect();
    assert!(later.len() >= 5, "only {} answers", later.len());
    assert!(later.iter().all(|answer| answer["tier"] == "cloud"));
    // A smaller row can still fit between refusals, and a saved row clears the error: the stats name
    // it while the last save failed.
    let stats = subscriber
        .expect(
            Duration::from_secs(10),
            "stats naming the dataset's error",
            |m| m.topic.ends_with("/stats") && m.json()["dataset"]["error"].is_string(),
        )
        .await
        .json();
    assert!(
        stats["dataset"]["dropped"]["write_failed"].as_u64() > Some(0),
        "{stats}"
    );
    let error = stats["dataset"]["error"].as_str().unwrap();
    assert!(error.contains("No space left on device"), "{error}");

    // The folder as the daemon sees it, inside its mount namespace: whole rows only, nothing stray.
    let seen = Path::new("/proc")
        .join(run.child.id().to_string())
        .join("root")
        .join(dir.strip_prefix("/").unwrap());
    let (rows, stray) = inspect(&seen);
    assert!(!rows.is_empty());
    // At most the row being saved right now; every refused row took its files back.
    let stray_rows: HashSet<&str> = stray
        .iter()
        .map(|file| &file["images/".len()..][..36])
        .collect();
    assert!(stray_rows.len() <= 1, "refused rows left files: {stray:?}");
    // Python resolves /proc/<pid>/root to this namespace's root, so it loads a copy (the metadata
    // first: every image it names is already there).
    let copy = work.path().join("copy");
    std::fs::create_dir_all(copy.join("images")).unwrap();
    std::fs::copy(seen.join("metadata.jsonl"), copy.join("metadata.jsonl")).unwrap();
    for entry in std::fs::read_dir(seen.join("images")).unwrap() {
        let entry = entry.unwrap();
        let _ = std::fs::copy(entry.path(), copy.join("images").join(entry.file_name()));
    }
    let copied = inspect(&copy).0.len();
    assert!(copied >= rows.len());
    let loaded = datasets::load(&copy);
    assert_eq!(loaded["num_rows"].as_u64(), Some(copied as u64));
    let mut run = run;
    assert!(run.child.try_wait().unwrap().is_none(), "the daemon died");
}
