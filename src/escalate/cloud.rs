//! The cloud client: OpenAI-compatible chat completions (the Hugging Face router, or any server that
//! speaks the same API), tried endpoint by endpoint with retries, backoff and a breaker each.
//!
//! Failures are classified as Vector's HTTP sinks do: 408, 429, 5xx except 501, network errors and
//! timeouts may pass, so they are retried with full-jitter backoff (or after the server's
//! `Retry-After`, seconds or HTTP-date); anything else (400, 401, 403, 404, 422, a reply that is not
//! an answer) will not pass by retrying and moves on to the next endpoint at once. A `Retry-After` is
//! kept by the endpoint (`breaker.rs`), not by the call that read it: no caller sends to it before it
//! has passed, and every request, retries included, looks at the breaker again first. Every escalation
//! has an overall deadline, retries and failover included. Replies are read up to a byte limit, so a
//! misbehaving server cannot make the daemon buffer without bound.
//!
//! Tokens are read when a request is made (the cloud tier is lazy: the daemon starts with no token
//! and no internet), from a file or the environment, and are never logged or published.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use image::RgbImage;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use super::breaker::{Breaker, Shut};
use super::config::{EndpointConfig, EscalationConfig, ImageConfig};
use crate::backoff::Backoff;
use crate::env::Env;
use crate::message::AnswerKind;
use crate::message::Usage;
use crate::stats::Stats;

/// What the cloud is asked: a question of a kind about JPEG images, in order (one frame, or a clip's
/// frames oldest first).
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub text: &'a str,
    pub kind: &'a AnswerKind,
    pub jpegs: &'a [Vec<u8>],
}

/// A cloud answer, parsed into the question's kind, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudAnswer {
    pub answer: String,
    pub endpoint: String,
    pub model: String,
    /// The provider the router chose (`x-inference-provider`).
    pub provider: Option<String>,
    pub request_id: Option<String>,
    pub usage: Option<Usage>,
    pub latency: Duration,
    /// Which of the question's images were sent (all, or the endpoint's `max_images` spread evenly),
    /// in order.
    pub sent: Vec<usize>,
    /// The text sent with them.
    pub prompt: String,
}

/// Why no endpoint answered; each string names an endpoint and what it did.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CloudError {
    /// Something may pass (network, 429, 5xx, timeouts, open breakers): worth queueing.
    #[error("no endpoint reachable: {}", .0.join("; "))]
    Unreachable(Vec<String>),
    /// Every endpoint refused or answered something unusable.
    #[error("no endpoint answered: {}", .0.join("; "))]
    Failed(Vec<String>),
}

/// One failed request.
#[derive(Debug)]
enum Attempt {
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will not pass by retrying; `status` when the server refused with one.
    Permanent {
        message: String,
        status: Option<StatusCode>,
    },
}

struct Endpoint {
    config: EndpointConfig,
    breaker: Mutex<Breaker>,
}

/// The endpoints of a config, with their breakers. Cheap to share: one `reqwest::Client` inside.
pub struct Cloud {
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    env: Env,
    request_timeout: Duration,
    deadline: Duration,
    retries: u32,
    max_reply_bytes: u64,
    max_tokens: u32,
    stats: Arc<Stats>,
}

impl Cloud {
    pub fn new(config: &EscalationConfig, env: Env, stats: Arc<Stats>) -> Cloud {
        let http = crate::https::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("lookout/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default TLS settings builds");
        let cooldown = Duration::from_secs_f64(config.breaker_cooldown_secs);
        let cloud = Cloud {
            http,
            endpoints: config
                .endpoints
                .iter()
                .map(|endpoint| Endpoint {
                    config: endpoint.clone(),
                    breaker: Mutex::new(Breaker::new(config.breaker_failures, cooldown)),
                })
                .collect(),
            env,
            request_timeout: Duration::from_secs_f64(config.request_timeout_secs),
            deadline: Duration::from_secs_f64(config.deadline_secs),
            retries: config.retries,
            max_reply_bytes: config.max_reply_bytes,
            max_tokens: config.max_tokens,
            stats,
        };
        cloud.report_breakers();
        cloud
    }

    /// Asks each endpoint in order until one answers, within the overall deadline. Before every
    /// request, retries included, the endpoint's breaker and `Retry-After` are looked at again: an
    /// endpoint that is shut is skipped, except that a retry waits out a `Retry-After` that ends
    /// within the deadline. `on_billed` is called once, when the first request that may have been
    /// billed ends: one the server answered with success (an answer or not), or one given up after
    /// it was sent (a timeout). A request that never reached a server, or that the server turned
    /// away with an error status (429, 503, 401...), served nothing and is not billed.
    pub async fn ask(
        &self,
        question: Question<'_>,
        on_billed: impl FnOnce() + Send,
    ) -> Result<CloudAnswer, CloudError> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        let images: Vec<String> = question
            .jpegs
            .iter()
            .map(|jpeg| {
                format!(
                    "data:image/jpeg;base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(jpeg)
                )
            })
            .collect();
        let mut on_billed = Some(on_billed);
        let mut billed = || {
            if let Some(on_billed) = on_billed.take() {
                on_billed();
            }
        };
        let mut failures = Vec::new();
        let mut transient = false;
        for endpoint in &self.endpoints {
            let name = &endpoint.config.name;
            // A missing token is the box's own problem, not the endpoint's: its breaker is left alone.
            let token = match self.token(&endpoint.config) {
                Ok(token) => token,
                Err(message) => {
                    failures.push(format!("{name}: {message}"));
                    continue;
                }
            };
            let sent = evenly(images.len(), endpoint.config.max_images);
            let prompt = phrase(question.text, question.kind, sent.len());
            let mut content: Vec<serde_json::Value> = sent
                .iter()
                .map(|index| json!({"type": "image_url", "image_url": {"url": images[*index]}}))
                .collect();
            content.push(json!({"type": "text", "text": prompt}));
            let body = json!({
                "model": endpoint.config.model,
                "messages": [{
                    "role": "user",
                    "content": content,
                }],
                "max_tokens": self.max_tokens,
                "temperature": 0,
                "stream": false,
            });
            let mut backoff = Backoff::new();
            for attempt in 0..=self.retries {
                if let Err(shut) = self.wait_turn(endpoint, attempt > 0, deadline).await {
                    transient |= !matches!(shut, Shut::Refusing(_));
                    failures.push(format!("{name}: {}", shut_reason(&shut)));
                    break;
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    failures.push(format!("{name}: out of time"));
                    transient = true;
                    break;
                }
                let started = Instant::now();
                let limit = self.request_timeout.min(deadline - now);
                let request = self.request(endpoint, token.as_deref(), &body);
                let result = match tokio::time::timeout(limit, request).await {
                    Ok(result) => result,
                    Err(_) => {
                        billed();
                        Err(Attempt::Retryable {
                            message: format!("no reply within {:.1} s", limit.as_secs_f64()),
                            retry_after: None,
                        })
                    }
                };
                if matches!(result, Ok(_) | Err(Attempt::Permanent { status: None, .. })) {
                    billed();
                }
                match result {
                    Ok(reply) => match parse_answer(&reply.text, question.kind) {
                        Ok(answer) => {
                            endpoint.breaker.lock().unwrap().succeeded();
                            self.report_breakers();
                            return Ok(CloudAnswer {
                                answer,
                                endpoint: name.clone(),
                                model: reply.model.unwrap_or_else(|| endpoint.config.model.clone()),
                                provider: reply.provider,
                                request_id: reply.request_id,
                                usage: reply.usage,
                                latency: started.elapsed(),
                                sent,
                                prompt,
                            });
                        }
                        Err(message) => {
                            self.failed(endpoint, Some("unusable replies".to_owned()));
                            failures.push(format!("{name}: {message}"));
                            break;
                        }
                    },
                    Err(Attempt::Permanent { message, status }) => {
                        let refusal = match status {
                            Some(status) => {
                                self.stats.count_refusal(name, status.as_u16());
                                format!("HTTP {}", status.as_u16())
                            }
                            None => "unusable replies".to_owned(),
                        };
                        self.failed(endpoint, Some(refusal));
                        warn!(endpoint = %name, error = %message, "The cloud refused an escalation.");
                        failures.push(format!("{name}: {message}"));
                        break;
                    }
                    Err(Attempt::Retryable {
                        message,
                        retry_after,
                    }) => {
                        if let Some(wait) = retry_after {
                            // A promise to the endpoint, kept by every lane and the replayer.
                            endpoint
                                .breaker
                                .lock()
                                .unwrap()
                                .retry_after(Instant::now() + wait);
                        }
                        let opened = self.failed(endpoint, None);
                        debug!(endpoint = %name, attempt, error = %message, "Cloud request failed.");
                        transient = true;
                        let delay = retry_after.unwrap_or_else(|| backoff.next_delay());
                        let out_of_time = tokio::time::Instant::now() + delay >= deadline;
                        if opened || attempt == self.retries || out_of_time {
                            failures.push(format!("{name}: {message}"));
                            break;
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        Err(if transient {
            CloudError::Unreachable(failures)
        } else {
            CloudError::Failed(failures)
        })
    }

    /// Waits until a request may go to `endpoint`: at once, or, for a retry, after a `Retry-After`
    /// that ends before the deadline. Otherwise says why the endpoint is shut.
    async fn wait_turn(
        &self,
        endpoint: &Endpoint,
        retrying: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(), Shut> {
        loop {
            let allowed = endpoint.breaker.lock().unwrap().allow(Instant::now());
            match allowed {
                Ok(()) => {
                    self.report_breakers();
                    return Ok(());
                }
                Err(Shut::RetryAfter(until))
                    if retrying && tokio::time::Instant::from_std(until) < deadline =>
                {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
                }
                Err(shut) => return Err(shut),
            }
        }
    }

    /// Counts a failure against the endpoint's breaker, with the refusal when it was one; true when
    /// it opened.
    fn failed(&self, endpoint: &Endpoint, refusal: Option<String>) -> bool {
        let opened = endpoint
            .breaker
            .lock()
            .unwrap()
            .failed(Instant::now(), refusal);
        if opened {
            warn!(endpoint = %endpoint.config.name, "Cloud endpoint failing; leaving it alone for a while.");
        }
        self.report_breakers();
        opened
    }

    fn report_breakers(&self) {
        let states = self
            .endpoints
            .iter()
            .map(|endpoint| {
                (
                    endpoint.config.name.clone(),
                    endpoint.breaker.lock().unwrap().state_name(),
                )
            })
            .collect();
        *self.stats.breakers.lock().unwrap() = states;
    }

    /// One request to one endpoint, its reply read up to the byte limit.
    async fn request(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Reply, Attempt> {
        let url = format!(
            "{}/chat/completions",
            endpoint.config.url.trim_end_matches('/')
        );
        let mut request = self.http.post(url).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(bill_to) = &endpoint.config.bill_to {
            request = request.header("X-HF-Bill-To", bill_to);
        }
        let mut response = request.send().await.map_err(|error| Attempt::Retryable {
            message: crate::errors::chain(&error),
            retry_after: None,
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| Attempt::Retryable {
            message: crate::errors::chain(&error),
            retry_after: None,
        })? {
            if (bytes.len() + chunk.len()) as u64 > self.max_reply_bytes {
                return Err(Attempt::Permanent {
                    message: format!(
                        "HTTP {}: reply larger than {} bytes",
                        status.as_u16(),
                        self.max_reply_bytes
                    ),
                    status: None,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let message = format!("HTTP {}: {}", status.as_u16(), error_text(&bytes));
            return Err(if is_retryable(status) {
                Attempt::Retryable {
                    message,
                    retry_after: retry_after(&headers, SystemTime::now()),
                }
            } else {
                Attempt::Permanent {
                    message,
                    status: Some(status),
                }
            });
        }
        let unusable = |message: String| Attempt::Permanent {
            message,
            status: None,
        };
        let completion: Completion = serde_json::from_slice(&bytes).map_err(|error| {
            unusable(format!("the reply is not a chat completion: {}", {
                if looks_like_html(&bytes) {
                    "an HTML page".to_owned()
                } else {
                    error.to_string()
                }
            }))
        })?;
        let text = completion
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| unusable("the reply has no choices".to_owned()))?
            .message
            .content
            .filter(|text| !text.trim().is_empty())
            .ok_or_else(|| unusable("the reply's message is empty".to_owned()))?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        Ok(Reply {
            text,
            model: completion.model,
            provider: header("x-inference-provider"),
            request_id: REQUEST_ID_HEADERS
                .iter()
                .find_map(|name| header(name))
                .or(completion.id),
            usage: completion.usage,
        })
    }

    /// The endpoint's token: from its file, else the environment (the variable, the file
    /// `<VAR>_FILE` names, the systemd credential). `None` when the endpoint sends none.
    fn token(&self, endpoint: &EndpointConfig) -> Result<Option<String>, String> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map(|token| token.trim().to_owned())
                // A file replaced since the config was loaded holds a token the process must hide too.
                .inspect(|token| crate::errors::hold_secret(token))
                .map_err(|error| format!("cannot read the token file {}: {error}", path.display()))
        };
        if let Some(file) = &endpoint.token_file {
            return read(file).map(Some);
        }
        let var = &endpoint.token_env;
        if var.is_empty() {
            return Ok(None);
        }
        if let Some(token) = self.env.get(var).filter(|token| !token.is_empty()) {
            return Ok(Some(token.trim().to_owned()));
        }
        if let Some(file) = self.env.get(&format!("{var}_FILE")) {
            return read(Path::new(file)).map(Some);
        }
        // The unit always loads the credential; an empty one (install.sh's placeholder) is no token.
        if let Some(credentials) = self.env.get("CREDENTIALS_DIRECTORY") {
            let file = Path::new(credentials).join(var.to_ascii_lowercase());
            if file.is_file() {
                let token = read(&file)?;
                if !token.is_empty() {
                    return Ok(Some(token));
                }
            }
        }
        Err(format!(
            "no token: set {var}, {var}_FILE or the systemd credential {}",
            var.to_ascii_lowercase()
        ))
    }
}

/// A successful reply, before its text is parsed into the question's kind.
struct Reply {
    text: String,
    model: Option<String>,
    provider: Option<String>,
    request_id: Option<String>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Completion {
    /// The completion's id (`chatcmpl-...`): the request id of servers that send no header for it.
    id: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    model: Option<String>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

/// Headers that name a request, in order of preference: the router's and OpenAI's, Anthropic-style
/// servers', LiteLLM's call id. Without any, the completion's `id` names it.
const REQUEST_ID_HEADERS: [&str; 3] = ["x-request-id", "request-id", "x-litellm-call-id"];

/// Why a shut endpoint was skipped, for the escalation's error.
fn shut_reason(shut: &Shut) -> String {
    match shut {
        Shut::RetryAfter(until) => format!(
            "asked for no request for another {:.1} s (Retry-After)",
            until
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
        ),
        Shut::CoolingDown => "cooling down after repeated failures".to_owned(),
        Shut::Refusing(refusal) => {
            format!("left alone after refusals (last: {refusal})")
        }
    }
}

fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// `Retry-After` as a delay: seconds, or an HTTP-date (a date in the past means now).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

fn looks_like_html(bytes: &[u8]) -> bool {
    let start = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).to_ascii_lowercase();
    start.trim_start().starts_with("<!doctype html") || start.contains("<html")
}

/// What an error reply says, short: an OpenAI-style `error.message`, else the start of the text.
fn error_text(bytes: &[u8]) -> String {
    if looks_like_html(bytes) {
        return "an HTML error page".to_owned();
    }
    let value: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
    let message = value.as_ref().and_then(|value| {
        value["error"]["message"]
            .as_str()
            .or_else(|| value["error"].as_str())
            .or_else(|| value["message"].as_str())
    });
    let text = match message {
        Some(message) => message.to_owned(),
        None => String::from_utf8_lossy(bytes).into_owned(),
    };
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    let text = crate::errors::excerpt(&text, 200);
    if text.is_empty() {
        "(no message)".to_owned()
    } else {
        text
    }
}

/// The question as the cloud model is asked it about `images` images: several are said to be a video's
/// frames in order, and the kind's expected form is spelled out.
pub(crate) fn phrase(question: &str, kind: &AnswerKind, images: usize) -> String {
    let question = if images > 1 {
        format!("The {images} images are frames of a video, oldest first.\n{question}")
    } else {
        question.to_owned()
    };
    match kind {
        AnswerKind::Text => question,
        AnswerKind::YesNo => format!("{question}\nAnswer with one word: yes or no."),
        AnswerKind::OneOf(labels) => format!(
            "{question}\nAnswer with exactly one of these options and nothing else: {}.",
            labels.join(", ")
        ),
    }
}

/// The indices of at most `cap` of `count` items, spread evenly from the first to the last.
fn evenly(count: usize, cap: usize) -> Vec<usize> {
    if count <= cap {
        return (0..count).collect();
    }
    if cap <= 1 {
        return count.checked_sub(1).into_iter().collect();
    }
    let last = count - 1;
    (0..cap).map(|index| index * last / (cap - 1)).collect()
}

/// The reply's text as an answer of `kind`: `yes`/`no`, one of the labels, or the text itself.
pub(crate) fn parse_answer(text: &str, kind: &AnswerKind) -> Result<String, String> {
    let words = || {
        text.split(|c: char| !c.is_alphanumeric() && c != '-' && c != '_')
            .filter(|word| !word.is_empty())
            .map(str::to_lowercase)
    };
    let quoted = || crate::errors::excerpt(text, 80);
    match kind {
        AnswerKind::Text => Ok(text.trim().to_owned()),
        AnswerKind::YesNo => match words().next().as_deref() {
            Some("yes") => Ok("yes".to_owned()),
            Some("no") => Ok("no".to_owned()),
            _ => Err(format!("the reply is not yes or no: {:?}", quoted())),
        },
        AnswerKind::OneOf(labels) => {
            let normalised = text
                .trim()
                .trim_end_matches(['.', '!'])
                .trim_matches(['"', '\'', '`', '*'])
                .to_lowercase();
            if let Some(label) = labels
                .iter()
                .find(|label| label.to_lowercase() == normalised)
            {
                return Ok(label.clone());
            }
            let said: Vec<String> = words().collect();
            let mentioned: Vec<&String> = labels
                .iter()
                .filter(|label| {
                    let label = label.to_lowercase();
                    said.contains(&label) || (label.contains(' ') && normalised.contains(&label))
                })
                .collect();
            match mentioned.as_slice() {
                [label] => Ok((*label).clone()),
                _ => Err(format!(
                    "the reply is not one of {}: {:?}",
                    labels.join(", "),
                    quoted()
                )),
            }
        }
    }
}

/// The frame as it leaves the box: downscaled to the camera's longest side, JPEG at its quality.
pub(crate) fn encode_frame(image: &RgbImage, settings: ImageConfig) -> Vec<u8> {
    let (width, height) = image.dimensions();
    let longest = width.max(height);
    let resized;
    let image = if longest > settings.longest_side {
        let scale = f64::from(settings.longest_side) / f64::from(longest);
        let size = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
        resized = image::imageops::resize(
            image,
            size(width),
            size(height),
            image::imageops::FilterType::Triangle,
        );
        &resized
    } else {
        image
    };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, settings.jpeg_quality)
        .encode_image(image)
        .expect("encoding an RGB image to memory cannot fail");
    jpeg
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retryable_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 422, 501] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&earlier).unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn replies_parse_into_the_kind() {
        let yes_no = AnswerKind::YesNo;
        assert_eq!(parse_answer("Yes.", &yes_no).unwrap(), "yes");
        assert_eq!(parse_answer("no, the door is shut", &yes_no).unwrap(), "no");
        assert!(parse_answer("Maybe", &yes_no).is_err());
        let one_of = AnswerKind::OneOf(vec!["car".into(), "truck".into(), "fire engine".into()]);
        assert_eq!(parse_answer("Truck.", &one_of).unwrap(), "truck");
        assert_eq!(parse_answer("It is a car.", &one_of).unwrap(), "car");
        assert_eq!(
            parse_answer("A red fire engine", &one_of).unwrap(),
            "fire engine"
        );
        assert!(parse_answer("a car or a truck", &one_of).is_err());
        assert!(parse_answer("a bicycle", &one_of).is_err());
        assert_eq!(
            parse_answer("  A cat.\n", &AnswerKind::Text).unwrap(),
            "A cat."
        );
    }

    #[test]
    fn error_text_is_short_and_never_html() {
        assert_eq!(
            error_text(br#"{"error":{"message":"Invalid credentials"}}"#),
            "Invalid credentials"
        );
        assert_eq!(
            error_text(b"<!DOCTYPE html><html><body>Bad gateway</body></html>"),
            "an HTML error page"
        );
        assert_eq!(error_text(&[b'x'; 5000]).len(), 200);
    }

    #[test]
    fn frames_are_downscaled_to_the_longest_side() {
        let image = RgbImage::from_pixel(1600, 900, image::Rgb([10, 20, 30]));
        let jpeg = encode_frame(
            &image,
            ImageConfig {
                longest_side: 800,
                jpeg_quality: 70,
            },
        );
        let decoded = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (800, 450));
    }
}
