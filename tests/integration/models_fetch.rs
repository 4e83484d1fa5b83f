//! `lookout models fetch` and `verify` against a local HTTP server that behaves like the Hugging Face
//! Hub's resolve endpoint: small files answered directly with their git blob SHA-1 as ETag, large (LFS)
//! files redirected to a CDN path with their SHA-256 in X-Linked-Etag, byte ranges honoured. Faults are
//! injected: a transfer cut in the middle (the next run resumes it), and a file whose bytes do not match
//! its checksum (refused and not kept). The fetched folder then answers a question. `lookout run` in a
//! fresh folder fetches the default model the same way and runs; offline, or under a service manager,
//! it says what to do and exits 69.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use lookout::models::build::CHECKPOINT_FILE;
use sha1::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const REPO: &str = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro")
}

#[derive(Default)]
struct Faults {
    /// Paths whose next CDN transfer stops after half the body.
    cut_once: Vec<String>,
    /// Paths served with one byte flipped.
    corrupt: Vec<String>,
    /// Range headers seen, by path.
    ranges: Vec<(String, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn hub(files: HashMap<String, Vec<u8>>, faults: Arc<Mutex<Faults>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let files = Arc::new(files);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (files, faults) = (files.clone(), faults.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let read = socket.read(&mut buffer).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buffer[..read]).into_owned();
                let mut words = request.split_whitespace();
                let (method, target) = (
                    words.next().unwrap_or(""),
                    words.next().unwrap_or("").to_owned(),
                );
                let range = request
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("range: bytes=")
                            .map(str::to_owned)
                    })
                    .and_then(|range| range.trim_end_matches('-').parse::<usize>().ok());
                let resolve = format!("/{REPO}/resolve/main/");
                let response: Vec<u8> = if let Some(path) = target.strip_prefix(&resolve) {
                    match files.get(path) {
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                        Some(bytes) if path.ends_with(".onnx") => format!(
                            "HTTP/1.1 302 Found\r\nLocation: /cdn/{path}\r\nX-Linked-Etag: \"{}\"\r\nX-Linked-Size: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            hex(&sha2::Sha256::digest(bytes)),
                            bytes.len()
                        )
                        .into_bytes(),
                        Some(bytes) => {
                            let mut sha1 = sha1::Sha1::new();
                            sha1.update(format!("blob {}\0", bytes.len()).as_bytes());
                            sha1.update(bytes);
                            let mut response = format!(
                                "HTTP/1.1 200 OK\r\nETag: \"{}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                hex(&sha1.finalize()),
                                bytes.len()
                            )
                            .into_bytes();
                            if method == "GET" {
                                response.extend_from_slice(bytes);
                            }
                            response
                        }
                    }
                } else if let Some(path) = target.strip_prefix("/cdn/") {
                    let mut bytes = files[path].clone();
                    let mut faults = faults.lock().unwrap();
                    if faults.corrupt.iter().any(|p| p == path) {
                        bytes[100] ^= 0xff;
                    }
                    if let Some(start) = range {
                        faults.ranges.push((path.to_owned(), format!("{start}-")));
                    }
                    let start = range.unwrap_or(0).min(bytes.len());
                    let body = &bytes[start..];
                    let head = if range.is_some() {
                        format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            bytes.len() - 1,
                            bytes.len(),
                            body.len()
                        )
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                    };
                    let mut response = head.into_bytes();
                    if let Some(at) = faults.cut_once.iter().position(|p| p == path) {
                        faults.cut_once.remove(at);
                        response.extend_from_slice(&body[..body.len() / 2]);
                    } else {
                        response.extend_from_slice(body);
                    }
                    response
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec()
                };
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{address}")
}

/// The fixture's int8 variant and its checkpoint, as the hub serves them.
fn fixture_files() -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    let mut names = lookout::models::fetch::variant_files("_int8");
    names.push(CHECKPOINT_FILE.to_owned());
    for name in names {
        files.insert(name.clone(), std::fs::read(fixture().join(&name)).unwrap());
    }
    files
}

fn lookout(args: &[&str], endpoint: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("LOOKOUT_LOG", "warn")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_and_the_result_answers() {
    let faults = Arc::new(Mutex::new(Faults {
        cut_once: vec!["onnx/decoder_model_merged_int8.onnx".to_owned()],
        ..Faults::default()
    }));
    let endpoint = hub(fixture_files(), faults.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model");
    let fetch = |endpoint: String, target: PathBuf| {
        tokio::task::spawn_blocking(move || {
            lookout(
                &["models", "fetch", "--dir", target.to_str().unwrap()],
                &endpoint,
            )
        })
    };

    let first = fetch(endpoint.clone(), target.clone()).await.unwrap();
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("run again to resume"),
        "{}",
        stderr(&first)
    );
    assert!(
        !target.join("onnx/decoder_model_merged_int8.onnx").exists(),
        "a partial file was put in place"
    );
    let partial = std::fs::metadata(target.join("onnx/decoder_model_merged_int8.onnx.part"))
        .unwrap()
        .len();

    let second = fetch(endpoint.clone(), target.clone()).await.unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("100%"),
        "progress is shown: {}",
        stderr(&second)
    );
    let ranges = faults.lock().unwrap().ranges.clone();
    assert_eq!(
        ranges,
        vec![(
            "onnx/decoder_model_merged_int8.onnx".to_owned(),
            format!("{partial}-")
        )],
        "the second run resumed"
    );
    for name in lookout::models::fetch::variant_files("_int8") {
        assert_eq!(
            std::fs::read(target.join(&name)).unwrap(),
            std::fs::read(fixture().join(&name)).unwrap(),
            "{name}"
        );
    }

    // After the download, Lookout's own int8 decoder was built from the checkpoint.
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("lookout_decoder_int8.onnx"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    assert!(target.join("onnx/lookout_decoder_int8.onnx").is_file());

    let verify = lookout(&["models", "verify", target.to_str().unwrap()], &endpoint);
    assert!(verify.status.success(), "{}", stderr(&verify));

    // The fetched folder is a working model, answering with Lookout's decoder.
    let image = fixture().join("images/square_300.png");
    let answer = lookout(
        &[
            "ask",
            "--image",
            image.to_str().unwrap(),
            "--model",
            target.to_str().unwrap(),
            "--json",
            "--max-new-tokens",
            "3",
            "What?",
        ],
        &endpoint,
    );
    assert!(answer.status.success(), "{}", stderr(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert_eq!(answer["model"], "model_lookout_int8");

    // A file corrupted on disk afterwards is caught by verify.
    let graph = target.join("onnx/vision_encoder_int8.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    bytes[500] ^= 1;
    std::fs::write(&graph, bytes).unwrap();
    let verify = lookout(&["models", "verify", target.to_str().unwrap()], &endpoint);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        stderr(&verify).contains("onnx/vision_encoder_int8.onnx: SHA-256"),
        "{}",
        stderr(&verify)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_download_fails_verification_and_is_not_kept() {
    let faults = Arc::new(Mutex::new(Faults {
        corrupt: vec!["onnx/embed_tokens_int8.onnx".to_owned()],
        ..Faults::default()
    }));
    let endpoint = hub(fixture_files(), faults).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model");
    let target_arg = target.clone();
    let output = tokio::task::spawn_blocking(move || {
        lookout(
            &["models", "fetch", "--dir", target_arg.to_str().unwrap()],
            &endpoint,
        )
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("onnx/embed_tokens_int8.onnx: checksum mismatch"),
        "{}",
        stderr(&output)
    );
    assert!(!target.join("onnx/embed_tokens_int8.onnx").exists());
    assert!(!target.join("onnx/embed_tokens_int8.onnx.part").exists());
    assert!(
        !target.join("lookout-manifest.json").exists(),
        "an incomplete fetch must not look complete"
    );
}

/// `--no-build` fetches the official graphs alone: a hub without the checkpoint serves all it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_build_only_the_official_graphs_are_fetched() {
    let mut files = fixture_files();
    files.remove(CHECKPOINT_FILE);
    let endpoint = hub(files, Arc::new(Mutex::new(Faults::default()))).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model");
    let target_arg = target.clone();
    let output = tokio::task::spawn_blocking(move || {
        lookout(
            &[
                "models",
                "fetch",
                "--no-build",
                "--dir",
                target_arg.to_str().unwrap(),
            ],
            &endpoint,
        )
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!target.join(CHECKPOINT_FILE).exists());
    assert!(!target.join("onnx/lookout_decoder_int8.onnx").exists());
}

#[test]
fn an_unknown_repository_or_variant_is_a_clear_error() {
    let output = lookout(
        &["models", "fetch", "--variant", "int3"],
        "http://127.0.0.1:9",
    );
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("unknown variant \"int3\""));
    let dir = tempfile::tempdir().unwrap();
    let unreachable = lookout(
        &["models", "fetch", "--dir", dir.path().to_str().unwrap()],
        "http://127.0.0.1:9",
    );
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        stderr(&unreachable).contains("127.0.0.1:9"),
        "{}",
        stderr(&unreachable)
    );
}

/// `lookout run` in `cwd` (a fresh folder: no `models/`) with the default model configured, its broker
/// embedded on `mqtt_port`; stdout and stderr to files in `cwd`.
fn run_fresh(
    cwd: &Path,
    endpoint: &str,
    mqtt_port: u16,
    extra: &[(&str, &str)],
) -> std::process::Child {
    let config = cwd.join("lookout.toml");
    std::fs::write(
        &config,
        common::Toml::device("fresh")
            .embedded_mqtt(mqtt_port)
            .section("vision")
            .key("threads", 1)
            .camera("cam", 64, 48, 5.0)
            .task("bright", "cam", "Is it bright?")
            .kind("yes_no")
            .interval(0.5)
            .to_string(),
    )
    .unwrap();
    let library = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort/lib/libonnxruntime.so");
    Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["run", "--config", config.to_str().unwrap()])
        .current_dir(cwd)
        .env_remove("INVOCATION_ID")
        .env_remove("LOOKOUT_MODEL_DIR")
        .env_remove("LOOKOUT_VARIANT")
        .env_remove("LOOKOUT_MQTT_URL")
        .env("HF_ENDPOINT", endpoint)
        .env("ORT_DYLIB_PATH", library)
        .env("LOOKOUT_STATE_DIR", cwd.join("state"))
        .env("LOOKOUT_HTTP_ADDR", "127.0.0.1:0")
        .env("LOOKOUT_LOG", "info")
        .envs(extra.iter().copied())
        .stdout(std::fs::File::create(cwd.join("stdout")).unwrap())
        .stderr(std::fs::File::create(cwd.join("stderr")).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn a_fresh_run_offline_says_what_is_missing_and_exits_69() {
    let closed = common::free_port();
    let cwd = tempfile::tempdir().unwrap();
    let status = run_fresh(
        cwd.path(),
        &format!("http://127.0.0.1:{closed}"),
        common::free_port(),
        &[],
    )
    .wait()
    .unwrap();
    let text = std::fs::read_to_string(cwd.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(69), "{text}");
    for needle in [
        "models/SmolVLM2-256M-Video-Instruct holds no SmolVLM2 export",
        &format!("127.0.0.1:{closed}"),
        "`lookout models fetch` needs the Hub",
        "LOOKOUT_MODEL_DIR=models/fixtures/smolvlm-micro lookout run",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_run_fetches_the_default_model_then_answers() {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let endpoint = hub(fixture_files(), faults).await;
    let cwd = tempfile::tempdir().unwrap();

    // Under a service manager nothing is downloaded unasked: the fetch command is named instead.
    let port = common::free_port();
    let status = run_fresh(cwd.path(), &endpoint, port, &[("INVOCATION_ID", "1")])
        .wait()
        .unwrap();
    let text = std::fs::read_to_string(cwd.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(69), "{text}");
    assert!(
        text.contains("lookout models fetch --variant int8 --dir"),
        "{text}"
    );
    assert!(
        !cwd.path().join("models").exists(),
        "downloaded under a service manager"
    );

    let mut daemon = run_fresh(cwd.path(), &endpoint, port, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(cwd.path().join("stderr"))
        .unwrap_or_default()
        .contains("Lookout is running.")
    {
        if let Some(status) = daemon.try_wait().unwrap() {
            panic!(
                "exited {status}:\n{}",
                std::fs::read_to_string(cwd.path().join("stderr")).unwrap()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not running after a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut client = common::Subscriber::connect(port, &["lookout/fresh/cam/bright/answer"]).await;
    let answer = client
        .expect(std::time::Duration::from_secs(30), "an answer", |m| {
            m.topic == "lookout/fresh/cam/bright/answer"
        })
        .await;
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(answer.json()["device"], "fresh");
    let model = cwd.path().join("models/SmolVLM2-256M-Video-Instruct");
    for name in lookout::models::fetch::variant_files("_int8") {
        assert_eq!(
            std::fs::read(model.join(&name)).unwrap(),
            std::fs::read(fixture().join(&name)).unwrap(),
            "{name}"
        );
    }
    let text = std::fs::read_to_string(cwd.path().join("stderr")).unwrap();
    assert!(
        text.contains("Model fetched, checksums verified."),
        "{text}"
    );
    assert!(text.contains("100%"), "progress is shown: {text}");
}
