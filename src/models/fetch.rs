//! Downloading official SmolVLM2 exports from the Hugging Face Hub.
//!
//! Each file is asked for at the Hub's resolve endpoint (`{endpoint}/{repo}/resolve/{revision}/{path}`).
//! Its first answer, before any redirect to the CDN, says what the file must be: large (LFS) files carry
//! their SHA-256 in `X-Linked-Etag` and their size in `X-Linked-Size`; small files carry their git blob
//! SHA-1 in `ETag`. A download goes to `<file>.part` and resumes from there with a `Range` request after an
//! interruption; only a file whose checksum matches is renamed into place, so a corrupted download is never
//! used. Every fetched file's size and SHA-256 go into the folder's manifest (`super::manifest`), which
//! `lookout models verify` checks again later.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha1::Digest;

use super::manifest::{MANIFEST, Manifest, ManifestEntry, hex};

/// The files of one model variant, relative to the repository root.
pub fn variant_files(suffix: &str) -> Vec<String> {
    let mut files: Vec<String> = [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
    ]
    .iter()
    .map(|name| (*name).to_owned())
    .collect();
    for graph in ["vision_encoder", "embed_tokens", "decoder_model_merged"] {
        files.push(format!("onnx/{graph}{suffix}.onnx"));
    }
    files
}

/// Why a model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: checksum mismatch (expected {expected}, got {actual}); the download was discarded"
    )]
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },
}

/// How the Hub identifies a file's content.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Sha256(String),
    GitBlobSha1(String),
}

/// What to fetch and from where.
pub struct Fetch {
    pub endpoint: String,
    pub repo: String,
    pub revision: String,
    pub token: Option<String>,
}

/// Reports progress: (file, bytes so far, total bytes if known).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, Option<u64>);

impl Fetch {
    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{path}",
            self.endpoint.trim_end_matches('/'),
            self.repo,
            self.revision
        )
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
    ) -> reqwest::RequestBuilder {
        let request = client
            .request(method, url)
            .header("user-agent", concat!("lookout/", env!("CARGO_PKG_VERSION")));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Downloads `files` into `dir`, resuming partial downloads, verifying each, and writes the manifest.
    pub async fn run(
        &self,
        files: &[String],
        dir: &Path,
        progress: Progress<'_>,
    ) -> Result<Vec<ManifestEntry>, FetchError> {
        let http = |url: &str, reason: String| FetchError::Http {
            url: url.to_owned(),
            reason,
        };
        let metadata_client = crate::https::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(20))
            .build()
            .map_err(|error| http(&self.endpoint, error.to_string()))?;
        let download_client = crate::https::client_builder()
            .connect_timeout(std::time::Duration::from_secs(20))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|error| http(&self.endpoint, error.to_string()))?;
        let mut entries = Vec::new();
        for path in files {
            let url = self.url(path);
            let head = self
                .request(&metadata_client, reqwest::Method::HEAD, &url)
                .send()
                .await
                .map_err(|error| http(&url, crate::errors::chain(&error)))?;
            let status = head.status();
            if !(status.is_success() || status.is_redirection()) {
                return Err(http(&url, format!("HTTP {status}")));
            }
            let header = |name: &str| {
                head.headers()
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .map(|value| value.trim_matches('"').to_owned())
            };
            let expected = match (header("x-linked-etag"), header("etag")) {
                (Some(sha256), _) => Expected::Sha256(sha256),
                (None, Some(etag)) => Expected::GitBlobSha1(
                    etag.trim_start_matches("W/").trim_matches('"').to_owned(),
                ),
                (None, None) => {
                    return Err(http(
                        &url,
                        "the server gave no checksum (no X-Linked-Etag or ETag)".to_owned(),
                    ));
                }
            };
            let size = header("x-linked-size")
                .or_else(|| header("content-length"))
                .and_then(|size| size.parse::<u64>().ok());
            let location = if status.is_redirection() {
                let location = header("location")
                    .ok_or_else(|| http(&url, "a redirect without a Location".to_owned()))?;
                reqwest::Url::parse(&url)
                    .and_then(|base| base.join(&location))
                    .map_err(|error| http(&url, format!("bad redirect {location}: {error}")))?
                    .to_string()
            } else {
                url.clone()
            };
            let target = dir.join(path);
            let entry = self
                .download(
                    &download_client,
                    &location,
                    path,
                    &target,
                    &expected,
                    size,
                    progress,
                )
                .await?;
            entries.push(entry);
        }
        let manifest = Manifest {
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            files: entries.clone(),
        };
        let text = serde_json::to_string_pretty(&manifest).expect("manifests serialize");
        let manifest = dir.join(MANIFEST);
        crate::durable::write(&manifest, text.as_bytes()).map_err(|source| FetchError::Io {
            path: manifest,
            source,
        })?;
        Ok(entries)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one download's whole description; a struct would only rename it"
    )]
    async fn download(
        &self,
        client: &reqwest::Client,
        url: &str,
        path: &str,
        target: &Path,
        expected: &Expected,
        size: Option<u64>,
        progress: Progress<'_>,
    ) -> Result<ManifestEntry, FetchError> {
        let io = |path: &Path, source: std::io::Error| FetchError::Io {
            path: path.to_owned(),
            source,
        };
        let http = |reason: String| FetchError::Http {
            url: url.to_owned(),
            reason,
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|error| io(parent, error))?;
        }
        let partial = target.with_file_name(format!(
            "{}.part",
            target.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut have = std::fs::metadata(&partial)
            .map(|meta| meta.len())
            .unwrap_or(0);
        if size.is_some_and(|size| have > size) {
            have = 0;
        }
        let mut request = self.request(client, reqwest::Method::GET, url);
        if have > 0 {
            request = request.header("range", format!("bytes={have}-"));
        }
        let mut response = request
            .send()
            .await
            .map_err(|error| http(crate::errors::chain(&error)))?;
        let status = response.status();
        let append = status == reqwest::StatusCode::PARTIAL_CONTENT && have > 0;
        if !status.is_success() {
            return Err(http(format!("HTTP {status}")));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&partial)
            .map_err(|error| io(&partial, error))?;
        let mut written = if append { have } else { 0 };
        progress(path, written, size);
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(error) => {
                    return Err(http(format!(
                        "transfer interrupted after {written} bytes ({}); run again to resume",
                        crate::errors::chain(&error)
                    )));
                }
            };
            file.write_all(&chunk)
                .map_err(|error| io(&partial, error))?;
            written += chunk.len() as u64;
            progress(path, written, size);
        }
        file.sync_all().map_err(|error| io(&partial, error))?;
        drop(file);
        if size.is_some_and(|size| written < size) {
            return Err(http(format!(
                "transfer ended after {written} of {} bytes; run again to resume",
                size.unwrap_or(0)
            )));
        }
        let bytes = std::fs::read(&partial).map_err(|error| io(&partial, error))?;
        let sha256 = hex(&sha2::Sha256::digest(&bytes));
        let (wanted, actual) = match expected {
            Expected::Sha256(wanted) => (wanted.clone(), sha256.clone()),
            Expected::GitBlobSha1(wanted) => {
                let mut hasher = sha1::Sha1::new();
                hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
                hasher.update(&bytes);
                (wanted.clone(), hex(&hasher.finalize()))
            }
        };
        if !wanted.eq_ignore_ascii_case(&actual) {
            let _ = std::fs::remove_file(&partial);
            return Err(FetchError::Checksum {
                path: path.to_owned(),
                expected: wanted,
                actual,
            });
        }
        std::fs::rename(&partial, target).map_err(|error| io(target, error))?;
        Ok(ManifestEntry {
            path: path.to_owned(),
            size: bytes.len() as u64,
            sha256,
        })
    }
}
