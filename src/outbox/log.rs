//! The outbox's file format: a header, then records, each framed so that a damaged one can be skipped.
//!
//! ```text
//! header  "LKOUTBOX" (8 bytes) | format version u32 | reserved u32            (all integers little-endian)
//! record  mark u32 | body length u32 | CRC-32 of the body u32 | body
//! body    kind u8, then
//!           ENTRY: seq u64 | created (ms since the Unix epoch) u64 | key length u16 | key | payload
//!           DONE:  seq u64                      (the entry was acknowledged or dropped)
//! ```
//!
//! Reading never trusts a length or a kind it has not checked against the CRC. After a bad record (a torn
//! tail after a power cut, flipped bits, a truncated copy) the reader looks for the next mark that starts
//! a record with a valid CRC and carries on from there, so damage costs the records it touches and no
//! others.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub(crate) const MAGIC: &[u8; 8] = b"LKOUTBOX";
/// The format this build writes and reads. A file with a higher version was written by a newer Lookout.
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: u64 = 16;
const MARK: u32 = 0x5EC0_0B0C;
const FRAME_LEN: u64 = 12;
/// No body is this large (answers are kilobytes); a larger length is damage, not data.
pub(crate) const MAX_BODY: u32 = 16 << 20;
const ENTRY: u8 = 1;
const DONE: u8 = 2;

pub fn header() -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// What the header says about a file.
#[derive(Debug, PartialEq)]
pub(crate) enum Header {
    Ours,
    Newer(u32),
    Foreign,
}

pub(crate) fn read_header(bytes: &[u8]) -> Header {
    if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
        return Header::Foreign;
    }
    match u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) {
        VERSION => Header::Ours,
        0 => Header::Foreign,
        newer if newer > VERSION => Header::Newer(newer),
        _ => Header::Foreign,
    }
}

/// One decoded record.
#[derive(Debug, PartialEq)]
pub(crate) enum Record {
    Entry {
        seq: u64,
        created_ms: u64,
        key: String,
        /// Where the payload sits in the file, and how long it is.
        payload_at: u64,
        payload_len: u32,
    },
    Done {
        seq: u64,
    },
}

pub fn entry(seq: u64, created_ms: u64, key: &str, payload: &[u8]) -> Vec<u8> {
    let key_len = u16::try_from(key.len()).expect("keys are topic names, far below 64 KiB");
    let mut body = Vec::with_capacity(19 + key.len() + payload.len());
    body.push(ENTRY);
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&created_ms.to_le_bytes());
    body.extend_from_slice(&key_len.to_le_bytes());
    body.extend_from_slice(key.as_bytes());
    body.extend_from_slice(payload);
    frame(body)
}

pub fn done(seq: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(9);
    body.push(DONE);
    body.extend_from_slice(&seq.to_le_bytes());
    frame(body)
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut record = Vec::with_capacity(FRAME_LEN as usize + body.len());
    record.extend_from_slice(&MARK.to_le_bytes());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    record.extend_from_slice(&body);
    record
}

/// Where an entry's payload starts inside its record.
fn payload_offset(key_len: usize) -> u64 {
    FRAME_LEN + 19 + key_len as u64
}

/// Decodes the record at `at`, or `None` if what is there is not a whole, intact record.
fn record_at(file: &File, at: u64, file_len: u64) -> io::Result<Option<(Record, u64)>> {
    if at + FRAME_LEN > file_len {
        return Ok(None);
    }
    let mut frame = [0u8; FRAME_LEN as usize];
    file.read_exact_at(&mut frame, at)?;
    let word = |index: usize| u32::from_le_bytes(frame[index..index + 4].try_into().expect("4"));
    let (mark, len, crc) = (word(0), word(4), word(8));
    if mark != MARK || len > MAX_BODY || at + FRAME_LEN + u64::from(len) > file_len {
        return Ok(None);
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, at + FRAME_LEN)?;
    if crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    let next = at + FRAME_LEN + u64::from(len);
    let u64_at = |index: usize| {
        body.get(index..index + 8)
            .map(|bytes| u64::from_le_bytes(bytes.try_into().expect("8")))
    };
    let record = match body.first() {
        Some(&ENTRY) if body.len() >= 19 => {
            let key_len = usize::from(u16::from_le_bytes([body[17], body[18]]));
            let Some(key) = body.get(19..19 + key_len) else {
                return Ok(None);
            };
            let Ok(key) = String::from_utf8(key.to_vec()) else {
                return Ok(None);
            };
            Record::Entry {
                seq: u64_at(1).expect("checked length"),
                created_ms: u64_at(9).expect("checked length"),
                key,
                payload_at: at + payload_offset(key_len),
                payload_len: len - 19 - key_len as u32,
            }
        }
        Some(&DONE) if body.len() == 9 => Record::Done {
            seq: u64_at(1).expect("checked length"),
        },
        _ => return Ok(None),
    };
    Ok(Some((record, next)))
}

/// Everything readable in a file, and how much of it was not.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub records: Vec<Record>,
    /// Bytes that belonged to no intact record.
    pub damaged_bytes: u64,
}

/// Reads every intact record after the header, skipping damaged stretches.
pub fn scan(file: &File) -> io::Result<Scan> {
    let file_len = file.metadata()?.len();
    let mut scan = Scan::default();
    let mut at = HEADER_LEN;
    while at < file_len {
        match record_at(file, at, file_len)? {
            Some((record, next)) => {
                scan.records.push(record);
                at = next;
            }
            None => {
                let resume = next_record(file, at + 1, file_len)?;
                scan.damaged_bytes += resume - at;
                at = resume;
            }
        }
    }
    Ok(scan)
}

/// The offset of the next intact record at or after `from`, or the end of the file.
fn next_record(file: &File, from: u64, file_len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mark = MARK.to_le_bytes();
    let mut start = from;
    while start + 4 <= file_len {
        // Overlap chunks by three bytes so a mark split across two reads is still seen.
        let len = CHUNK.min(file_len - start) as usize;
        let mut chunk = vec![0u8; len];
        file.read_exact_at(&mut chunk, start)?;
        for offset in chunk
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == mark)
            .map(|(i, _)| i)
        {
            let candidate = start + offset as u64;
            if record_at(file, candidate, file_len)?.is_some() {
                return Ok(candidate);
            }
        }
        if start + len as u64 >= file_len {
            break;
        }
        start += len as u64 - 3;
    }
    Ok(file_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(parts: &[&[u8]]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&header()).unwrap();
        for part in parts {
            file.write_all(part).unwrap();
        }
        file
    }

    #[test]
    fn records_round_trip() {
        let file = file_with(&[&entry(7, 1234, "a/b", b"payload"), &done(7)]);
        let scan = scan(&file).unwrap();
        assert_eq!(scan.damaged_bytes, 0);
        let Record::Entry {
            seq,
            created_ms,
            key,
            payload_at,
            payload_len,
        } = &scan.records[0]
        else {
            panic!("{:?}", scan.records)
        };
        assert_eq!((*seq, *created_ms, key.as_str()), (7, 1234, "a/b"));
        let mut payload = vec![0u8; *payload_len as usize];
        file.read_exact_at(&mut payload, *payload_at).unwrap();
        assert_eq!(payload, b"payload");
        assert_eq!(scan.records[1], Record::Done { seq: 7 });
    }

    #[test]
    fn damage_costs_only_the_records_it_touches() {
        let mut second = entry(2, 0, "k", b"two");
        let last = second.len() - 1;
        second[last] ^= 0xff;
        let torn = entry(4, 0, "k", b"four");
        let file = file_with(&[
            &entry(1, 0, "k", b"one"),
            &second,
            b"garbage",
            &entry(3, 0, "k", b"three"),
            &torn[..torn.len() - 2],
        ]);
        let scan = scan(&file).unwrap();
        let seqs: Vec<u64> = scan
            .records
            .iter()
            .map(|record| match record {
                Record::Entry { seq, .. } | Record::Done { seq } => *seq,
            })
            .collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(
            scan.damaged_bytes,
            (second.len() + 7 + torn.len() - 2) as u64
        );
    }

    #[test]
    fn headers_tell_ours_from_newer_and_foreign() {
        assert_eq!(read_header(&header()), Header::Ours);
        let mut newer = header();
        newer[8..12].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(read_header(&newer), Header::Newer(9));
        assert_eq!(read_header(b"LKOUT"), Header::Foreign);
        assert_eq!(read_header(&[0u8; 16]), Header::Foreign);
    }
}
