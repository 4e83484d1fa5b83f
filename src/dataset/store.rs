//! The dataset folder on disk and the one process that writes it.
//!
//! Layout (Hugging Face `imagefolder`):
//!
//! ```text
//! <dir>/metadata.jsonl        one row per line, in the order they were saved
//! <dir>/images/<id>.jpg       the image of a single-frame escalation
//! <dir>/images/<id>-<k>.jpg   frame k of a clip's escalation, oldest first
//! <dir>/.lock                 held briefly by whoever writes a row, prunes or takes a snapshot
//! <dir>/.writer.lock          held by the daemon writing the folder, as long as it runs
//! <dir>/.rejected.jsonl       lines found damaged at start-up, kept for a human to look at
//! ```
//!
//! `datasets` ignores hidden files and images no line names, so the folder loads at every moment.
//! A row is saved in an order that keeps it so across a crash or power cut: each image is written
//! beside its final name, synced and renamed (`durable::write`); only then is the line appended and
//! synced. A crash in between leaves an image no line names, removed at the next start. A line is
//! appended with one write; if the disk refuses part of it, the file is cut back to its old length.
//! Pruning rewrites `metadata.jsonl` without the oldest lines (a new file renamed over the old), then
//! deletes their images.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{DatasetError, io_error, row};
use crate::durable;
use crate::message::Capture;
use crate::outbox::Limits;

pub const METADATA: &str = "metadata.jsonl";
pub const IMAGES: &str = "images";
const LOCK: &str = ".lock";
const WRITER_LOCK: &str = ".writer.lock";
const REJECTED: &str = ".rejected.jsonl";
/// Pruning for size goes down to this share of the limit, so that it rewrites the metadata rarely.
const PRUNE_TO: f64 = 0.9;

/// One line of `metadata.jsonl`. Every field is always present and never null or an empty list, so
/// that `datasets` infers the same column types from any part of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The first image sent (for a clip, its oldest frame): the `image` column.
    pub file_name: String,
    /// Every image sent, oldest first (one for a single frame): the `frames` column.
    pub frames_file_names: Vec<String>,
    /// The answer's id, as published over MQTT.
    pub id: String,
    /// When the frame was captured (RFC 3339, UTC).
    pub time: String,
    pub camera: String,
    pub task: String,
    pub question: String,
    /// `text`, `yes_no` or `one_of:label,label,...`.
    pub kind: String,
    /// The text sent with the images: the question as the cloud model read it.
    pub prompt: String,
    pub local_answer: String,
    pub local_confidence: f64,
    pub local_model: String,
    /// The cloud's answer.
    pub answer: String,
    pub model: String,
    /// The inference provider the router chose; empty when the endpoint did not say.
    pub provider: String,
    /// The configured endpoint that answered.
    pub endpoint: String,
    /// Why it was escalated (`below_threshold`, `always`).
    pub reason: String,
}

impl Row {
    /// Every file the row names.
    fn files(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.file_name.as_str())
            .chain(self.frames_file_names.iter().map(String::as_str))
    }
}

/// A line of `metadata.jsonl` read back: the row and when its frame was captured, or why it is not one.
pub(crate) fn parse_line(line: &[u8]) -> Result<(Row, SystemTime), String> {
    let row: Row = serde_json::from_slice(line).map_err(|error| format!("not a row: {error}"))?;
    let time = humantime::parse_rfc3339_weak(&row.time)
        .map_err(|error| format!("time {:?}: {error}", row.time))?;
    if let Some(file) = row.files().find(|file| !is_image_name(file)) {
        return Err(format!("{file:?} is not an image of this folder"));
    }
    Ok((row, time))
}

/// `images/<name>.jpg`, with nothing that could leave the folder.
fn is_image_name(file: &str) -> bool {
    file.strip_prefix("images/")
        .and_then(|name| name.strip_suffix(".jpg"))
        .is_some_and(|stem| {
            !stem.is_empty()
                && stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The lines of `metadata.jsonl`, without their newlines; a last line with no newline (a torn
/// write) counts as a line.
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split_inclusive(|byte| *byte == b'\n')
        .map(|line| line.strip_suffix(b"\n").unwrap_or(line))
}

/// What the store remembers of each row: enough to prune it.
#[derive(Debug)]
struct Entry {
    id: String,
    time: SystemTime,
    line_len: u64,
    files: Vec<PathBuf>,
    /// The line and its images.
    bytes: u64,
}

/// A line left out at start-up, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

/// What opening the folder found and mended.
#[derive(Debug, Default)]
pub struct Recovery {
    pub rows: usize,
    /// Damaged lines, and lines whose images are missing: left out and copied to `.rejected.jsonl`.
    pub skipped: Vec<Skipped>,
    /// Images no line names (a crash between an image and its line), and half-written files: removed.
    pub removed_files: usize,
}

/// Whether `add` saved a row.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    Saved,
    /// A row with this id is already in the folder (an escalation replayed after a crash).
    Duplicate,
}

/// The folder, open for writing: its index in memory, its locks held.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Held while the store is open: one writing process per folder.
    _writer: File,
    /// Taken for each row, prune and snapshot.
    lock: File,
    metadata: File,
    metadata_len: u64,
    entries: VecDeque<Entry>,
    ids: HashSet<String>,
    bytes: u64,
    limits: Limits,
}

impl Store {
    /// Opens (or creates) the folder, mends what a crash left, and prunes it to `limits`.
    pub fn open(dir: &Path, limits: Limits) -> Result<(Store, Recovery), DatasetError> {
        let images = dir.join(IMAGES);
        std::fs::create_dir_all(&images).map_err(io_error("create", &images))?;
        let writer = open_lock(&dir.join(WRITER_LOCK))?;
        if writer.try_lock().is_err() {
            return Err(DatasetError::InUse {
                dir: dir.to_owned(),
            });
        }
        let lock = open_lock(&dir.join(LOCK))?;
        lock.lock().map_err(io_error("lock", &dir.join(LOCK)))?;
        let metadata_path = dir.join(METADATA);
        let bytes = match std::fs::read(&metadata_path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(io_error("read", &metadata_path)(error)),
        };

        let mut recovery = Recovery::default();
        let mut kept = Vec::with_capacity(bytes.len());
        let mut rejected = Vec::new();
        let mut entries = VecDeque::new();
        let mut ids = HashSet::new();
        for (index, line) in lines(&bytes).enumerate() {
            if line.is_empty() {
                continue;
            }
            let checked = parse_line(line).and_then(|(row, time)| {
                let entry = Entry::of(dir, &row, time, line.len() as u64 + 1)?;
                Ok((row, entry))
            });
            match checked {
                Ok((row, entry)) if ids.insert(row.id.clone()) => {
                    kept.extend_from_slice(line);
                    kept.push(b'\n');
                    entries.push_back(entry);
                }
                Ok((row, _)) => recovery.skipped.push(Skipped {
                    line: index + 1,
                    reason: format!("a second row for id {}", row.id),
                }),
                Err(reason) => {
                    recovery.skipped.push(Skipped {
                        line: index + 1,
                        reason,
                    });
                    rejected.extend_from_slice(line);
                    rejected.push(b'\n');
                }
            }
        }
        if kept != bytes {
            if !rejected.is_empty() {
                append(&dir.join(REJECTED), &rejected)?;
            }
            durable::write(&metadata_path, &kept).map_err(io_error("rewrite", &metadata_path))?;
        }
        let named: HashSet<&Path> = entries
            .iter()
            .flat_map(|entry| entry.files.iter().map(PathBuf::as_path))
            .collect();
        let listing = std::fs::read_dir(&images).map_err(io_error("list", &images))?;
        for file in listing.flatten() {
            let path = file.path();
            if !named.contains(path.as_path()) && file.file_type().is_ok_and(|kind| kind.is_file())
            {
                std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
                recovery.removed_files += 1;
            }
        }
        recovery.rows = entries.len();

        let metadata = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metadata_path)
            .map_err(io_error("open", &metadata_path))?;
        let mut store = Store {
            dir: dir.to_owned(),
            _writer: writer,
            bytes: entries.iter().map(|entry| entry.bytes).sum(),
            metadata_len: kept.len() as u64,
            lock,
            metadata,
            entries,
            ids,
            limits,
        };
        store.prune_locked(SystemTime::now())?;
        store
            .lock
            .unlock()
            .map_err(io_error("unlock", &dir.join(LOCK)))?;
        Ok((store, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn rows(&self) -> usize {
        self.entries.len()
    }

    /// The images and lines held, in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// New bounds; the folder is pruned to them at once. Returns the rows pruned.
    pub(crate) fn set_limits(&mut self, limits: Limits) -> Result<usize, DatasetError> {
        self.limits = limits;
        self.prune(SystemTime::now())
    }

    /// Saves one escalation, then prunes the oldest rows beyond the bounds. On an error nothing of the
    /// row stays behind. Returns whether it was saved and the rows pruned.
    pub fn add(&mut self, capture: &Capture) -> Result<(Added, usize), DatasetError> {
        let id = capture.answer.id.to_string();
        if self.ids.contains(&id) {
            return Ok((Added::Duplicate, 0));
        }
        let names: Vec<String> = match capture.images.len() {
            1 => vec![format!("{IMAGES}/{id}.jpg")],
            _ => (0..capture.images.len())
                .map(|index| format!("{IMAGES}/{id}-{index}.jpg"))
                .collect(),
        };
        let row = row(capture, &names);
        // The row holds text from the cloud, which may echo a secret back.
        let mut line =
            crate::errors::redact_bytes(&serde_json::to_vec(&row).expect("rows serialize"))
                .into_owned();
        line.push(b'\n');
        let time = humantime::parse_rfc3339_weak(&row.time).unwrap_or_else(|_| SystemTime::now());

        let lock_path = self.dir.join(LOCK);
        self.lock.lock().map_err(io_error("lock", &lock_path))?;
        let saved = self.write_row(&names, &capture.images, &line);
        let pruned = match saved {
            Ok(()) => {
                let files = names.iter().map(|name| self.dir.join(name)).collect();
                let image_bytes: u64 = capture.images.iter().map(|jpeg| jpeg.len() as u64).sum();
                self.entries.push_back(Entry {
                    id: id.clone(),
                    time,
                    line_len: line.len() as u64,
                    files,
                    bytes: image_bytes + line.len() as u64,
                });
                self.ids.insert(id);
                self.bytes += image_bytes + line.len() as u64;
                self.prune_locked(SystemTime::now())
            }
            Err(error) => Err(error),
        };
        self.lock.unlock().map_err(io_error("unlock", &lock_path))?;
        Ok((Added::Saved, pruned?))
    }

    /// Drops rows older than the age limit, and the oldest rows while over the size limit. Returns
    /// how many.
    pub(crate) fn prune(&mut self, now: SystemTime) -> Result<usize, DatasetError> {
        let lock_path = self.dir.join(LOCK);
        self.lock.lock().map_err(io_error("lock", &lock_path))?;
        let pruned = self.prune_locked(now);
        self.lock.unlock().map_err(io_error("unlock", &lock_path))?;
        pruned
    }

    /// The images, then the line; on an error, what was written is taken back.
    fn write_row(
        &mut self,
        names: &[String],
        images: &[Vec<u8>],
        line: &[u8],
    ) -> Result<(), DatasetError> {
        let paths: Vec<PathBuf> = names.iter().map(|name| self.dir.join(name)).collect();
        let remove_written = |paths: &[PathBuf]| {
            for path in paths {
                let _ = std::fs::remove_file(path);
                let _ = std::fs::remove_file(durable::temporary(path));
            }
        };
        for (path, jpeg) in paths.iter().zip(images) {
            if let Err(error) = durable::write(path, jpeg) {
                remove_written(&paths);
                return Err(io_error("write", path)(error));
            }
        }
        let metadata_path = self.dir.join(METADATA);
        let appended = self
            .metadata
            .write_all(line)
            .and_then(|()| self.metadata.sync_data());
        if let Err(error) = appended {
            let _ = self.metadata.set_len(self.metadata_len);
            remove_written(&paths);
            return Err(io_error("append to", &metadata_path)(error));
        }
        self.metadata_len += line.len() as u64;
        Ok(())
    }

    fn prune_locked(&mut self, now: SystemTime) -> Result<usize, DatasetError> {
        let oldest_kept = now.checked_sub(self.limits.max_age);
        let too_old = |entry: &Entry| oldest_kept.is_some_and(|oldest| entry.time < oldest);
        let target = if self.bytes > self.limits.max_bytes {
            (self.limits.max_bytes as f64 * PRUNE_TO) as u64
        } else {
            self.limits.max_bytes
        };
        let mut count = 0;
        let mut bytes = self.bytes;
        let mut cut = 0;
        for entry in &self.entries {
            if !(bytes > target || too_old(entry)) {
                break;
            }
            bytes -= entry.bytes;
            cut += entry.line_len;
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        let metadata_path = self.dir.join(METADATA);
        let mut rest = vec![0u8; (self.metadata_len - cut) as usize];
        File::open(&metadata_path)
            .and_then(|file| file.read_exact_at(&mut rest, cut))
            .map_err(io_error("read", &metadata_path))?;
        durable::write(&metadata_path, &rest).map_err(io_error("rewrite", &metadata_path))?;
        self.metadata = OpenOptions::new()
            .append(true)
            .open(&metadata_path)
            .map_err(io_error("open", &metadata_path))?;
        self.metadata_len = rest.len() as u64;
        self.bytes = bytes;
        for entry in self.entries.drain(..count) {
            self.ids.remove(&entry.id);
            for file in &entry.files {
                let _ = std::fs::remove_file(file);
            }
        }
        Ok(count)
    }
}

impl Entry {
    /// The entry of a row whose images are all there.
    fn of(dir: &Path, row: &Row, time: SystemTime, line_len: u64) -> Result<Entry, String> {
        let mut files = Vec::new();
        let mut bytes = line_len;
        for name in row.files() {
            let path = dir.join(name);
            if files.contains(&path) {
                continue;
            }
            let size = std::fs::metadata(&path)
                .map_err(|error| format!("image {name}: {error}"))?
                .len();
            bytes += size;
            files.push(path);
        }
        Ok(Entry {
            id: row.id.clone(),
            time,
            line_len,
            files,
            bytes,
        })
    }
}

fn open_lock(path: &Path) -> Result<File, DatasetError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_error("create", path))
}

/// Appends `bytes` to `path` and syncs it.
fn append(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_data()
        })
        .map_err(io_error("append to", path))
}

/// Takes the folder's short lock for a consistent read (a snapshot) while the daemon may write. Read
/// access is enough: an export may run as a user who can read the folder but not write it.
pub(crate) fn lock_for_reading(dir: &Path) -> Result<File, DatasetError> {
    let path = dir.join(LOCK);
    let lock = File::open(&path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => DatasetError::NotADataset {
            dir: dir.to_owned(),
        },
        _ => io_error("open", &path)(error),
    })?;
    lock.lock().map_err(io_error("lock", &path))?;
    Ok(lock)
}
