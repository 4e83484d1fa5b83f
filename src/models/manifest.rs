//! `lookout-manifest.json`: the size and SHA-256 of every file a fetch wrote, kept beside them, so that
//! a model folder can be checked again long after it was fetched (a disk or a copy can corrupt files
//! too, and the Hub's own checksums are not at hand offline).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha1::Digest;

pub(crate) const MANIFEST: &str = "lookout-manifest.json";

/// One fetched file in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// What `fetch` writes and `verify` reads.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) repo: String,
    pub(super) revision: String,
    pub(super) files: Vec<ManifestEntry>,
}

/// Why a folder's manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// Checks every file the manifest in `dir` lists; returns the problems (empty when all is well).
pub fn verify(dir: &Path) -> Result<Vec<String>, VerifyError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|source| VerifyError::Read {
        path: path.clone(),
        source,
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|error| VerifyError::Parse {
        path,
        reason: error.to_string(),
    })?;
    let mut problems = Vec::new();
    for entry in &manifest.files {
        match std::fs::read(dir.join(&entry.path)) {
            Err(error) => problems.push(format!("{}: {error}", entry.path)),
            Ok(bytes) if bytes.len() as u64 != entry.size => problems.push(format!(
                "{}: {} bytes, expected {}",
                entry.path,
                bytes.len(),
                entry.size
            )),
            Ok(bytes) => {
                let sha256 = hex(&sha2::Sha256::digest(&bytes));
                if sha256 != entry.sha256 {
                    problems.push(format!(
                        "{}: SHA-256 {sha256}, expected {}",
                        entry.path, entry.sha256
                    ));
                }
            }
        }
    }
    Ok(problems)
}

/// Lower-case hexadecimal, as the Hub and the manifest write digests.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with two files and the manifest a fetch of them writes.
    fn fetched() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let files = [("config.json", &b"{}"[..]), ("onnx/graph.onnx", b"weights")];
        let mut entries = Vec::new();
        for (path, bytes) in files {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, bytes).unwrap();
            entries.push(ManifestEntry {
                path: path.to_owned(),
                size: bytes.len() as u64,
                sha256: hex(&sha2::Sha256::digest(bytes)),
            });
        }
        let manifest = Manifest {
            repo: "owner/model".to_owned(),
            revision: "main".to_owned(),
            files: entries,
        };
        std::fs::write(
            dir.path().join(MANIFEST),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
        dir
    }

    #[test]
    fn an_intact_folder_has_no_problems() {
        assert_eq!(verify(fetched().path()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn every_changed_or_missing_file_is_a_problem() {
        let dir = fetched();
        std::fs::write(dir.path().join("config.json"), b"{ }").unwrap();
        std::fs::write(dir.path().join("onnx/graph.onnx"), b"weightz").unwrap();
        let problems = verify(dir.path()).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0], "config.json: 3 bytes, expected 2");
        assert!(
            problems[1].starts_with("onnx/graph.onnx: SHA-256 ")
                && problems[1].ends_with(&format!(
                    ", expected {}",
                    hex(&sha2::Sha256::digest(b"weights"))
                )),
            "{}",
            problems[1]
        );
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        let problems = verify(dir.path()).unwrap();
        assert!(problems[0].starts_with("config.json: "), "{problems:?}");
    }

    #[test]
    fn a_folder_without_a_manifest_or_with_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            verify(dir.path()),
            Err(VerifyError::Read { path, .. }) if path == dir.path().join(MANIFEST)
        ));
        std::fs::write(dir.path().join(MANIFEST), b"{").unwrap();
        assert!(matches!(
            verify(dir.path()),
            Err(VerifyError::Parse { path, .. }) if path == dir.path().join(MANIFEST)
        ));
    }
}
