//! Wiring and supervision: the one place that knows every stage.
//!
//! The pipeline has two halves with different lifetimes. The back half (the vision worker that owns the
//! model, the escalation stage with its cloud client and offline queue, the dataset stage, and the
//! publisher that owns the MQTT connection) lives as long as the process: reloading a model or
//! reconnecting elsewhere is expensive and is not done on a config reload (the escalation policy and
//! endpoints are re-read; the dataset stage follows its settings). The front half (one source and one
//! gate per camera) is cheap and is rebuilt when cameras or tasks change. The job queue joins the two
//! and outlives every front half.
//!
//! Shutdown follows the data: escalations in flight give up (their answers go out local, queued for
//! the cloud); cancel the sources; their channels close, so the gates finish; then the job queue
//! closes, the vision worker drains it and drops its sender, the escalation stage passes on what it
//! holds, the dataset stage saves the cloud answers still waiting for it, and the publisher drains the
//! outcomes, says `offline` and disconnects; the health endpoint stops last. All of it runs under the
//! configured deadline, and stages still running at the deadline are named.
//!
//! While running, the supervisor (`service::watchdog`) checks every second, or twice per systemd
//! watchdog timeout, that no stage has a unit of work running past `device.stall_timeout_secs`, and
//! only then feeds the watchdog. The retained messages that describe the box (`config/reported`,
//! Home Assistant discovery) are rebuilt after every reload or push and handed to the publisher.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::remote::{self, Push};

use crate::config::{self, Config, ConfigOrigin, Layers, RemoteConfig, RemoteLayer};
use crate::dataset;
use crate::env::Env;
use crate::errors;
use crate::escalate::{self, Escalation};
use crate::gate::{self, JobQueue};
use crate::health;
use crate::message::{self, Ack};
use crate::message::{AskRouter, CaptureSink};
use crate::outbox::{Limits, Outbox, OutboxError};
use crate::publish::discovery;
use crate::publish::{
    self, ConfigChannel, PublishError, PublishSettings, Publisher, Retained, Topics,
};
use crate::service::notify::Notifier;
use crate::service::watchdog::Supervisor;
use crate::source;
use crate::stats::Stats;
use crate::validate::FieldError;
use crate::vision::model::ModelSpec;
use crate::vision::preprocess::{self, ImageSettings};
use crate::vision::{self, Analyser, Replacement, VisionConfig};

/// Outcomes a stage may hold before the next takes them (vision to escalation, escalation to
/// publish); when full, the sender waits (answers are never dropped between vision and publish).
const OUTCOME_CAPACITY: usize = 16;

/// What the host (signals, tests) asks of a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Read the config again; apply it if valid, else keep the running one.
    Reload,
    /// Stop gracefully.
    Shutdown,
}

/// Why the daemon stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("the {0} stage stopped unexpectedly")]
    StageFailed(&'static str),
    #[error("shutdown took longer than the deadline; still running: {}", .0.join(", "))]
    ShutdownTimedOut(Vec<String>),
}

/// A named task, so supervision can say which stage is late or failed.
struct Stage {
    name: String,
    handle: JoinHandle<()>,
}

/// The sources and gates of one configuration.
struct Front {
    cancel: CancellationToken,
    stages: Vec<Stage>,
}

impl Front {
    /// No sources, no gates: the front half between two configurations.
    fn idle() -> Front {
        Front {
            cancel: CancellationToken::new(),
            stages: Vec::new(),
        }
    }

    fn start(config: &Config, queue: &JobQueue, router: &AskRouter, stats: &Arc<Stats>) -> Front {
        let cancel = CancellationToken::new();
        let mut stages = Vec::new();
        let mut routes = HashMap::new();
        // How clip buffers resize frames: as the configured model's processor says.
        let clip_settings = ModelSpec::read(&config.vision.model_dir)
            .map(|spec| spec.image)
            .unwrap_or(ImageSettings::SMOLVLM2);
        let clip_resize: gate::ClipResize =
            Arc::new(move |image| preprocess::clip_frame(image, &clip_settings, 1));
        for camera in &config.cameras {
            // Capacity one, newest wins: capture never waits for the gate.
            let (frames_out, frames_in) = watch::channel(None);
            let tasks: Vec<_> = config
                .tasks
                .iter()
                .filter(|task| task.camera == camera.id)
                .cloned()
                .collect();
            let (route, asks) = AskRouter::channel(&tasks);
            routes.insert(camera.id.clone(), route);
            stages.push(Stage {
                name: format!("source {}", camera.id),
                handle: tokio::spawn(source::run(
                    camera.clone(),
                    frames_out,
                    stats.clone(),
                    cancel.clone(),
                )),
            });
            stages.push(Stage {
                name: format!("gate {}", camera.id),
                handle: tokio::spawn(gate::run(
                    Arc::from(camera.id.as_str()),
                    tasks,
                    frames_in,
                    asks,
                    queue.clone(),
                    stats.clone(),
                    clip_resize.clone(),
                )),
            });
        }
        router.set_routes(routes);
        Front { cancel, stages }
    }

    /// Cancels the sources and waits for every source and gate to finish; returns the late ones.
    async fn stop(self, router: &AskRouter, deadline: Instant) -> Vec<String> {
        router.set_routes(HashMap::new());
        self.cancel.cancel();
        join_all(self.stages, deadline).await
    }
}

/// Waits for `stages` until `deadline`, logging panics; returns the names of those still running, which
/// are aborted (a blocking stage cannot be, and ends with the process).
async fn join_all(stages: Vec<Stage>, deadline: Instant) -> Vec<String> {
    let mut late = Vec::new();
    for mut stage in stages {
        match tokio::time::timeout_at(deadline, &mut stage.handle).await {
            Ok(Ok(())) => {}
            Ok(Err(failure)) => error!(stage = %stage.name, error = %failure, "Stage failed."),
            Err(_) => {
                stage.handle.abort();
                late.push(stage.name);
            }
        }
    }
    late
}

/// Config sections that only take effect at the next start, named in the log and in push acks.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut names = Vec::new();
    if old.device.id != new.device.id {
        names.push("device.id");
    }
    if old.device.state_dir != new.device.state_dir {
        names.push("device.state_dir");
    }
    if old.outbox != new.outbox {
        names.push("outbox");
    }
    if old.mqtt.needs_restart_against(&new.mqtt) {
        names.push("mqtt");
    }
    if old.vision.runtime_library != new.vision.runtime_library {
        names.push("vision.runtime_library");
    }
    // The offline queue's file is opened at start.
    let queue_opened =
        |config: &Config| config.escalation.enabled && config.escalation.queue.enabled;
    if old.escalation.queue != new.escalation.queue || queue_opened(old) != queue_opened(new) {
        names.push("escalation.queue");
    }
    // Whether `config/desired` is subscribed to is decided at connect.
    if old.remote.enabled != new.remote.enabled {
        names.push("remote.enabled");
    }
    // Bound at start, like the broker connection.
    if old.http != new.http {
        names.push("http");
    }
    // Home Assistant's status topic is subscribed to at connect.
    if old.home_assistant.prefix != new.home_assistant.prefix {
        names.push("home_assistant.prefix");
    }
    names
}

/// Pushes waiting for the daemon; when full, the publisher acks a push as refused ("send it again").
const PUSH_CAPACITY: usize = 8;

/// What runs and can change while it runs: the config, its layers, the front half, the model.
struct Live {
    config: Config,
    layers: Layers,
    /// Changed fields that wait for a restart.
    restart_needed: Vec<&'static str>,
    front: Front,
    queue: JobQueue,
    router: AskRouter,
    stats: Arc<Stats>,
    escalation: Arc<Escalation>,
    /// The dataset stage's settings (it opens, moves or closes its folder when they change).
    dataset: watch::Sender<dataset::Settings>,
    /// Whether the publisher logs each answer (`mqtt.log_answers`, live).
    log_answers: watch::Sender<bool>,
    replacement: Replacement,
    topics: Topics,
    /// Home Assistant discovery topics announced now (and by the last run, until the first update).
    announced: BTreeSet<String>,
    /// Discovery topics withdrawn during this run: their empty messages go out on every connect.
    withdrawn: BTreeSet<String>,
}

impl Live {
    /// Applies a validated config: its secrets are held for redaction first (a new token or password
    /// is never logged, even by the stages it starts), then cameras and tasks (the front half is
    /// rebuilt), the escalation policy and endpoints, and a new model, which loads and answers a
    /// warm-up frame in the background before it replaces the running one. Returns the changed fields
    /// that wait for a restart, or why the new model cannot be used (then nothing is applied).
    async fn apply(&mut self, new: Config, env: &Env) -> Result<Vec<&'static str>, FieldError> {
        errors::hold(&config::secrets(&new, env));
        // The runtime library is loaded once per process; every other vision field can change live.
        let live_vision = |vision: &VisionConfig| VisionConfig {
            runtime_library: None,
            ..vision.clone()
        };
        if live_vision(&new.vision) != live_vision(&self.config.vision) {
            let vision = new.vision.clone();
            let loaded = tokio::task::spawn_blocking(move || vision::load_and_warm_up(&vision))
                .await
                .unwrap_or_else(|_| Err("loading the model panicked".to_owned()));
            let analyser = loaded.map_err(|error| {
                warn!(error = %error, "The new model is not used; the running one stays.");
                FieldError::new("vision", error)
            })?;
            info!(model_dir = %new.vision.model_dir.display(), "The new model answered its warm-up frame.");
            self.replacement.offer(analyser);
        }
        if new.cameras != self.config.cameras || new.tasks != self.config.tasks {
            let deadline = Instant::now() + self.config.shutdown_timeout();
            let front = std::mem::replace(&mut self.front, Front::idle());
            let late = front.stop(&self.router, deadline).await;
            if !late.is_empty() {
                warn!(stages = ?late, "Stages of the old configuration did not stop in time and were aborted.");
            }
            self.front = Front::start(&new, &self.queue, &self.router, &self.stats);
            info!(
                cameras = new.cameras.len(),
                tasks = new.tasks.len(),
                "Applied the new cameras and tasks."
            );
        }
        self.escalation.reconfigure(&new.escalation);
        let later = needs_restart(&self.config, &new);
        if !later.is_empty() {
            warn!(sections = ?later, "These settings changed but take effect only after a restart.");
        }
        let running = &mut self.config;
        running.vision = VisionConfig {
            runtime_library: running.vision.runtime_library.clone(),
            ..new.vision
        };
        running.escalation = new.escalation;
        running.dataset = new.dataset;
        self.dataset.send_replace(running.dataset_settings());
        running.cameras = new.cameras;
        running.tasks = new.tasks;
        running.device.shutdown_timeout_secs = new.device.shutdown_timeout_secs;
        running.device.stall_timeout_secs = new.device.stall_timeout_secs;
        self.stats.progress.set_limit(running.stall_timeout());
        running.home_assistant.discovery = new.home_assistant.discovery;
        running.mqtt.log_answers = new.mqtt.log_answers;
        self.log_answers.send_replace(new.mqtt.log_answers);
        running.remote = RemoteConfig {
            enabled: running.remote.enabled,
            ..new.remote
        };
        Ok(later)
    }

    /// SIGHUP: the local file again with the remote layer over it, checked and applied like a push.
    async fn reload(&mut self, origin: &ConfigOrigin, env: &Env) {
        let loaded = origin.read().and_then(|text| {
            let layers = Layers {
                local: config::local_json(&text)?,
                remote: self.layers.remote.clone(),
            };
            Ok((layers.config(env)?, layers))
        });
        let (new, layers) = match loaded {
            Ok(loaded) => loaded,
            Err(problem) => {
                for field in problem.problems() {
                    error!(path = %field.path, problem = %field.message, "Config reload rejected.");
                }
                warn!("Keeping the running configuration.");
                return;
            }
        };
        match self.apply(new, env).await {
            Ok(later) => {
                self.layers = layers;
                self.restart_needed = later;
            }
            Err(problem) => {
                error!(problem = %problem, "Config reload rejected; keeping the running configuration.");
            }
        }
    }

    /// A push from `config/desired`: checked (size, form, signature, version, locks, the whole
    /// config), persisted, then applied. Every refusal leaves the running config as it was.
    async fn push(&mut self, payload: &[u8], env: &Env) -> Ack {
        let settings = &self.config.remote;
        let push = match Push::parse(payload, settings.max_push_bytes) {
            Ok(push) => push,
            Err(error) => return Ack::refused(message::version_of(payload), vec![error]),
        };
        let refuse = |errors: Vec<FieldError>| Ack::refused(Some(push.version), errors);
        if let Err(error) = push.check_signature(settings) {
            return refuse(vec![error]);
        }
        let next = match push.next_layer(&self.layers.remote) {
            Ok(next) => next,
            Err(error) => return refuse(vec![error]),
        };
        let layers = Layers {
            local: self.layers.local.clone(),
            remote: next,
        };
        let locked = remote::locked_changes(
            &settings.locked,
            &self.layers.effective(),
            &layers.effective(),
        );
        if !locked.is_empty() {
            return refuse(locked);
        }
        let new = match layers.config(env) {
            Ok(new) => new,
            Err(error) => return refuse(error.problems()),
        };
        // Persisted before it is applied, so what runs is what the next start runs; if the new model
        // then fails, the previous layer goes back.
        if let Err(error) = self.persist(&layers.remote).await {
            return refuse(vec![FieldError::new(
                "",
                format!("cannot persist the config: {error}"),
            )]);
        }
        match self.apply(new, env).await {
            Ok(later) => {
                info!(version = push.version, restart_needed = ?later, "Applied a config push.");
                self.layers = layers;
                self.restart_needed = later.clone();
                Ack::applied(push.version, later)
            }
            Err(problem) => {
                if let Err(error) = self.persist(&self.layers.remote.clone()).await {
                    error!(error = %error, "Cannot restore the previous remote config layer on disk.");
                }
                refuse(vec![problem])
            }
        }
    }

    async fn persist(&self, layer: &RemoteLayer) -> std::io::Result<()> {
        let (path, layer) = (self.config.remote_layer_file(), layer.clone());
        tokio::task::spawn_blocking(move || remote::save_layer(&path, &layer))
            .await
            .map_err(std::io::Error::other)?
    }

    fn reported(&self) -> Vec<u8> {
        remote::reported(
            self.layers.remote.version,
            &self.restart_needed,
            &self.layers.effective(),
        )
    }

    /// The retained messages that describe the box now: `config/reported`, the Home Assistant
    /// discovery of each task, and the withdrawal of entities whose task went away. Records which
    /// topics are announced, so that the next run withdraws what this one leaves behind.
    async fn retained(&mut self) -> Retained {
        let config = &self.config;
        let model = config.vision.model_dir.file_name().map_or_else(
            || "SmolVLM2".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
        let mut retained = discovery::announcements(
            &config.home_assistant,
            &self.topics,
            &config.device.id,
            &model,
            &config.tasks,
        );
        let announced: BTreeSet<String> = retained.keys().cloned().collect();
        self.withdrawn
            .extend(self.announced.difference(&announced).cloned());
        self.withdrawn.retain(|topic| !announced.contains(topic));
        if announced != self.announced {
            let (path, topics) = (config.discovery_file(), announced.clone());
            let saved =
                tokio::task::spawn_blocking(move || discovery::save_announced(&path, &topics))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|saved| saved);
            if let Err(error) = saved {
                warn!(error = %error, "Cannot record the Home Assistant entities announced; a task removed before the next start may stay in Home Assistant.");
            }
            self.announced = announced;
        }
        for topic in &self.withdrawn {
            retained.insert(topic.clone(), Vec::new());
        }
        retained.insert(self.topics.config_reported(), self.reported());
        retained
    }
}

/// Runs the daemon until `Control::Shutdown` (or the control channel closing). `config` is what
/// `layers` make (`ConfigOrigin::load_effective`).
pub async fn run(
    origin: ConfigOrigin,
    env: Env,
    (config, layers): (Config, Layers),
    analyser: Box<dyn Analyser>,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), AppError> {
    errors::hold(&config::secrets(&config, &env));
    let stats = Arc::new(Stats::default());
    let outbox = open_outbox(&config).await?;
    let escalation_queue = open_escalation_queue(&config).await?;
    let mqtt = config.mqtt.clone();
    tokio::task::spawn_blocking(move || publish::start_embedded_broker_if_needed(&mqtt))
        .await
        .map_err(|_| AppError::StageFailed("embedded broker"))??;

    let queue = JobQueue::new(stats.clone());
    let router = AskRouter::default();
    let (looked_out, looked_in) = mpsc::channel(OUTCOME_CAPACITY);
    let (outcomes_out, outcomes_in) = mpsc::channel(OUTCOME_CAPACITY);
    let (pushes_out, mut pushes_in) = mpsc::channel(PUSH_CAPACITY);
    let settings = PublishSettings {
        mqtt: config.mqtt.clone(),
        device: config.device.id.clone(),
        home_assistant: config.home_assistant.clone(),
    };
    let topics = Topics::new(&config.mqtt.prefix, &config.device.id);
    let (dataset_settings, dataset_settings_in) = watch::channel(config.dataset_settings());
    let (captures_out, captures_in) = mpsc::channel(dataset::CAPTURE_CAPACITY);
    let escalation = Arc::new(Escalation::new(
        &config.escalation,
        env.clone(),
        stats.clone(),
        escalation_queue.clone(),
        CaptureSink::new(
            dataset::wanted(dataset_settings_in.clone()),
            captures_out,
            stats.clone(),
        ),
    ));
    let discovery_file = config.discovery_file();
    let (log_answers, log_answers_out) = watch::channel(config.mqtt.log_answers);
    let mut live = Live {
        front: Front::start(&config, &queue, &router, &stats),
        config,
        layers,
        restart_needed: Vec::new(),
        queue: queue.clone(),
        router: router.clone(),
        stats: stats.clone(),
        escalation: escalation.clone(),
        dataset: dataset_settings,
        log_answers,
        replacement: Replacement::default(),
        topics: topics.clone(),
        announced: discovery::load_announced(&discovery_file),
        withdrawn: BTreeSet::new(),
    };
    stats.progress.set_limit(live.config.stall_timeout());
    let (retained, retained_out) = watch::channel(live.retained().await);
    let config_channel = ConfigChannel {
        pushes: live.config.remote.enabled.then_some(pushes_out),
        retained: retained_out,
        log_answers: log_answers_out,
    };
    let stop_http = CancellationToken::new();
    let http = health::serve(
        &live.config.http,
        health::Sources {
            stats: stats.clone(),
            outbox: outbox.clone(),
            escalation_queue: escalation_queue.clone(),
        },
        stop_http.clone(),
    )
    .await;
    let mut publisher = tokio::spawn(
        Publisher::new(
            &settings,
            router.clone(),
            stats.clone(),
            outbox.clone(),
            escalation_queue,
            config_channel,
        )?
        .run(outcomes_in),
    );
    // Escalations in flight give up when shutdown begins, so the deadline never costs an answer.
    let stop_escalations = CancellationToken::new();
    let mut escalate = tokio::spawn(escalate::run(
        escalation.clone(),
        looked_in,
        outcomes_out.clone(),
        stop_escalations.clone(),
    ));
    let replayer = tokio::spawn(escalate::replay(
        escalation,
        outcomes_out,
        stop_escalations.clone(),
    ));
    // Stopped once nothing can offer it more: after the escalation stage and the replayer.
    let stop_dataset = CancellationToken::new();
    let dataset = tokio::spawn(dataset::run(
        dataset_settings_in,
        captures_in,
        stats.clone(),
        stop_dataset.clone(),
    ));
    let mut vision = {
        let (queue, stats, replacement) = (queue.clone(), stats.clone(), live.replacement.clone());
        tokio::task::spawn_blocking(move || {
            vision::run_blocking(analyser, queue, looked_out, stats, replacement)
        })
    };
    info!(device = %live.config.device.id, cameras = live.config.cameras.len(), tasks = live.config.tasks.len(), config_version = live.layers.remote.version, "Lookout is running.");
    let mut supervisor = Supervisor::new(Notifier::from_env(&env));
    supervisor.ready(&live.config, &stats);
    let mut checks = tokio::time::interval(supervisor.period());
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = checks.tick() => supervisor.check(&live.config, &stats),
            request = control.recv() => match request {
                Some(Control::Reload) => {
                    live.reload(&origin, &env).await;
                    retained.send_replace(live.retained().await);
                }
                Some(Control::Shutdown) | None => break,
            },
            Some(payload) = pushes_in.recv() => {
                let ack = live.push(&payload, &env).await;
                if !ack.ok {
                    warn!(version = ?ack.version, errors = ?ack.errors, "Refused a config push.");
                }
                outbox.push(&topics.config_ack(), &ack.to_json());
                retained.send_replace(live.retained().await);
            }
            _ = &mut publisher => {
                live.front.cancel.cancel();
                return Err(AppError::StageFailed("publish"));
            }
            _ = &mut vision => {
                live.front.cancel.cancel();
                return Err(AppError::StageFailed("vision"));
            }
            _ = &mut escalate => {
                live.front.cancel.cancel();
                return Err(AppError::StageFailed("escalate"));
            }
        }
    }

    info!("Shutting down.");
    supervisor.stopping();
    // Pushes still waiting are refused by the publisher from now on ("shutting down").
    drop(pushes_in);
    let deadline = Instant::now() + live.config.shutdown_timeout();
    stop_escalations.cancel();
    let mut late = live.front.stop(&router, deadline).await;
    queue.close();
    let producers = vec![
        Stage {
            name: "vision".to_owned(),
            handle: vision,
        },
        Stage {
            name: "escalate".to_owned(),
            handle: escalate,
        },
        Stage {
            name: "escalation queue".to_owned(),
            handle: replayer,
        },
    ];
    late.extend(join_all(producers, deadline).await);
    stop_dataset.cancel();
    let consumers = vec![
        Stage {
            name: "dataset".to_owned(),
            handle: dataset,
        },
        Stage {
            name: "publish".to_owned(),
            handle: publisher,
        },
    ];
    late.extend(join_all(consumers, deadline).await);
    // The endpoint answers until the pipeline has stopped, so a scraper sees the shutdown.
    stop_http.cancel();
    let http = http.map(|handle| Stage {
        name: "http".to_owned(),
        handle,
    });
    late.extend(join_all(http.into_iter().collect(), deadline).await);
    if !late.is_empty() {
        return Err(AppError::ShutdownTimedOut(late));
    }
    info!("Stopped.");
    Ok(())
}
/// Opens the answers' outbox.
async fn open_outbox(config: &Config) -> Result<Arc<Outbox>, AppError> {
    open_store(config.answers_outbox(), config.outbox.limits(), "answers").await
}

/// Opens the offline escalation queue when escalation and the queue are on.
async fn open_escalation_queue(config: &Config) -> Result<Option<Arc<Outbox>>, AppError> {
    if !(config.escalation.enabled && config.escalation.queue.enabled) {
        return Ok(None);
    }
    let limits = config.escalation.queue.as_outbox().limits();
    let queue = open_store(config.escalation_queue(), limits, "escalations").await?;
    Ok(Some(queue))
}

/// Opens an on-disk store of waiting `what` (answers, escalations), saying what an earlier run left.
async fn open_store(
    path: PathBuf,
    limits: Limits,
    what: &'static str,
) -> Result<Arc<Outbox>, AppError> {
    let file = path.display().to_string();
    let (store, recovery) = tokio::task::spawn_blocking(move || Outbox::open(&path, limits))
        .await
        .map_err(|_| AppError::StageFailed("outbox"))??;
    if recovery.recovered > 0 {
        info!(file = %file, waiting = recovery.recovered, "Found {what} from an earlier run still waiting.");
    }
    if let Some(copy) = &recovery.set_aside {
        warn!(file = %file, damaged_bytes = recovery.damaged_bytes, kept = recovery.recovered, copy = %copy.display(), "The file of waiting {what} was damaged: kept every intact one; the original was copied aside.");
    }
    Ok(Arc::new(store))
}
