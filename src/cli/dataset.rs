//! `lookout dataset`: what the fine-tuning dataset folder holds, and copies of it (or of the rows
//! chosen) that `datasets` loads. An empty or missing dataset exits 66, so a script can tell "nothing
//! yet" from a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Subcommand;
use lookout::config::ConfigOrigin;
use lookout::dataset::{self, DatasetError};
use lookout::env::Env;

use super::{Exit, Failure, Outcome};

#[derive(Subcommand)]
pub enum Action {
    /// What the dataset folder holds: rows, images, bytes, time span, rows per task and camera.
    Stats {
        #[command(flatten)]
        folder: Folder,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy the dataset, or the rows you choose, to a new folder that `datasets` loads as an
    /// imagefolder; consistent even while the daemon is saving rows.
    Export {
        /// The new folder (it must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Only rows captured at or after this: a time (2026-11-01T08:00:00Z), a date (2026-11-01,
        /// UTC) or an age (36h, 7d).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<SystemTime>,
        /// Only rows of this task.
        #[arg(long, value_name = "NAME")]
        task: Option<String>,
        #[command(flatten)]
        folder: Folder,
    },
}

/// Which dataset folder: `--dir`, else the config's `dataset.dir` (default `<state_dir>/dataset`).
#[derive(clap::Args)]
pub struct Folder {
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(action: Action, env: &Env) -> Outcome {
    match action {
        Action::Stats { folder, json } => stats(&folder.dir(env)?, json),
        Action::Export {
            to,
            since,
            task,
            folder,
        } => export(&folder.dir(env)?, &to, &dataset::Filter { since, task }),
    }
}

impl Folder {
    /// The dataset folder a `lookout dataset` command works on.
    fn dir(self, env: &Env) -> Result<PathBuf, Failure> {
        if let Some(dir) = self.dir {
            return Ok(dir);
        }
        let (config, _) = ConfigOrigin::choose(self.config, env)
            .load_effective(env)
            .map_err(|error| Failure::new(Exit::Usage, error))?;
        Ok(config.dataset_settings().dir)
    }
}

/// `--since`: a time, a date (midnight UTC) or an age.
fn parse_since(text: &str) -> Result<SystemTime, String> {
    let expected =
        "expected a time (2026-11-01T08:00:00Z), a date (2026-11-01) or an age (36h, 7d)";
    if text.starts_with(|c: char| c.is_ascii_digit())
        && let Ok(age) = humantime::parse_duration(text)
    {
        return SystemTime::now()
            .checked_sub(age)
            .ok_or_else(|| expected.to_owned());
    }
    let time = if text.len() == "2026-11-01".len() {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    humantime::parse_rfc3339_weak(&time).map_err(|_| expected.to_owned())
}

/// The exit code for a dataset error.
fn failure(error: DatasetError) -> Failure {
    let exit = match error {
        DatasetError::NotADataset { .. } | DatasetError::NothingToExport { .. } => Exit::NoInput,
        DatasetError::DestinationTaken { .. } => Exit::CantCreate,
        DatasetError::Io { .. } | DatasetError::InUse { .. } => Exit::Failed,
    };
    Failure::new(exit, error)
}

/// `lookout dataset stats`.
fn stats(dir: &Path, json: bool) -> Outcome {
    let summary = dataset::summary(dir).map_err(failure)?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("summaries serialize")
        );
        return Ok(());
    }
    let counts = |counts: &BTreeMap<String, usize>| {
        let listed: Vec<String> = counts
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        listed.join(", ")
    };
    println!(
        "{}: {} rows, {} images, {:.1} MB",
        summary.dir.display(),
        summary.rows,
        summary.images,
        summary.bytes as f64 / 1e6
    );
    if let (Some(oldest), Some(newest)) = (&summary.oldest, &summary.newest) {
        println!("  captured from {oldest} to {newest}");
        println!("  rows by task: {}", counts(&summary.by_task));
        println!("  rows by camera: {}", counts(&summary.by_camera));
    }
    if summary.unreadable_lines > 0 {
        println!(
            "  {} damaged line(s) in metadata.jsonl: the daemon sets them aside at its next start",
            summary.unreadable_lines
        );
    }
    Ok(())
}

/// `lookout dataset export`.
fn export(dir: &Path, to: &Path, filter: &dataset::Filter) -> Outcome {
    let report = dataset::export(dir, to, filter).map_err(failure)?;
    println!(
        "{}: {} rows, {} images, {:.1} MB (load it with datasets.load_dataset(\"imagefolder\", data_dir=...))",
        report.to.display(),
        report.rows,
        report.images,
        report.bytes as f64 / 1e6
    );
    Ok(())
}
