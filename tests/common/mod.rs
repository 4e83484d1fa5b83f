//! Shared test harness: a real mosquitto broker on a free loopback port, a real MQTT subscriber, the
//! daemon's `app::run` in-process, and a test analyser that stands in for the model (which arrives with
//! the SmolVLM2 issue) behind the same `Analyser` trait the real one implements.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod cloud;
pub mod config;
pub mod datasets;
pub mod echo;
pub mod process;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use lookout::app::{self, AppError};
use lookout::config::ConfigOrigin;
use lookout::env::Env;
use lookout::message::Frame;
use lookout::message::{AnswerKind, Request};
use lookout::message::{Clip, StageTimings};
use lookout::service::Control;
use lookout::vision::{AnalyseError, Analyser, LocalAnswer};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use config::Toml;

/// A loopback port nobody listens on right now and no other test of this binary was given.
///
/// The kernel may hand the same ephemeral port to two binds in a row once the first socket is closed,
/// so two tests running at once could otherwise start their brokers on one port and see each other's
/// messages.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

fn mosquitto_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("mosquitto is not installed: run `make deps` (apt-get install mosquitto)");
}

/// A mosquitto process with a generated config, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    /// Anonymous access on a free port.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(free_port(), "allow_anonymous true\n")
    }

    /// A broker that keeps sessions and queued messages across a graceful restart, so a persistent
    /// subscriber misses nothing published while it or the broker was away.
    pub fn start_persistent() -> Mosquitto {
        Mosquitto::start_with(
            free_port(),
            "allow_anonymous true\npersistence true\npersistence_location {dir}/\nautosave_interval 1\n",
        )
    }

    /// `extra` is appended to the listener's config (auth, TLS...). Files it names may live in `dir()`.
    pub fn start_with(port: u16, extra: &str) -> Mosquitto {
        let mut broker = Mosquitto {
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.to_owned(),
            child: None,
        };
        broker.launch();
        broker
    }

    /// Prepares a broker whose config needs files in its folder; call `launch` after writing them.
    pub fn prepare(port: u16, extra: &str) -> Mosquitto {
        Mosquitto {
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.to_owned(),
            child: None,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn launch(&mut self) {
        let config = self.dir.path().join("mosquitto.conf");
        let text = format!(
            // `user root`: when the tests run as root, mosquitto would otherwise switch to its own user,
            // which cannot read the test's private temporary folder (TLS keys, password files).
            "listener {} 127.0.0.1\n{}log_dest stderr\nuser root\n{}",
            self.port,
            // Sessions and queued messages survive a restart only when a test asks for persistence.
            if self.extra.contains("persistence") {
                ""
            } else {
                "persistence false\n"
            },
            self.extra
                .replace("{dir}", &self.dir.path().display().to_string())
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops with SIGTERM, so a persistent broker saves its sessions and queued messages first.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on port {port}");
}

/// One message as a subscriber saw it.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

impl Message {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }
}

/// A real MQTT client subscribed to some filters, collecting what arrives.
pub struct Subscriber {
    pub client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Message>,
    task: JoinHandle<()>,
}

impl Subscriber {
    pub async fn connect(port: u16, filters: &[&str]) -> Subscriber {
        Subscriber::connect_as(port, filters, None).await
    }

    pub async fn connect_as(
        port: u16,
        filters: &[&str],
        credentials: Option<(&str, &str)>,
    ) -> Subscriber {
        let mut options = MqttOptions::new(
            format!("test-sub-{}", uuid::Uuid::now_v7()),
            "127.0.0.1",
            port,
        );
        options.set_keep_alive(Duration::from_secs(5));
        Subscriber::connect_with(options, filters, credentials).await
    }

    /// A subscriber with a persistent session: with a persistent broker, what is published while it
    /// is away (or while the broker restarts) is kept for it.
    pub async fn connect_persistent(port: u16, client_id: &str, filters: &[&str]) -> Subscriber {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false);
        Subscriber::connect_with(options, filters, None).await
    }

    async fn connect_with(
        mut options: MqttOptions,
        filters: &[&str],
        credentials: Option<(&str, &str)>,
    ) -> Subscriber {
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        options.set_max_packet_size(32 << 20, 32 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        for filter in filters {
            client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
        }
        let (sender, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let mut acks = 0;
        let wanted = filters.len();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks += 1;
                        if acks == wanted
                            && let Some(tx) = subscribed_tx.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = sender.send(Message {
                            topic: publish.topic.clone(),
                            payload: publish.payload.to_vec(),
                            qos: publish.qos,
                            retain: publish.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        if wanted > 0 {
            tokio::time::timeout(Duration::from_secs(10), subscribed)
                .await
                .expect("subscribed")
                .unwrap();
        }
        Subscriber {
            client,
            messages,
            task,
        }
    }

    /// The next message matching `wanted`, skipping others; panics after `timeout`.
    pub async fn expect(
        &mut self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&Message) -> bool,
    ) -> Message {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(message)) if wanted(&message) => return message,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("subscriber closed while waiting for {what}"),
                Err(_) => panic!("no {what} within {timeout:?}"),
            }
        }
    }

    /// Every message that arrives within `window`.
    pub async fn collect_for(&mut self, window: Duration) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + window;
        let mut all = Vec::new();
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, self.messages.recv()).await
        {
            all.push(message);
        }
        all
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stands in for SmolVLM2: answers from the frame's pixels, deterministically, so tests can check
/// that each answer is about the frame it names. A question containing "fail" fails.
pub struct PixelAnalyser {
    pub delay: Duration,
}

impl PixelAnalyser {
    pub fn boxed() -> Box<dyn Analyser> {
        Box::new(PixelAnalyser {
            delay: Duration::ZERO,
        })
    }
}

impl Analyser for PixelAnalyser {
    fn model(&self) -> &str {
        "test-pixel-analyser"
    }

    fn runs_on(&self) -> &str {
        "cpu"
    }

    fn load_time(&self) -> Duration {
        Duration::ZERO
    }

    fn answer(
        &mut self,
        frame: &Frame,
        requests: &[Request],
    ) -> Vec<Result<LocalAnswer, AnalyseError>> {
        std::thread::sleep(self.delay);
        pixel_answers(&[&frame.image], requests)
    }

    fn answer_clip(
        &mut self,
        clip: &Clip,
        requests: &[Request],
    ) -> Vec<Result<LocalAnswer, AnalyseError>> {
        std::thread::sleep(self.delay);
        let images: Vec<&RgbImage> = clip.frames.iter().map(|frame| &*frame.image).collect();
        pixel_answers(&images, requests)
    }
}

/// The pixel analyser's answers about `images`: from their mean level and the last one's size.
fn pixel_answers(
    images: &[&RgbImage],
    requests: &[Request],
) -> Vec<Result<LocalAnswer, AnalyseError>> {
    let (sum, count) = images.iter().fold((0u64, 0u64), |(sum, count), image| {
        let pixels = image.as_raw();
        (
            sum + pixels.iter().map(|&v| u64::from(v)).sum::<u64>(),
            count + pixels.len() as u64,
        )
    });
    let mean = sum / count.max(1);
    let (width, height) = images.last().map_or((0, 0), |image| image.dimensions());
    requests
        .iter()
        .map(|request| {
            if request.question.contains("fail") {
                return Err(AnalyseError::Input("asked to fail".to_owned()));
            }
            let text = match &request.kind {
                AnswerKind::Text => format!("mean level {mean} in {width}x{height}"),
                AnswerKind::YesNo => if mean > 127 { "yes" } else { "no" }.to_owned(),
                AnswerKind::OneOf(labels) => labels[mean as usize % labels.len()].clone(),
            };
            Ok(LocalAnswer {
                text,
                confidence: 0.75,
                min_probability: None,
                tokens: vec![mean as u32],
                prompt_tokens: 0,
                timings: StageTimings::default(),
            })
        })
        .collect()
}

/// The daemon running in-process on a config file.
pub struct Daemon {
    pub control: mpsc::Sender<Control>,
    pub task: JoinHandle<Result<(), AppError>>,
    pub config_path: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl Daemon {
    pub fn start(config_toml: &str) -> Daemon {
        Daemon::start_with(config_toml, PixelAnalyser::boxed())
    }

    pub fn start_with(config_toml: &str, analyser: Box<dyn Analyser>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        Daemon::start_in(&state_dir, config_toml, analyser, dir)
    }

    /// A daemon keeping its state in `state_dir` (which may outlive it, for restarts); `dir` holds the
    /// config file and lives as long as the daemon.
    pub fn start_in(
        state_dir: &Path,
        config_toml: &str,
        analyser: Box<dyn Analyser>,
        dir: tempfile::TempDir,
    ) -> Daemon {
        Daemon::start_in_env(state_dir, config_toml, analyser, dir, &[])
    }

    /// `start_in` with more environment variables (as systemd sets them, say).
    pub fn start_in_env(
        state_dir: &Path,
        config_toml: &str,
        analyser: Box<dyn Analyser>,
        dir: tempfile::TempDir,
        extra_env: &[(&str, &str)],
    ) -> Daemon {
        let config_path = dir.path().join("lookout.toml");
        std::fs::write(&config_path, config_toml).unwrap();
        let origin = ConfigOrigin::File(config_path.clone());
        let mut pairs = vec![("LOOKOUT_STATE_DIR", state_dir.to_str().unwrap())];
        pairs.extend_from_slice(extra_env);
        let env = Env::from_pairs(pairs);
        let loaded = origin
            .load_effective(&env)
            .unwrap_or_else(|error| panic!("test config invalid: {error}"));
        let (control, requests) = mpsc::channel(4);
        let task = tokio::spawn(app::run(origin, env, loaded, analyser, requests));
        Daemon {
            control,
            task,
            config_path,
            _dir: Arc::new(dir),
        }
    }

    /// Replaces the config file and asks the daemon to reload it.
    pub async fn reload(&self, config_toml: &str) {
        std::fs::write(&self.config_path, config_toml).unwrap();
        self.control.send(Control::Reload).await.unwrap();
    }

    /// Asks for a graceful shutdown and waits for it, returning how long it took.
    pub async fn shutdown(self) -> Duration {
        let started = Instant::now();
        self.control.send(Control::Shutdown).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("daemon stops within 20 s")
            .unwrap()
            .expect("daemon stops cleanly");
        started.elapsed()
    }
}

/// The usual header: device `device` (5 s shutdown), the broker at `broker_url` (stats every 0.5 s,
/// 5 s keep-alive) and one synthetic camera `cam`, 64x48 at 20 fps.
pub fn standard(device: &str, broker_url: &str) -> Toml {
    Toml::device(device)
        .key("shutdown_timeout_secs", "5.0")
        .mqtt(broker_url)
        .key("stats_interval_secs", 0.5)
        .key("keep_alive_secs", 5)
        .camera("cam", 64, 48, 20.0)
}

/// The usual header and the given extra TOML (tasks, mqtt...).
pub fn config_with(device: &str, broker_url: &str, rest: &str) -> String {
    standard(device, broker_url).raw(rest).to_string()
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
