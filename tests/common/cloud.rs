//! A real HTTP server on loopback playing the hosted model: OpenAI-compatible chat completions, with
//! replies scripted per request so tests can inject faults (statuses, `Retry-After`, slow or huge
//! bodies, HTML pages, broken JSON). It records every request it received.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Waited before the status line is written.
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub enum Body {
    Bytes(Vec<u8>),
    /// This many bytes of JSON-ish filler, streamed.
    Huge(usize),
}

impl Reply {
    /// A chat completion whose message is `text`, with the router's provenance headers.
    pub fn answer(text: &str) -> Reply {
        Reply::completion(text)
            .header("x-inference-provider", "nebius")
            .header("x-request-id", "req-42")
    }

    /// A chat completion whose message is `text` as a plain OpenAI-compatible server sends it: no
    /// provenance headers, the completion's id (`chatcmpl-1`) in the body only.
    pub fn completion(text: &str) -> Reply {
        let body = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "big-vlm",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 812, "completion_tokens": 3, "total_tokens": 815},
        });
        Reply::json(200, &body)
    }

    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::raw(status, "application/json", body.to_string().as_bytes())
    }

    pub fn raw(status: u16, content_type: &str, body: &[u8]) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: Body::Bytes(body.to_vec()),
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply::json(
            status,
            &json!({"error": {"message": format!("status {status}")}}),
        )
    }

    pub fn huge(bytes: usize) -> Reply {
        Reply {
            body: Body::Huge(bytes),
            ..Reply::raw(200, "application/json", b"")
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Value,
}

impl Received {
    /// The images of a chat completions request, decoded from their data URIs, in order.
    pub fn images(&self) -> Vec<Vec<u8>> {
        self.content()
            .iter()
            .filter_map(|part| part["image_url"]["url"].as_str())
            .map(|url| {
                let data = url.strip_prefix("data:image/jpeg;base64,").unwrap();
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap()
            })
            .collect()
    }

    /// The text sent with the images (the last part of the message).
    pub fn text(&self) -> String {
        self.content().last().unwrap()["text"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn content(&self) -> &Vec<Value> {
        self.body["messages"][0]["content"].as_array().unwrap()
    }
}

struct State {
    script: VecDeque<Reply>,
    /// Given when the script has run out.
    otherwise: Reply,
    received: Vec<Received>,
}

/// The server; it stops when dropped.
pub struct CloudServer {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl CloudServer {
    /// Serves `script` in order, then `otherwise` to every later request.
    pub async fn start(script: Vec<Reply>, otherwise: Reply) -> CloudServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            otherwise,
            received: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        CloudServer { url, state, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// An `[escalation]` section that sends every answer to this server (no budget, interval or
    /// near-duplicate suppression in the way), at most `max_images` images per request.
    pub fn escalate_everything(&self, max_images: usize) -> String {
        format!(
            r#"
[escalation]
enabled = true
mode = "always"
min_interval_secs = 0.0
duplicate_distance = -1
[escalation.budget]
per_minute = 100000
per_hour = 100000
per_day = 100000
[[escalation.endpoints]]
name = "loopback"
url = "{}"
model = "big-vlm"
token_env = ""
max_images = {max_images}
"#,
            self.url
        )
    }

    /// The next requests get `replies`, in order, then the script goes on as before. Returns the
    /// index in `received` of the request that gets the first of them.
    pub fn then(&self, replies: Vec<Reply>) -> usize {
        let mut state = self.state.lock().unwrap();
        for reply in replies.into_iter().rev() {
            state.script.push_front(reply);
        }
        state.received.len()
    }

    /// From now on, every request gets `reply`.
    pub fn set_otherwise(&self, reply: Reply) {
        let mut state = self.state.lock().unwrap();
        state.script.clear();
        state.otherwise = reply;
    }
}

impl Drop for CloudServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    let Some((path, headers, body)) = read_request(&mut socket).await else {
        return;
    };
    let reply = {
        let mut state = state.lock().unwrap();
        state.received.push(Received {
            at: Instant::now(),
            path,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        let next = state.script.pop_front();
        next.unwrap_or_else(|| state.otherwise.clone())
    };
    tokio::time::sleep(reply.delay).await;
    let length = match &reply.body {
        Body::Bytes(bytes) => bytes.len(),
        Body::Huge(size) => *size,
    };
    let mut head = format!("HTTP/1.1 {} Whatever\r\n", reply.status);
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {length}\r\nconnection: close\r\n\r\n"
    ));
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    match reply.body {
        Body::Bytes(bytes) => {
            let _ = socket.write_all(&bytes).await;
        }
        Body::Huge(size) => {
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < size {
                let n = chunk.len().min(size - sent);
                if socket.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                sent += n;
            }
        }
    }
    let _ = socket.shutdown().await;
}

/// The path, lower-cased headers and body of one HTTP/1.1 request with a Content-Length.
async fn read_request(
    socket: &mut TcpStream,
) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some((path, headers, body))
}
