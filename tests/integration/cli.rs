//! The `lookout` binary as a user runs it: exit codes, every config error at once, the example config,
//! a clear refusal to run without a model, and what its log says about the addresses it serves.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn lookout(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lookout"));
    command
        .args(args)
        .env_remove("LOOKOUT_CONFIG")
        .env_remove("LOOKOUT_MQTT_URL");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn config_example_prints_a_valid_documented_config() {
    let output = lookout(&["config", "example"], &[]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.lines().filter(|line| line.starts_with('#')).count() > 20,
        "the example is documented"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.toml");
    std::fs::write(&file, &text).unwrap();
    let check = lookout(&["config", "check", file.to_str().unwrap()], &[]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn config_check_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[[cameras]]
id = "a"
source = { kind = "synthetic", fps = 0.0 }
[[cameras]]
id = "a"
source = { kind = "synthetic" }
[[tasks]]
id = "t"
camera = "b"
question = ""
trigger = { kind = "interval", secs = "often" }
[mqtt]
keep_alive_secs = 1
"#,
    )
    .unwrap();
    let output = lookout(&["config", "check", file.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(64));
    let text = stderr(&output);
    for path in [
        "cameras[0].source.fps",
        "cameras[1].id",
        "tasks[0].trigger",
        "mqtt.keep_alive_secs",
    ] {
        assert!(text.contains(path), "{path} missing from:\n{text}");
    }
    let missing = lookout(&["config", "check", "/nonexistent/lookout.toml"], &[]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(stderr(&missing).contains("cannot read config file"));
}

#[test]
fn run_with_a_bad_config_exits_64_before_opening_the_broker_port() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        format!("[mqtt]\nembedded_listen = \"127.0.0.1:{port}\"\nbogus = 1\n"),
    )
    .unwrap();
    let output = lookout(&["run", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("mqtt.bogus: unknown field `bogus`"),
        "{}",
        stderr(&output)
    );
    // Nothing was started: the port is still free.
    TcpListener::bind(("127.0.0.1", port)).expect("port still free");
}

#[test]
fn run_without_a_model_says_so_and_exits_69() {
    let output = lookout(
        &["run"],
        &[
            ("LOOKOUT_MODEL_DIR", "/nonexistent/model"),
            ("LOOKOUT_LOG", "off"),
        ],
    );
    assert_eq!(output.status.code(), Some(69));
    let text = stderr(&output);
    assert!(text.contains("no model in /nonexistent/model"), "{text}");
    assert!(text.contains("LOOKOUT_MODEL_DIR"), "{text}");
}

#[test]
fn a_config_named_by_the_environment_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env.toml");
    std::fs::write(&file, "[device]\nid = \"bad id\"\n").unwrap();
    let output = lookout(&["run"], &[("LOOKOUT_CONFIG", file.to_str().unwrap())]);
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("device.id"), "{}", stderr(&output));
}

#[test]
fn the_log_names_the_health_address_actually_bound() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro");
    let mqtt_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("health.toml");
    std::fs::write(
        &file,
        format!(
            "[mqtt]\nembedded_listen = \"127.0.0.1:{mqtt_port}\"\n[vision]\nmodel_dir = \"{}\"\nthreads = 1\n[[cameras]]\nid = \"cam\"\nsource = {{ kind = \"synthetic\", width = 32, height = 32 }}\n",
            fixture.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("health.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["run", "--config", file.to_str().unwrap()])
        .env_remove("LOOKOUT_CONFIG")
        .env_remove("LOOKOUT_MQTT_URL")
        .env("LOOKOUT_STATE_DIR", dir.path().join("state"))
        .env("LOOKOUT_HTTP_ADDR", "127.0.0.1:0")
        .env("LOOKOUT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.contains("Serving /healthz")) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no health endpoint in:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr field: {line}"));
    assert_ne!(addr, "127.0.0.1:0", "{line}");
    // The address logged is the one that answers.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: lookout\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// `lookout doctor` on the CPU-only runtime the tests use: it names the library and the file it links
/// to, the CPU device with its provider, every accelerator provider as not in this runtime, and where
/// the configured model lands (each graph's nodes, none falling back); a device that cannot be had, or
/// a missing or too old runtime, is the same one-line error, exit 69, as for `run`.
#[test]
fn doctor_says_what_the_runtime_offers() {
    let output = lookout(&["doctor"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("/libonnxruntime.so.1."),
        "the versioned file: {text}"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("  cpu (") && line.ends_with("): CPUExecutionProvider")),
        "{text}"
    );
    assert!(
        text.contains("accelerator providers in this runtime: none\nnot in it: cuda, tensorrt, openvino, qnn, coreml\n"),
        "{text}"
    );
    assert!(text.contains("accelerator device nodes: "), "{text}");
    assert!(text.contains("provider libraries: none\n"), "{text}");
    assert!(text.contains("vision.device: auto\n"), "{text}");
    assert!(text.contains("model: not loaded (no model in "), "{text}");

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro");
    let fixture = fixture.to_str().unwrap();
    let placed = lookout(&["doctor"], &[("LOOKOUT_MODEL_DIR", fixture)]);
    assert!(placed.status.success(), "{}", stderr(&placed));
    let text = String::from_utf8(placed.stdout).unwrap();
    assert!(
        text.contains("model: smolvlm-micro_int8 on cpu\n"),
        "{text}"
    );
    for graph in ["vision_encoder_int8.onnx", "decoder_model_merged_int8.onnx"] {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("  {graph}: ")))
            .unwrap_or_else(|| panic!("no line for {graph}: {text}"));
        let nodes: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(nodes > 100, "{line}");
        assert!(
            line.ends_with(" nodes on CPUExecutionProvider, 0 fall back to the CPU"),
            "{line}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let gpu = dir.path().join("gpu.toml");
    std::fs::write(&gpu, "[vision]\ndevice = \"gpu\"\n").unwrap();
    let refused = lookout(
        &["doctor", "--config", gpu.to_str().unwrap()],
        &[("LOOKOUT_MODEL_DIR", fixture)],
    );
    assert_eq!(refused.status.code(), Some(69), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("vision.device = \"gpu\", but this box offers no gpu"),
        "{}",
        stderr(&refused)
    );

    let missing = lookout(
        &["doctor"],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert_eq!(missing.status.code(), Some(69), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("no ONNX Runtime library found"));
    let old = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort/old/lib/libonnxruntime.so");
    let refused = lookout(&["doctor"], &[("ORT_DYLIB_PATH", old.to_str().unwrap())]);
    assert_eq!(refused.status.code(), Some(69), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("1.22"), "{}", stderr(&refused));
}
