//! The on-disk outbox: messages wait here until the far end has acknowledged them, across broker
//! outages, network loss, power cuts and `kill -9`. Answers wait for the MQTT broker's PubAck; the
//! cloud escalation queue uses another outbox with the same API.
//!
//! # Why a log of our own
//! The workload is a queue: append at the tail, acknowledge near the head, and most of the time nothing
//! waits at all. An append-only file does exactly that with one write per message, and shrinks back to
//! its header whenever it empties. Its records are framed and checksummed (see `log`), so damage costs
//! the records it touches: a torn tail after a power cut, or flipped bits, lose those records and the
//! daemon starts with the rest. An embedded database (redb, fjall) would give transactions we do not
//! need and, on a damaged file, refuse to open it at all.
//!
//! # Durability
//! An entry is written and `fdatasync`ed before `push` returns, so an answer the daemon has produced is
//! on disk before it is handed to MQTT. Completions (acknowledged or dropped) are written without a
//! sync: after a power cut an acknowledged answer may be sent again, a duplicate with the same `id`
//! that subscribers drop, never a lost one. When the disk refuses a write (full, read-only), the entry
//! is kept in memory instead, counted in `write_failures`, and still delivered while the process lives;
//! the next compaction writes it out if the disk has room again.
//!
//! # Bounds
//! The entries waiting are bounded in bytes and in age (config `[outbox]`). When a new entry does not
//! fit, the oldest go first; entries older than the age limit go too. Each drop is counted and written
//! down, and logged once per burst. Memory holds an index (position, key and time per entry, about a
//! hundred bytes each); payloads stay on disk until they are sent. Dead records are reclaimed by
//! truncating the file when it empties, or rewriting it when dead bytes outweigh live ones.

mod log;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::validate::Problems;

/// How much may wait, from the config's `[outbox]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Megabytes of waiting messages, at most.
    pub max_mb: f64,
    /// Hours a message may wait before it is dropped.
    pub max_age_hours: f64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_mb: 64.0,
            max_age_hours: 168.0,
        }
    }
}

impl OutboxConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if !(self.max_mb.is_finite() && (0.01..=1_000_000.0).contains(&self.max_mb)) {
            problems.push(
                format!("{path}.max_mb"),
                format!("must be 0.01 to 1000000, not {}", self.max_mb),
            );
        }
        if !(self.max_age_hours.is_finite()
            && self.max_age_hours > 0.0
            && self.max_age_hours <= 87_600.0)
        {
            problems.push(
                format!("{path}.max_age_hours"),
                format!(
                    "must be above 0 and at most 87600 (ten years), not {}",
                    self.max_age_hours
                ),
            );
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_bytes: (self.max_mb * 1e6) as u64,
            max_age: Duration::from_secs_f64(self.max_age_hours * 3600.0),
        }
    }
}

/// The bounds an outbox enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// Why an outbox cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} was written by a newer Lookout (outbox format {found}; this build reads format {}): \
         run the newer Lookout, or move the file away to start with an empty outbox",
        log::VERSION
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("{path} is in use by another Lookout process")]
    Locked { path: PathBuf },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OutboxError {
    let path = path.to_owned();
    move |source| OutboxError::Io {
        action,
        path,
        source,
    }
}

/// A message taken from the outbox to be sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub seq: u64,
    pub key: String,
    pub payload: Vec<u8>,
}

/// The outbox's state for stats and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxStatus {
    /// Messages waiting (in flight included).
    pub depth: usize,
    pub bytes: u64,
    /// Sent and not yet acknowledged.
    pub in_flight: usize,
    pub oldest_age_s: f64,
    /// Sends of a message that had been sent before (after a reconnect) or by an earlier run.
    pub replayed: u64,
    pub dropped: u64,
    /// Messages the disk refused, kept in memory only.
    pub write_failures: u64,
    /// Unreadable bytes found at start-up.
    pub damaged_bytes: u64,
}

/// What opening found on disk.
#[derive(Debug)]
pub struct Recovery {
    /// Messages from an earlier run still waiting.
    pub recovered: usize,
    pub damaged_bytes: u64,
    /// Where a damaged file was copied before it was rewritten.
    pub set_aside: Option<PathBuf>,
}

enum Payload {
    OnDisk { at: u64, len: u32 },
    InMemory(Vec<u8>),
}

struct Entry {
    seq: u64,
    created_ms: u64,
    key: String,
    payload: Payload,
    /// The size this entry counts against the byte limit: its record's.
    size: u64,
    /// Sent before, by this run or an earlier one: sending it again is a replay.
    sent_before: bool,
}

struct State {
    file: File,
    /// Where the next record goes.
    end: u64,
    /// Bytes of records nothing needs any more.
    dead_bytes: u64,
    /// Oldest first; `entries[..in_flight]` have been sent and wait for their acknowledgement.
    entries: VecDeque<Entry>,
    in_flight: usize,
    live_bytes: u64,
    next_seq: u64,
    replayed: u64,
    dropped: u64,
    write_failures: u64,
    damaged_bytes: u64,
    /// Drops since the last push that needed none: a burst is logged once.
    drop_burst: u64,
    write_failing: bool,
}

/// A durable FIFO of keyed messages (see the module doc). Every method is safe to call from any thread.
pub struct Outbox {
    path: PathBuf,
    limits: Limits,
    state: Mutex<State>,
    arrived: Notify,
    /// Held for the outbox's life: two processes appending to one file would corrupt it.
    _lock: File,
}

/// Reclaim dead records by rewriting once they are this large and outweigh the live ones.
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// An empty log longer than this is truncated to its header.
const TRUNCATE_MIN_BYTES: u64 = 64 << 10;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`, keeping every intact message of an earlier run.
    pub fn open(path: &Path, limits: Limits) -> Result<(Outbox, Recovery), OutboxError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error("create the directory", dir))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("create", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(OutboxError::Locked {
                path: path.to_owned(),
            });
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error("open", path))?;
        let file_len = file.metadata().map_err(io_error("read", path))?.len();
        let mut head = vec![0u8; file_len.min(log::HEADER_LEN) as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(io_error("read", path))?;

        let mut recovery = Recovery {
            recovered: 0,
            damaged_bytes: 0,
            set_aside: None,
        };
        let mut entries = BTreeMap::new();
        let mut next_seq = 1;
        match (file_len, log::read_header(&head)) {
            (0, _) => {}
            (_, log::Header::Newer(found)) => {
                return Err(OutboxError::NewerFormat {
                    path: path.to_owned(),
                    found,
                });
            }
            (_, log::Header::Foreign) => recovery.damaged_bytes = file_len,
            (_, log::Header::Ours) => {
                let scan = log::scan(&file).map_err(io_error("read", path))?;
                recovery.damaged_bytes = scan.damaged_bytes;
                for record in scan.records {
                    match record {
                        log::Record::Entry {
                            seq,
                            created_ms,
                            key,
                            payload_at,
                            payload_len,
                        } => {
                            next_seq = next_seq.max(seq + 1);
                            let mut payload = vec![0u8; payload_len as usize];
                            file.read_exact_at(&mut payload, payload_at)
                                .map_err(io_error("read", path))?;
                            entries.insert(seq, (created_ms, key, payload));
                        }
                        log::Record::Done { seq } => {
                            entries.remove(&seq);
                        }
                    }
                }
            }
        }
        if recovery.damaged_bytes > 0 {
            let aside = path.with_extension(format!("damaged-{}", now_ms()));
            std::fs::copy(path, &aside).map_err(io_error("copy", path))?;
            recovery.set_aside = Some(aside);
        }
        recovery.recovered = entries.len();

        let mut state = State {
            file,
            end: log::HEADER_LEN,
            dead_bytes: 0,
            entries: entries
                .into_iter()
                .map(|(seq, (created_ms, key, payload))| Entry {
                    size: log::entry(seq, created_ms, &key, &payload).len() as u64,
                    seq,
                    created_ms,
                    key,
                    payload: Payload::InMemory(payload),
                    sent_before: true,
                })
                .collect(),
            in_flight: 0,
            live_bytes: 0,
            next_seq,
            replayed: 0,
            dropped: 0,
            write_failures: 0,
            damaged_bytes: recovery.damaged_bytes,
            drop_burst: 0,
            write_failing: false,
        };
        state.live_bytes = state.entries.iter().map(|entry| entry.size).sum();
        let outbox = Outbox {
            path: path.to_owned(),
            limits,
            state: Mutex::new(state),
            arrived: Notify::new(),
            _lock: lock,
        };
        {
            // Start from a clean file holding exactly the waiting messages, with their payloads on disk.
            let mut state = outbox.lock();
            outbox.rewrite(&mut state)?;
            outbox.drop_expired(&mut state, now_ms());
        }
        Ok((outbox, recovery))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the index consistent at record granularity: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores a message durably (see the module doc for when the disk refuses) and returns its sequence
    /// number. Older messages are dropped first if the new one would not fit. The payload is stored,
    /// and later sent, without the secrets the process holds (`errors::redact_bytes`).
    pub fn push(&self, key: &str, payload: &[u8]) -> u64 {
        let payload = &*crate::errors::redact_bytes(payload);
        let mut state = self.lock();
        let created_ms = now_ms();
        self.drop_expired(&mut state, created_ms);
        let seq = state.next_seq;
        state.next_seq += 1;
        let record = log::entry(seq, created_ms, key, payload);
        let size = record.len() as u64;
        let mut dropped = 0;
        while !state.entries.is_empty() && state.live_bytes + size > self.limits.max_bytes {
            self.drop_oldest(&mut state);
            dropped += 1;
        }
        self.log_drops(&mut state, dropped, "the outbox is full");

        let at = state.end;
        let written = state
            .file
            .write_all_at(&record, at)
            .and_then(|()| state.file.sync_data());
        let payload = match written {
            Ok(()) => {
                state.end += size;
                if state.write_failing {
                    state.write_failing = false;
                    info!(outbox = %self.path.display(), "The outbox is written to disk again.");
                }
                Payload::OnDisk {
                    at: at + size - payload.len() as u64,
                    len: payload.len() as u32,
                }
            }
            Err(failure) => {
                // Undo a partial record so the next one starts where this one did.
                let _ = state.file.set_len(at);
                state.write_failures += 1;
                if !state.write_failing {
                    state.write_failing = true;
                    error!(outbox = %self.path.display(), error = %failure, "Cannot write to the outbox; keeping messages in memory until it works again.");
                }
                Payload::InMemory(payload.to_vec())
            }
        };
        state.live_bytes += size;
        state.entries.push_back(Entry {
            seq,
            created_ms,
            key: key.to_owned(),
            payload,
            size,
            sent_before: false,
        });
        drop(state);
        self.arrived.notify_one();
        seq
    }

    /// The oldest message not yet sent, now counted as in flight.
    pub(crate) fn next_unsent(&self) -> Option<Item> {
        let mut state = self.lock();
        self.drop_expired(&mut state, now_ms());
        loop {
            let index = state.in_flight;
            let entry = state.entries.get(index)?;
            let payload = match &entry.payload {
                Payload::InMemory(payload) => Ok(payload.clone()),
                Payload::OnDisk { at, len } => {
                    let mut payload = vec![0u8; *len as usize];
                    state
                        .file
                        .read_exact_at(&mut payload, *at)
                        .map(|()| payload)
                }
            };
            match payload {
                Ok(payload) => {
                    let replay = entry.sent_before;
                    let item = Item {
                        seq: entry.seq,
                        key: entry.key.clone(),
                        payload,
                    };
                    state.entries[index].sent_before = true;
                    state.in_flight += 1;
                    if replay {
                        state.replayed += 1;
                    }
                    return Some(item);
                }
                Err(failure) => {
                    // The disk lost what it had accepted: nothing to send, so say so and go on.
                    error!(outbox = %self.path.display(), seq = entry.seq, error = %failure, "A stored message cannot be read back; dropping it.");
                    let entry = state.entries.remove(index).expect("indexed above");
                    self.forget(&mut state, &entry);
                    state.dropped += 1;
                }
            }
        }
    }

    /// The far end has the message: forget it.
    pub fn complete(&self, seq: u64) {
        let mut state = self.lock();
        let Ok(index) = state.entries.binary_search_by_key(&seq, |entry| entry.seq) else {
            return;
        };
        let entry = state.entries.remove(index).expect("found above");
        if index < state.in_flight {
            state.in_flight -= 1;
        }
        self.forget(&mut state, &entry);
        self.reclaim(&mut state);
    }

    /// Everything in flight is unsent again (the connection that carried it is gone), in order.
    pub(crate) fn resend_all(&self) {
        self.lock().in_flight = 0;
        self.arrived.notify_one();
    }

    /// Resolves when a message may have arrived since the last call.
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }

    pub fn status(&self) -> OutboxStatus {
        let state = self.lock();
        let now = now_ms();
        OutboxStatus {
            depth: state.entries.len(),
            bytes: state.live_bytes,
            in_flight: state.in_flight,
            oldest_age_s: state.entries.front().map_or(0.0, |entry| {
                now.saturating_sub(entry.created_ms) as f64 / 1000.0
            }),
            replayed: state.replayed,
            dropped: state.dropped,
            write_failures: state.write_failures,
            damaged_bytes: state.damaged_bytes,
        }
    }

    fn drop_oldest(&self, state: &mut State) {
        let entry = state.entries.pop_front().expect("callers check");
        state.in_flight = state.in_flight.saturating_sub(1);
        self.forget(state, &entry);
        state.dropped += 1;
    }

    fn drop_expired(&self, state: &mut State, now: u64) {
        let max_age = self.limits.max_age.as_millis() as u64;
        let mut dropped = 0;
        while state
            .entries
            .front()
            .is_some_and(|entry| now.saturating_sub(entry.created_ms) > max_age)
        {
            self.drop_oldest(state);
            dropped += 1;
        }
        self.log_drops(state, dropped, "messages outlived the age limit");
        self.reclaim(state);
    }

    fn log_drops(&self, state: &mut State, dropped: u64, reason: &str) {
        if dropped == 0 {
            if state.drop_burst > 0 {
                info!(outbox = %self.path.display(), dropped = state.drop_burst, "The outbox stopped dropping messages.");
                state.drop_burst = 0;
            }
            return;
        }
        if state.drop_burst == 0 {
            warn!(outbox = %self.path.display(), reason, "Dropping the oldest messages from the outbox.");
        }
        state.drop_burst += dropped;
    }

    /// Writes down that `entry` is no longer waiting (without a sync: see the module doc).
    fn forget(&self, state: &mut State, entry: &Entry) {
        state.live_bytes -= entry.size;
        if let Payload::OnDisk { .. } = entry.payload {
            let record = log::done(entry.seq);
            let at = state.end;
            match state.file.write_all_at(&record, at) {
                Ok(()) => {
                    state.end += record.len() as u64;
                    state.dead_bytes += entry.size + record.len() as u64;
                }
                Err(_) => {
                    // Without the record the entry comes back after a restart: a duplicate, not a loss.
                    let _ = state.file.set_len(at);
                }
            }
        }
    }

    /// Gives dead records' space back: truncate an empty log, rewrite a mostly dead one.
    fn reclaim(&self, state: &mut State) {
        let result = if state.entries.is_empty() && state.end > log::HEADER_LEN + TRUNCATE_MIN_BYTES
        {
            state.file.set_len(log::HEADER_LEN).map(|()| {
                state.end = log::HEADER_LEN;
                state.dead_bytes = 0;
            })
        } else if state.dead_bytes > COMPACT_MIN_BYTES && state.dead_bytes > state.live_bytes {
            self.rewrite(state)
                .map_err(|error| io::Error::other(error.to_string()))
        } else {
            Ok(())
        };
        if let Err(failure) = result {
            warn!(outbox = %self.path.display(), error = %failure, "Could not compact the outbox; will try again later.");
        }
    }

    /// Replaces the file with one holding exactly the waiting entries (in-memory ones included), via a
    /// synced temporary file and a rename, so a crash leaves either the old file or the new one.
    fn rewrite(&self, state: &mut State) -> Result<(), OutboxError> {
        let temporary = self.path.with_extension("rewrite");
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&temporary)
            .map_err(io_error("create", &temporary))?;
        let mut end = log::HEADER_LEN;
        let mut places = Vec::with_capacity(state.entries.len());
        file.write_all_at(&log::header(), 0)
            .map_err(io_error("write", &temporary))?;
        for entry in &state.entries {
            let payload = match &entry.payload {
                Payload::InMemory(payload) => payload.clone(),
                Payload::OnDisk { at, len } => {
                    let mut payload = vec![0u8; *len as usize];
                    state
                        .file
                        .read_exact_at(&mut payload, *at)
                        .map_err(io_error("read", &self.path))?;
                    payload
                }
            };
            let record = log::entry(entry.seq, entry.created_ms, &entry.key, &payload);
            file.write_all_at(&record, end)
                .map_err(io_error("write", &temporary))?;
            end += record.len() as u64;
            places.push((end - payload.len() as u64, payload.len() as u32));
        }
        file.sync_all().map_err(io_error("sync", &temporary))?;
        std::fs::rename(&temporary, &self.path).map_err(io_error("replace", &self.path))?;
        if let Some(dir) = self.path.parent() {
            // The rename itself must survive a power cut.
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error("sync", dir))?;
        }
        for (entry, (at, len)) in state.entries.iter_mut().zip(places) {
            entry.payload = Payload::OnDisk { at, len };
        }
        state.file = file;
        state.end = end;
        state.dead_bytes = 0;
        state.write_failing = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        }
    }

    fn drain(outbox: &Outbox) -> Vec<Item> {
        std::iter::from_fn(|| outbox.next_unsent()).collect()
    }

    #[test]
    fn messages_survive_a_reopen_until_completed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.log");
        {
            let (outbox, recovery) = Outbox::open(&path, limits()).unwrap();
            assert_eq!(recovery.recovered, 0);
            for n in 0..5 {
                outbox.push("t", format!("m{n}").as_bytes());
            }
            let sent = drain(&outbox);
            outbox.complete(sent[1].seq);
            outbox.complete(sent[3].seq);
        }
        let (outbox, recovery) = Outbox::open(&path, limits()).unwrap();
        assert_eq!(recovery.recovered, 3);
        let payloads: Vec<Vec<u8>> = drain(&outbox)
            .into_iter()
            .map(|item| item.payload)
            .collect();
        assert_eq!(payloads, [b"m0".to_vec(), b"m2".to_vec(), b"m4".to_vec()]);
        assert_eq!(outbox.status().replayed, 3);
    }

    #[test]
    fn resend_all_sends_in_flight_messages_again_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(&dir.path().join("a.log"), limits()).unwrap();
        for n in 0..3 {
            outbox.push("t", &[n]);
        }
        let first = drain(&outbox);
        outbox.complete(first[0].seq);
        outbox.resend_all();
        let again: Vec<u64> = drain(&outbox).iter().map(|item| item.seq).collect();
        assert_eq!(again, [first[1].seq, first[2].seq]);
        assert_eq!(outbox.status().replayed, 2);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let record = log::entry(1, 0, "t", &[0u8; 100]).len() as u64;
        let limits = Limits {
            max_bytes: record * 3,
            ..limits()
        };
        let (outbox, _) = Outbox::open(&dir.path().join("a.log"), limits).unwrap();
        for n in 0..5u8 {
            outbox.push("t", &[n; 100]);
        }
        let status = outbox.status();
        assert_eq!((status.depth, status.dropped), (3, 2));
        let firsts: Vec<u8> = drain(&outbox).iter().map(|item| item.payload[0]).collect();
        assert_eq!(firsts, [2, 3, 4]);
    }

    #[test]
    fn old_messages_expire() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_age: Duration::from_millis(50),
            ..limits()
        };
        let (outbox, _) = Outbox::open(&dir.path().join("a.log"), limits).unwrap();
        outbox.push("t", b"old");
        std::thread::sleep(Duration::from_millis(120));
        outbox.push("t", b"new");
        assert_eq!(drain(&outbox)[0].payload, b"new");
        assert_eq!(outbox.status().dropped, 1);
    }

    #[test]
    fn the_file_shrinks_once_everything_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let (outbox, _) = Outbox::open(&path, limits()).unwrap();
        for _ in 0..200 {
            outbox.push("t", &[7u8; 1000]);
        }
        for item in drain(&outbox) {
            outbox.complete(item.seq);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), log::HEADER_LEN);
    }

    #[test]
    fn a_second_process_is_refused_and_a_newer_format_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let first = Outbox::open(&path, limits()).unwrap();
        assert!(matches!(
            Outbox::open(&path, limits()),
            Err(OutboxError::Locked { .. })
        ));
        drop(first);
        let mut newer = log::header();
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&path, newer).unwrap();
        let error = Outbox::open(&path, limits()).err().unwrap();
        assert!(error.to_string().contains("newer Lookout"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), newer);
    }
}
