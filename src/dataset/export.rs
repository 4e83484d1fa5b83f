//! Reading the folder from outside the daemon, while it may be writing: a summary for
//! `lookout dataset stats`, and a consistent copy for `lookout dataset export`.
//!
//! An export holds the folder's short lock while it reads `metadata.jsonl` and links the images it
//! names into a new folder, so no row is half in it and no image is pruned from under it; the daemon
//! waits for that lock only to save its next row. Images are hard links where the destination is on
//! the same filesystem (the daemon never changes an image, only deletes it), copies otherwise. The
//! copy is built beside the destination and renamed into place, so an interrupted export leaves no
//! half a dataset under the destination's name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::store::{self, METADATA, lines, parse_line};
use super::{DatasetError, io_error};
use crate::durable;

/// Which rows an export takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Rows whose frame was captured at or after this.
    pub since: Option<SystemTime>,
    pub task: Option<String>,
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(since) = self.since {
            write!(f, " since {}", humantime::format_rfc3339_seconds(since))?;
        }
        if let Some(task) = &self.task {
            write!(f, " of task {task:?}")?;
        }
        Ok(())
    }
}

/// What the folder holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub dir: PathBuf,
    pub rows: usize,
    pub images: usize,
    /// The images and `metadata.jsonl`.
    pub bytes: u64,
    /// The capture times of the oldest and newest rows (RFC 3339).
    pub oldest: Option<String>,
    pub newest: Option<String>,
    pub by_task: BTreeMap<String, usize>,
    pub by_camera: BTreeMap<String, usize>,
    /// Lines that are not rows (the daemon sets them aside at its next start).
    pub unreadable_lines: usize,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub to: PathBuf,
    pub rows: usize,
    pub images: usize,
    pub bytes: u64,
}

/// A row of `metadata.jsonl` as read back.
struct Saved {
    row: store::Row,
    /// When its frame was captured.
    time: SystemTime,
    line: Vec<u8>,
}

/// The rows of `dir`'s `metadata.jsonl`, and the count of lines that are not rows.
fn read_rows(dir: &Path) -> Result<(Vec<Saved>, usize), DatasetError> {
    let path = dir.join(METADATA);
    let bytes = std::fs::read(&path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => DatasetError::NotADataset {
            dir: dir.to_owned(),
        },
        _ => io_error("read", &path)(error),
    })?;
    let mut rows = Vec::new();
    let mut unreadable = 0;
    for line in lines(&bytes).filter(|line| !line.is_empty()) {
        match parse_line(line) {
            Ok((row, time)) => rows.push(Saved {
                row,
                time,
                line: line.to_vec(),
            }),
            Err(_) => unreadable += 1,
        }
    }
    Ok((rows, unreadable))
}

/// Counts what `dir` holds, by task and camera.
pub fn summary(dir: &Path) -> Result<Summary, DatasetError> {
    let (rows, unreadable_lines) = read_rows(dir)?;
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
    let mut summary = Summary {
        dir: dir.to_owned(),
        rows: rows.len(),
        images: 0,
        bytes: size(&dir.join(METADATA)),
        oldest: None,
        newest: None,
        by_task: BTreeMap::new(),
        by_camera: BTreeMap::new(),
        unreadable_lines,
    };
    let mut times = Vec::new();
    for Saved { row, time, .. } in &rows {
        let files: BTreeSet<&String> = row.frames_file_names.iter().collect();
        summary.images += files.len();
        summary.bytes += files.iter().map(|file| size(&dir.join(file))).sum::<u64>();
        *summary.by_task.entry(row.task.clone()).or_default() += 1;
        *summary.by_camera.entry(row.camera.clone()).or_default() += 1;
        times.push((*time, &row.time));
    }
    times.sort();
    summary.oldest = times.first().map(|(_, text)| (*text).clone());
    summary.newest = times.last().map(|(_, text)| (*text).clone());
    Ok(summary)
}

/// Copies the rows of `dir` that `filter` takes to a new dataset folder `to` (which must not exist,
/// or be empty), consistent even while the daemon writes `dir`.
pub fn export(dir: &Path, to: &Path, filter: &Filter) -> Result<ExportReport, DatasetError> {
    let to_is_empty_folder = match std::fs::read_dir(to) {
        Ok(mut entries) => entries.next().is_none(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => false,
        Err(_) => {
            return Err(DatasetError::DestinationTaken {
                path: to.to_owned(),
            });
        }
    };
    if to.exists() && !to_is_empty_folder {
        return Err(DatasetError::DestinationTaken {
            path: to.to_owned(),
        });
    }
    let mut staging_name = to.file_name().unwrap_or_default().to_owned();
    staging_name.push(".partial");
    let staging = to.with_file_name(staging_name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_error("remove", &staging))?;
    }
    let staging_images = staging.join(store::IMAGES);
    std::fs::create_dir_all(&staging_images).map_err(io_error("create", &staging_images))?;

    let copied = (|| {
        let lock = store::lock_for_reading(dir)?;
        let (rows, _) = read_rows(dir)?;
        let mut metadata = Vec::new();
        let mut report = ExportReport {
            to: to.to_owned(),
            rows: 0,
            images: 0,
            bytes: 0,
        };
        let taken = rows.iter().filter(|saved| {
            filter.since.is_none_or(|since| saved.time >= since)
                && filter
                    .task
                    .as_ref()
                    .is_none_or(|task| saved.row.task == *task)
        });
        for Saved { row, line, .. } in taken {
            let files: BTreeSet<&String> = row.frames_file_names.iter().collect();
            for file in files {
                report.bytes += link_or_copy(&dir.join(file), &staging.join(file))?;
                report.images += 1;
            }
            metadata.extend_from_slice(line);
            metadata.push(b'\n');
            report.rows += 1;
        }
        drop(lock);
        if report.rows == 0 {
            return Err(DatasetError::NothingToExport {
                filter: filter.to_string(),
            });
        }
        let metadata_path = staging.join(METADATA);
        durable::write(&metadata_path, &metadata).map_err(io_error("write", &metadata_path))?;
        report.bytes += metadata.len() as u64;
        Ok(report)
    })();
    let report = match copied {
        Ok(report) => report,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    if to_is_empty_folder {
        std::fs::remove_dir(to).map_err(io_error("replace", to))?;
    }
    std::fs::rename(&staging, to).map_err(io_error("rename the export to", to))?;
    Ok(report)
}

/// A hard link to `from` at `to`, or a copy when the two are on different filesystems. Returns the
/// bytes.
fn link_or_copy(from: &Path, to: &Path) -> Result<u64, DatasetError> {
    let size = std::fs::metadata(from)
        .map_err(io_error("read", from))?
        .len();
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io_error("copy", from))?;
    }
    Ok(size)
}
