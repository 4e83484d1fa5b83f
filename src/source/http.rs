//! Frames from an HTTP snapshot URL, the way most IP cameras and NVRs expose a still picture.
//!
//! The server is not trusted: the whole exchange has a timeout, the body is read in chunks and abandoned
//! past a size cap (a misbehaving server can't fill memory), the content type must be an image, and the
//! bytes go through the same guarded decoder as files. Credentials never appear in logs: `HttpAuth`'s
//! Debug output hides them.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::{FrameSource, SourceError, SourceFuture, decode};

/// The largest snapshot body accepted.
pub(crate) const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How to authenticate to the snapshot URL.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAuth {
    Basic { user: String, password: String },
    Bearer(String),
}

impl fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpAuth::Basic { user, .. } => {
                write!(f, "Basic {{ user: {user:?}, password: <redacted> }}")
            }
            HttpAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

pub(crate) struct HttpSource {
    client: reqwest::Client,
    url: String,
    auth: Option<HttpAuth>,
}

impl HttpSource {
    pub fn new(
        url: &str,
        timeout: Duration,
        auth: Option<HttpAuth>,
    ) -> Result<HttpSource, SourceError> {
        let client = crate::https::client_builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|error| {
                SourceError::Unavailable(format!("cannot build an HTTP client: {error}"))
            })?;
        Ok(HttpSource {
            client,
            url: url.to_owned(),
            auth,
        })
    }

    async fn fetch(&self) -> Result<Vec<u8>, SourceError> {
        let mut request = self.client.get(&self.url);
        request = match &self.auth {
            Some(HttpAuth::Basic { user, password }) => request.basic_auth(user, Some(password)),
            Some(HttpAuth::Bearer(token)) => request.bearer_auth(token),
            None => request,
        };
        let unavailable = |error: reqwest::Error| SourceError::Unavailable(describe(&error));
        let mut response = request.send().await.map_err(unavailable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(SourceError::Unavailable(format!("HTTP {status}")));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !content_type.is_empty() && !content_type.starts_with("image/") {
            return Err(SourceError::BadFrame(format!(
                "the server sent {content_type}, not an image"
            )));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_BODY_BYTES as u64)
        {
            return Err(SourceError::BadFrame(format!(
                "the body is over {MAX_BODY_BYTES} bytes"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(SourceError::BadFrame(format!(
                    "the body is over {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_owned()
    } else {
        crate::errors::chain(error)
    }
}

impl FrameSource for HttpSource {
    fn next_image(&mut self) -> SourceFuture<'_> {
        Box::pin(async move {
            let body = self.fetch().await?;
            tokio::task::spawn_blocking(move || {
                decode::decode(&body).map_err(|error| SourceError::BadFrame(error.to_string()))
            })
            .await
            .map_err(|error| SourceError::BadFrame(format!("decoder failed: {error}")))?
        })
    }
}
