//! The escalation dataset: every escalation the cloud answered, kept on the box as training data for
//! the local model.
//!
//! Each escalation pairs a frame the local model was unsure of with a better answer from a larger
//! model: exactly what fine-tuning SmolVLM2 on a site's own scenes needs. When a camera or a task is
//! opted in (`[dataset]`, off by default), the escalation stage hands each cloud answer with the
//! images as they were sent (`Capture`) to this stage, which saves it as one row of a Hugging Face
//! `imagefolder` (`store.rs`): `datasets.load_dataset("imagefolder", data_dir=...)` loads the folder
//! as it is, at any moment, even after a crash. `lookout dataset export` takes a consistent snapshot
//! of it while the daemon runs (`export.rs`).
//!
//! Saving never holds answers up: captures wait in a small bounded channel; when it is full (the disk
//! is slower than the cloud), the newest capture is dropped and counted (`busy`). A write that fails
//! (disk full, folder not writable) loses that row only, counted and logged once per burst; the
//! answer itself was already on its way to the broker. A folder that cannot be opened is tried again
//! at the next capture, at most once a minute.

mod export;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::message::{Capture, Wanted};
use crate::outbox::Limits;
use crate::stats::Stats;
use crate::validate::Problems;

pub use export::{ExportReport, Filter, Summary, export, summary};
pub use store::{Added, IMAGES, METADATA, Recovery, Row, Skipped, Store};

/// Captures waiting to be saved; when full, the newest is dropped (`busy`).
pub(crate) const CAPTURE_CAPACITY: usize = 16;
/// How often rows past the age limit are pruned, besides after each new row.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How long after a failed open the folder is tried again.
const REOPEN_AFTER: Duration = Duration::from_secs(60);
/// Lines named one by one in the start-up report; the rest are counted.
const SKIPPED_LOGGED: usize = 10;

/// The `[dataset]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetConfig {
    /// Nothing is kept unless this is on and a camera or task is listed.
    pub enabled: bool,
    /// Cameras whose escalations are kept (every task of theirs).
    pub cameras: Vec<String>,
    /// Tasks whose escalations are kept, whatever their camera (`ask` for on-demand asks).
    pub tasks: Vec<String>,
    /// The folder; default `<state_dir>/dataset`.
    pub dir: Option<PathBuf>,
    pub max_mb: f64,
    /// Rows older than this (by the time their frame was captured) are deleted.
    pub max_age_days: f64,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig {
            enabled: false,
            cameras: Vec::new(),
            tasks: Vec::new(),
            dir: None,
            max_mb: 2000.0,
            max_age_days: 30.0,
        }
    }
}

impl DatasetConfig {
    /// Checks the values (the camera and task ids it lists are checked with the rest of the config).
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if !(self.max_mb.is_finite() && (1.0..=10_000_000.0).contains(&self.max_mb)) {
            problems.push(
                format!("{path}.max_mb"),
                format!("must be 1 to 10000000, not {}", self.max_mb),
            );
        }
        if !(self.max_age_days.is_finite()
            && self.max_age_days > 0.0
            && self.max_age_days <= 3650.0)
        {
            problems.push(
                format!("{path}.max_age_days"),
                format!(
                    "must be above 0 and at most 3650 (ten years), not {}",
                    self.max_age_days
                ),
            );
        }
        if self.enabled && self.cameras.is_empty() && self.tasks.is_empty() {
            problems.push(
                format!("{path}.enabled"),
                "is true but no camera or task is opted in: list them in cameras or tasks",
            );
        }
        if self
            .dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            problems.push(format!("{path}.dir"), "must not be empty");
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_bytes: (self.max_mb * 1e6) as u64,
            max_age: Duration::from_secs_f64(self.max_age_days * 86_400.0),
        }
    }

    /// Whether the escalations of `task` on `camera` are kept.
    pub fn keeps(&self, camera: &str, task: &str) -> bool {
        self.enabled
            && (self.cameras.iter().any(|listed| listed == camera)
                || self.tasks.iter().any(|listed| listed == task))
    }
}

/// The section with its folder resolved: what the stage runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config: DatasetConfig,
    pub dir: PathBuf,
}

/// Why the dataset folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir} is written by another Lookout process")]
    InUse { dir: PathBuf },
    #[error(
        "{dir} is not a Lookout dataset folder (is [dataset] enabled, and has the daemon opened it yet?)"
    )]
    NotADataset { dir: PathBuf },
    #[error("{path} exists and is not an empty folder")]
    DestinationTaken { path: PathBuf },
    #[error("no row matches{}", .filter)]
    NothingToExport { filter: String },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError {
    let path = path.to_owned();
    move |source| DatasetError::Io {
        action,
        path,
        source,
    }
}

/// The line of `capture`, naming `files` (one per image, in order).
fn row(capture: &Capture, files: &[String]) -> Row {
    let answer = &capture.answer;
    let local = answer.local.as_ref();
    Row {
        file_name: files[0].clone(),
        frames_file_names: files.to_vec(),
        id: answer.id.to_string(),
        time: answer.frame.captured_at.clone(),
        camera: answer.camera.to_string(),
        task: answer.task.clone(),
        question: answer.question.clone(),
        kind: answer.kind.to_string(),
        prompt: capture.prompt.clone(),
        local_answer: local.map(|local| local.answer.clone()).unwrap_or_default(),
        local_confidence: local.and_then(|local| local.confidence).unwrap_or(0.0),
        local_model: local.map(|local| local.model.clone()).unwrap_or_default(),
        answer: answer.answer.clone(),
        model: answer.model.clone(),
        provider: answer.provider.clone().unwrap_or_default(),
        endpoint: answer.endpoint.clone().unwrap_or_default(),
        reason: answer.escalation.clone().unwrap_or_default(),
    }
}

/// Whether the escalations of a task on a camera are kept under the settings `settings` holds now:
/// what the escalation stage asks before it offers an answer.
pub fn wanted(settings: watch::Receiver<Settings>) -> Wanted {
    Arc::new(move |camera, task| settings.borrow().config.keeps(camera, task))
}

/// The folder as the stage holds it.
enum Folder {
    Closed,
    Open(Box<Store>),
    /// Opening failed; tried again after `REOPEN_AFTER`.
    Failed {
        at: tokio::time::Instant,
    },
}

/// Saves captures until `cancel`, then saves those already waiting and returns. Follows `settings`:
/// opens the folder when the dataset is turned on or moves, closes it when it is turned off.
pub async fn run(
    mut settings: watch::Receiver<Settings>,
    mut captures: mpsc::Receiver<Capture>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) {
    let mut folder = Folder::Closed;
    let mut current = settings.borrow_and_update().clone();
    if current.config.enabled {
        folder = open(&current, &stats).await;
    }
    let mut failing = false;
    let mut prune_due = tokio::time::interval(PRUNE_EVERY);
    prune_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(capture) = captures.recv() => {
                let span = info_span!("dataset", camera = %capture.answer.camera, task = %capture.answer.task);
                folder = save(folder, &current, capture, &stats, &mut failing).instrument(span).await;
            }
            Ok(()) = settings.changed() => {
                let new = settings.borrow_and_update().clone();
                folder = reconfigure(folder, &current, &new, &stats).await;
                current = new;
            }
            _ = prune_due.tick() => {
                folder = prune(folder, &stats, |store| store.prune(SystemTime::now())).await;
            }
            _ = cancel.cancelled() => break,
        }
    }
    while let Ok(capture) = captures.try_recv() {
        let span =
            info_span!("dataset", camera = %capture.answer.camera, task = %capture.answer.task);
        folder = save(folder, &current, capture, &stats, &mut failing)
            .instrument(span)
            .await;
    }
}

/// Opens the folder off the async threads, reporting what it found.
async fn open(settings: &Settings, stats: &Arc<Stats>) -> Folder {
    let (dir, limits) = (settings.dir.clone(), settings.config.limits());
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir, limits))
        .await
        .expect("opening the dataset does not panic");
    match opened {
        Ok((store, recovery)) => {
            report_recovery(&store, &recovery, stats);
            stats.dataset.set_error(None);
            stats.dataset.set_size(store.rows(), store.bytes());
            Folder::Open(Box::new(store))
        }
        Err(error) => {
            warn!(dir = %settings.dir.display(), error = %error, "Cannot open the dataset folder; escalations are not saved until it can be.");
            stats.dataset.set_error(Some(error.to_string()));
            Folder::Failed {
                at: tokio::time::Instant::now(),
            }
        }
    }
}

fn report_recovery(store: &Store, recovery: &Recovery, stats: &Stats) {
    let dir = store.dir().display();
    info!(dir = %dir, rows = recovery.rows, bytes = store.bytes(), "Dataset folder open.");
    if recovery.removed_files > 0 {
        info!(dir = %dir, files = recovery.removed_files, "Removed images no row names (left by a crash while saving).");
    }
    if !recovery.skipped.is_empty() {
        stats
            .dataset
            .skipped_lines
            .add(recovery.skipped.len() as u64);
        for skipped in recovery.skipped.iter().take(SKIPPED_LOGGED) {
            warn!(dir = %dir, line = skipped.line, reason = %skipped.reason, "Skipped a damaged line of metadata.jsonl; it is kept in .rejected.jsonl.");
        }
        warn!(dir = %dir, skipped = recovery.skipped.len(), kept = recovery.rows, "metadata.jsonl had damaged lines: they were left out, every intact row kept.");
    }
}

/// Applies new settings: opens, closes or moves the folder, and applies new limits.
async fn reconfigure(folder: Folder, old: &Settings, new: &Settings, stats: &Arc<Stats>) -> Folder {
    if !new.config.enabled {
        if !matches!(folder, Folder::Closed) {
            info!("Saving escalations is off; the dataset folder is left as it is.");
            stats.dataset.set_error(None);
        }
        return Folder::Closed;
    }
    match folder {
        Folder::Open(store) if new.dir == old.dir => {
            let limits = new.config.limits();
            prune(Folder::Open(store), stats, move |store| {
                store.set_limits(limits)
            })
            .await
        }
        Folder::Open(store) => {
            // The old folder's locks go before the new one is opened.
            drop(store);
            open(new, stats).await
        }
        Folder::Closed | Folder::Failed { .. } => open(new, stats).await,
    }
}

/// Saves one capture, opening the folder first when it is due. A failure is logged once per burst.
async fn save(
    folder: Folder,
    settings: &Settings,
    capture: Capture,
    stats: &Arc<Stats>,
    failing: &mut bool,
) -> Folder {
    let folder = match folder {
        Folder::Failed { at } if at.elapsed() >= REOPEN_AFTER && settings.config.enabled => {
            open(settings, stats).await
        }
        folder => folder,
    };
    let Folder::Open(store) = folder else {
        stats.dataset.count_dropped("unavailable");
        return folder;
    };
    let (store, saved) = off_thread(store, move |store| store.add(&capture)).await;
    match saved {
        Ok((Added::Saved, pruned)) => {
            stats.dataset.saved.inc();
            stats.dataset.pruned.add(pruned as u64);
            if std::mem::take(failing) {
                info!(dir = %store.dir().display(), "Saving escalations to the dataset works again.");
                stats.dataset.set_error(None);
            }
        }
        Ok((Added::Duplicate, _)) => stats.dataset.count_dropped("duplicate"),
        Err(error) => {
            stats.dataset.count_dropped("write_failed");
            if !std::mem::replace(failing, true) {
                warn!(error = %error, "Cannot save an escalation to the dataset; the answer itself is published. Further failures are counted, not logged.");
            }
            stats.dataset.set_error(Some(error.to_string()));
        }
    }
    stats.dataset.set_size(store.rows(), store.bytes());
    Folder::Open(store)
}

/// Runs `work` (a prune, or new limits) on the open store and counts the rows it pruned (nothing
/// when the folder is not open).
async fn prune(
    folder: Folder,
    stats: &Arc<Stats>,
    work: impl FnOnce(&mut Store) -> Result<usize, DatasetError> + Send + 'static,
) -> Folder {
    let Folder::Open(store) = folder else {
        return folder;
    };
    let (store, pruned) = off_thread(store, work).await;
    match pruned {
        Ok(pruned) => stats.dataset.pruned.add(pruned as u64),
        Err(error) => warn!(error = %error, "Cannot prune the dataset folder."),
    }
    stats.dataset.set_size(store.rows(), store.bytes());
    Folder::Open(store)
}

/// Runs `work` on the store off the async threads (the store's I/O syncs) and hands the store back.
async fn off_thread<T: Send + 'static>(
    mut store: Box<Store>,
    work: impl FnOnce(&mut Store) -> T + Send + 'static,
) -> (Box<Store>, T) {
    tokio::task::spawn_blocking(move || {
        let result = work(&mut store);
        (store, result)
    })
    .await
    .expect("the dataset's file work does not panic")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    /// A cloud answer to `task`'s question about a frame captured at `time`, with `images` as sent.
    pub(super) fn capture(id: u128, task: &str, time: SystemTime, images: usize) -> Capture {
        let answer = serde_json::json!({
            "id": uuid::Uuid::from_u128(id),
            "camera": "porch",
            "task": task,
            "question": "Is the door open?",
            "kind": "yes_no",
            "answer": "yes",
            "confidence": null,
            "tier": "cloud",
            "model": "org/big-vlm",
            "escalated": true,
            "escalation": "below_threshold",
            "endpoint": "router",
            "local": {"answer": "no", "confidence": 0.31, "model": "smolvlm"},
            "frame": {
                "seq": 1,
                "captured_at": humantime::format_rfc3339_millis(time).to_string(),
                "width": 64,
                "height": 48,
            },
            "timings_ms": {"capture": 0.0, "preprocess": 1.0, "vision": 1.0, "prefill": 1.0, "decode": 1.0, "total": 4.0},
            "tokens": [],
        });
        Capture {
            answer: serde_json::from_value(answer).unwrap(),
            images: (0..images)
                .map(|index| vec![id as u8, index as u8, 0xd9])
                .collect(),
            prompt: "Is the door open?\nAnswer with one word: yes or no.".to_owned(),
        }
    }

    pub(super) fn limits(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            max_age: Duration::from_secs(86_400),
        }
    }

    fn metadata_rows(dir: &Path) -> Vec<Row> {
        let bytes = std::fs::read(dir.join(METADATA)).unwrap();
        store::lines(&bytes)
            .filter(|line| !line.is_empty())
            .map(|line| store::parse_line(line).unwrap().0)
            .collect()
    }

    #[test]
    fn a_row_names_its_images_and_says_what_was_asked_and_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), limits(1_000_000)).unwrap();
        let now = SystemTime::now();
        assert_eq!(
            store.add(&capture(1, "door", now, 1)).unwrap(),
            (Added::Saved, 0)
        );
        assert_eq!(
            store.add(&capture(2, "door", now, 3)).unwrap(),
            (Added::Saved, 0)
        );
        let rows = metadata_rows(dir.path());
        let single = uuid::Uuid::from_u128(1);
        let clip = uuid::Uuid::from_u128(2);
        assert_eq!(rows[0].file_name, format!("images/{single}.jpg"));
        assert_eq!(rows[0].frames_file_names, [rows[0].file_name.clone()]);
        assert_eq!(rows[1].file_name, format!("images/{clip}-0.jpg"));
        assert_eq!(
            rows[1].frames_file_names,
            (0..3)
                .map(|k| format!("images/{clip}-{k}.jpg"))
                .collect::<Vec<_>>()
        );
        for (row, capture) in rows
            .iter()
            .zip([capture(1, "door", now, 1), capture(2, "door", now, 3)])
        {
            for (file, jpeg) in row.frames_file_names.iter().zip(&capture.images) {
                assert_eq!(&std::fs::read(dir.path().join(file)).unwrap(), jpeg);
            }
        }
        let row = &rows[0];
        assert_eq!(
            (
                row.kind.as_str(),
                row.local_answer.as_str(),
                row.local_confidence,
                row.answer.as_str()
            ),
            ("yes_no", "no", 0.31, "yes")
        );
        assert_eq!(
            (
                row.model.as_str(),
                row.provider.as_str(),
                row.endpoint.as_str(),
                row.reason.as_str()
            ),
            ("org/big-vlm", "", "router", "below_threshold")
        );
        assert_eq!(
            row.prompt,
            "Is the door open?\nAnswer with one word: yes or no."
        );
        assert_eq!(store.rows(), 2);
        // 3 + 9 image bytes and the two lines.
        let metadata_len = std::fs::metadata(dir.path().join(METADATA)).unwrap().len();
        assert_eq!(store.bytes(), 12 + metadata_len);
    }

    #[test]
    fn the_same_answer_is_saved_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), limits(1_000_000)).unwrap();
        let now = SystemTime::now();
        store.add(&capture(1, "door", now, 1)).unwrap();
        assert_eq!(
            store.add(&capture(1, "door", now, 1)).unwrap().0,
            Added::Duplicate
        );
        drop(store);
        let (mut store, _) = Store::open(dir.path(), limits(1_000_000)).unwrap();
        assert_eq!(
            store.add(&capture(1, "door", now, 1)).unwrap().0,
            Added::Duplicate
        );
        assert_eq!(metadata_rows(dir.path()).len(), 1);
    }

    #[test]
    fn over_its_size_the_folder_loses_its_oldest_rows_and_their_images() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), limits(1_000_000)).unwrap();
        let now = SystemTime::now();
        for id in 1..=10 {
            store.add(&capture(id, "door", now, 1)).unwrap();
        }
        let row_bytes = store.bytes() / 10;
        // Room for about five rows: pruning goes down to 90% of it, so four stay.
        let pruned = store.set_limits(limits(row_bytes * 5 + 1)).unwrap();
        assert_eq!(pruned, 6);
        let ids: Vec<String> = metadata_rows(dir.path())
            .into_iter()
            .map(|row| row.id)
            .collect();
        let newest: Vec<String> = (7..=10)
            .map(|id| uuid::Uuid::from_u128(id).to_string())
            .collect();
        assert_eq!(ids, newest);
        let images = std::fs::read_dir(dir.path().join(IMAGES)).unwrap().count();
        assert_eq!(images, 4);
        // The store keeps appending after the rewrite.
        store.add(&capture(11, "door", now, 1)).unwrap();
        assert_eq!(metadata_rows(dir.path()).len(), store.rows());
    }

    #[test]
    fn rows_older_than_the_age_limit_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), limits(1_000_000)).unwrap();
        let now = SystemTime::now();
        store
            .add(&capture(
                1,
                "door",
                now - Duration::from_secs(3 * 86_400),
                1,
            ))
            .unwrap();
        store.add(&capture(2, "door", now, 1)).unwrap();
        assert_eq!(store.rows(), 1, "the old row goes as the new one is saved");
        assert_eq!(
            store.prune(now + Duration::from_secs(2 * 86_400)).unwrap(),
            1
        );
        assert_eq!(store.rows(), 0);
        assert!(metadata_rows(dir.path()).is_empty());
    }

    #[test]
    fn at_start_damaged_lines_and_stray_files_are_set_aside_and_every_intact_row_kept() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (mut store, _) = Store::open(dir.path(), limits(1_000_000)).unwrap();
        for id in 1..=4 {
            store.add(&capture(id, "door", now, 1)).unwrap();
        }
        drop(store);
        let metadata = dir.path().join(METADATA);
        let text = std::fs::read_to_string(&metadata).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Garbage in the middle, a row whose image is gone, a torn last line; an image no row names
        // and a half-written one.
        let damaged = format!(
            "{}\n{{\"not\": \"a row\"}}\n{}\n{}\n{}\n{}",
            lines[0],
            lines[1],
            lines[2],
            lines[3],
            &lines[3][..20]
        );
        std::fs::write(&metadata, damaged).unwrap();
        let gone = metadata_rows_of(lines[2]).file_name;
        std::fs::remove_file(dir.path().join(&gone)).unwrap();
        std::fs::write(dir.path().join("images/stray.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("images/half.jpg.tmp"), b"x").unwrap();

        let (store, recovery) = Store::open(dir.path(), limits(1_000_000)).unwrap();
        assert_eq!(recovery.rows, 3);
        assert_eq!(store.rows(), 3);
        let lines_skipped: Vec<usize> = recovery
            .skipped
            .iter()
            .map(|skipped| skipped.line)
            .collect();
        assert_eq!(lines_skipped, [2, 4, 6], "{:?}", recovery.skipped);
        assert!(
            recovery.skipped[1].reason.contains("image"),
            "{:?}",
            recovery.skipped
        );
        assert_eq!(recovery.removed_files, 2);
        assert_eq!(metadata_rows(dir.path()).len(), 3);
        let rejected = std::fs::read_to_string(dir.path().join(".rejected.jsonl")).unwrap();
        assert!(rejected.contains("\"not\": \"a row\""), "{rejected}");
        assert!(!dir.path().join("images/stray.jpg").exists());
    }

    fn metadata_rows_of(line: &str) -> Row {
        store::parse_line(line.as_bytes()).unwrap().0
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), limits(1_000_000)).unwrap();
        assert!(matches!(
            Store::open(dir.path(), limits(1_000_000)),
            Err(DatasetError::InUse { .. })
        ));
    }

    #[test]
    fn an_export_takes_the_rows_asked_for_into_a_new_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (mut store, _) = Store::open(dir.path(), limits(1_000_000)).unwrap();
        store
            .add(&capture(1, "door", now - Duration::from_secs(7200), 1))
            .unwrap();
        store.add(&capture(2, "door", now, 2)).unwrap();
        store.add(&capture(3, "gate", now, 1)).unwrap();

        let to = out.path().join("door-recent");
        let filter = Filter {
            since: Some(now - Duration::from_secs(3600)),
            task: Some("door".to_owned()),
        };
        let report = export(dir.path(), &to, &filter).unwrap();
        assert_eq!((report.rows, report.images), (1, 2));
        let rows = metadata_rows(&to);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, uuid::Uuid::from_u128(2).to_string());
        for file in &rows[0].frames_file_names {
            assert!(to.join(file).is_file(), "{file}");
        }
        assert!(!out.path().join("door-recent.partial").exists());

        let everything = export(dir.path(), &out.path().join("all"), &Filter::default()).unwrap();
        assert_eq!((everything.rows, everything.images), (3, 4));
        let summary = summary(dir.path()).unwrap();
        assert_eq!((summary.rows, summary.images), (3, 4));
        assert_eq!(summary.by_task["door"], 2);

        // The destination must be new or empty; a filter that takes nothing writes nothing.
        assert!(matches!(
            export(dir.path(), &to, &Filter::default()),
            Err(DatasetError::DestinationTaken { .. })
        ));
        let nothing = Filter {
            since: None,
            task: Some("nope".to_owned()),
        };
        let empty = out.path().join("empty");
        assert!(matches!(
            export(dir.path(), &empty, &nothing),
            Err(DatasetError::NothingToExport { .. })
        ));
        assert!(!empty.exists() && !out.path().join("empty.partial").exists());
        assert!(matches!(
            export(&out.path().join("missing"), &empty, &Filter::default()),
            Err(DatasetError::NotADataset { .. })
        ));
    }
}
