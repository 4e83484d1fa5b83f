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

mod front;
mod live;

use front::{Front, Stage, join_all};
use live::{Live, PUSH_CAPACITY};

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{self, Config, ConfigOrigin, Layers};
use crate::dataset;
use crate::env::Env;
use crate::errors;
use crate::escalate::{self, Escalation};
use crate::gate::JobQueue;
use crate::health;
use crate::message::{AskRouter, CaptureSink};
use crate::outbox::{Limits, Outbox, OutboxError};
use crate::publish::discovery;
use crate::publish::{self, ConfigChannel, PublishError, PublishSettings, Publisher, Topics};
use crate::service::notify::Notifier;
use crate::service::watchdog::Supervisor;
use crate::service::{self, Control};
use crate::stats::Stats;
use crate::vision::{self, Analyser, Replacement};

/// Outcomes a stage may hold before the next takes them (vision to escalation, escalation to
/// publish); when full, the sender waits (answers are never dropped between vision and publish).
const OUTCOME_CAPACITY: usize = 16;

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
    let publisher = tokio::spawn(
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
    let stop_escalations = CancellationToken::new();
    let escalate = tokio::spawn(escalate::run(
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
    let stop_dataset = CancellationToken::new();
    let dataset = tokio::spawn(dataset::run(
        dataset_settings_in,
        captures_in,
        stats.clone(),
        stop_dataset.clone(),
    ));
    let vision = {
        let (queue, stats, replacement) = (queue.clone(), stats.clone(), live.replacement.clone());
        tokio::task::spawn_blocking(move || {
            vision::run_blocking(analyser, queue, looked_out, stats, replacement)
        })
    };
    let mut back = BackHalf {
        vision,
        escalate,
        replayer,
        dataset,
        publisher,
        http,
        stop_escalations,
        stop_dataset,
        stop_http,
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
            _ = &mut back.publisher => {
                live.front.cancel.cancel();
                return Err(AppError::StageFailed("publish"));
            }
            _ = &mut back.vision => {
                live.front.cancel.cancel();
                return Err(AppError::StageFailed("vision"));
            }
            _ = &mut back.escalate => {
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
    back.stop_escalations.cancel();
    let mut late = live.front.stop(&router, deadline).await;
    queue.close();
    late.extend(back.join(deadline).await);
    if !late.is_empty() {
        return Err(AppError::ShutdownTimedOut(late));
    }
    info!("Stopped.");
    Ok(())
}
/// The stages that live as long as the process, as `run` holds them until shutdown.
struct BackHalf {
    vision: JoinHandle<()>,
    escalate: JoinHandle<()>,
    replayer: JoinHandle<()>,
    dataset: JoinHandle<()>,
    publisher: JoinHandle<()>,
    http: Option<JoinHandle<()>>,
    /// Escalations in flight give up when shutdown begins, so the deadline never costs an answer.
    stop_escalations: CancellationToken,
    /// Stopped once nothing can offer the dataset more: after escalation and the replayer.
    stop_dataset: CancellationToken,
    stop_http: CancellationToken,
}

impl BackHalf {
    /// Once the job queue is closed: waits for the stages in the data's order until `deadline` (vision
    /// drains the queue, escalation and the replayer pass on what they hold, then the dataset and the
    /// publisher, the health endpoint last); returns the names of those still running.
    async fn join(self, deadline: Instant) -> Vec<String> {
        let stage = |name: &str, handle| Stage {
            name: name.to_owned(),
            handle,
        };
        let mut late = join_all(
            vec![
                stage("vision", self.vision),
                stage("escalate", self.escalate),
                stage("escalation queue", self.replayer),
            ],
            deadline,
        )
        .await;
        self.stop_dataset.cancel();
        let consumers = vec![
            stage("dataset", self.dataset),
            stage("publish", self.publisher),
        ];
        late.extend(join_all(consumers, deadline).await);
        // The endpoint answers until the pipeline has stopped, so a scraper sees the shutdown.
        self.stop_http.cancel();
        let http = self.http.map(|handle| stage("http", handle));
        late.extend(join_all(http.into_iter().collect(), deadline).await);
        late
    }
}

/// Runs the daemon until a shutdown signal (the host's signals, `service::forward_signals`).
pub async fn run_until_signalled(
    origin: ConfigOrigin,
    env: Env,
    loaded: (Config, Layers),
    analyser: Box<dyn Analyser>,
) -> Result<(), AppError> {
    let (control, requests) = mpsc::channel(4);
    let signals = tokio::spawn(service::forward_signals(control));
    let result = run(origin, env, loaded, analyser, requests).await;
    signals.abort();
    result
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
