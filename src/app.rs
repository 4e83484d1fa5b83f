//! Wiring and supervision: the one place that knows every stage.
//!
//! The pipeline has two halves with different lifetimes. The back half (the vision worker that owns the
//! model, the escalation stage with its cloud client and offline queue, and the publisher that owns
//! the MQTT connection) lives as long as the process: reloading a model or reconnecting elsewhere is
//! expensive and is not done on a config reload (the escalation policy and endpoints are re-read). The front half (one
//! source and one gate per camera) is cheap and is rebuilt when cameras or tasks change. The job queue
//! joins the two and outlives every front half.
//!
//! Shutdown follows the data: escalations in flight give up (their answers go out local, queued for
//! the cloud); cancel the sources; their channels close, so the gates finish; then the job queue
//! closes, the vision worker drains it and drops its sender, the escalation stage passes on what it
//! holds, and the publisher drains the outcomes, says `offline` and disconnects. All of it runs under the configured deadline, and stages
//! still running at the deadline are named.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigOrigin, Env};
use crate::escalate::{self, Escalation};
use crate::gate::{self, AskRouter, JobQueue};
use crate::outbox::{Limits, Outbox, OutboxError};
use crate::publish::{self, PublishError, PublishSettings, Publisher};
use crate::source;
use crate::stats::Stats;
use crate::vision::{self, Analyser};

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
    fn start(config: &Config, queue: &JobQueue, router: &AskRouter, stats: &Arc<Stats>) -> Front {
        let cancel = CancellationToken::new();
        let mut stages = Vec::new();
        let mut routes = HashMap::new();
        for camera in &config.cameras {
            // Capacity one, newest wins: capture never waits for the gate.
            let (frames_out, frames_in) = watch::channel(None);
            let (route, asks) = AskRouter::channel();
            routes.insert(camera.id.clone(), route);
            let tasks = config
                .tasks
                .iter()
                .filter(|task| task.camera == camera.id)
                .cloned()
                .collect();
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

/// Config sections that only take effect at the next start, named in the log when a reload changes them.
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
    if old.mqtt != new.mqtt {
        names.push("mqtt");
    }
    if old.vision != new.vision {
        names.push("vision");
    }
    // The offline queue's file is opened at start.
    let queue_opened =
        |config: &Config| config.escalation.enabled && config.escalation.queue.enabled;
    if old.escalation.queue != new.escalation.queue || queue_opened(old) != queue_opened(new) {
        names.push("escalation.queue");
    }
    names
}

/// Runs the daemon until `Control::Shutdown` (or the control channel closing).
pub async fn run(
    origin: ConfigOrigin,
    env: Env,
    mut config: Config,
    analyser: Box<dyn Analyser>,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), AppError> {
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
    let settings = PublishSettings {
        mqtt: config.mqtt.clone(),
        device: config.device.id.clone(),
    };
    let mut publisher = tokio::spawn(
        Publisher::new(
            &settings,
            router.clone(),
            stats.clone(),
            outbox,
            escalation_queue.clone(),
        )?
        .run(outcomes_in),
    );
    let escalation = Arc::new(Escalation::new(
        &config.escalation,
        env.clone(),
        stats.clone(),
        escalation_queue,
    ));
    // Escalations in flight give up when shutdown begins, so the deadline never costs an answer.
    let stop_escalations = CancellationToken::new();
    let mut escalate = tokio::spawn(escalate::run(
        escalation.clone(),
        looked_in,
        outcomes_out.clone(),
        stop_escalations.clone(),
    ));
    let replayer = tokio::spawn(escalate::replay(
        escalation.clone(),
        outcomes_out,
        stop_escalations.clone(),
    ));
    let mut vision = {
        let (queue, stats) = (queue.clone(), stats.clone());
        tokio::task::spawn_blocking(move || {
            vision::run_blocking(analyser, queue, looked_out, stats)
        })
    };
    let mut front = Front::start(&config, &queue, &router, &stats);
    info!(device = %config.device.id, cameras = config.cameras.len(), tasks = config.tasks.len(), "Lookout is running.");

    loop {
        tokio::select! {
            request = control.recv() => match request {
                Some(Control::Reload) => {
                    let Some(new) = reload(&origin, &env, &config) else { continue };
                    if new.cameras != config.cameras || new.tasks != config.tasks {
                        let deadline = Instant::now() + config.shutdown_timeout();
                        let late = front.stop(&router, deadline).await;
                        if !late.is_empty() {
                            warn!(stages = ?late, "Stages of the old configuration did not stop in time and were aborted.");
                        }
                        front = Front::start(&new, &queue, &router, &stats);
                        info!(cameras = new.cameras.len(), tasks = new.tasks.len(), "Applied the new cameras and tasks.");
                    }
                    escalation.reconfigure(&new.escalation);
                    config.escalation = new.escalation;
                    config.cameras = new.cameras;
                    config.tasks = new.tasks;
                    config.device.shutdown_timeout_secs = new.device.shutdown_timeout_secs;
                }
                Some(Control::Shutdown) | None => break,
            },
            _ = &mut publisher => {
                front.cancel.cancel();
                return Err(AppError::StageFailed("publish"));
            }
            _ = &mut vision => {
                front.cancel.cancel();
                return Err(AppError::StageFailed("vision"));
            }
            _ = &mut escalate => {
                front.cancel.cancel();
                return Err(AppError::StageFailed("escalate"));
            }
        }
    }

    info!("Shutting down.");
    let deadline = Instant::now() + config.shutdown_timeout();
    stop_escalations.cancel();
    let mut late = front.stop(&router, deadline).await;
    queue.close();
    let back = vec![
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
        Stage {
            name: "publish".to_owned(),
            handle: publisher,
        },
    ];
    late.extend(join_all(back, deadline).await);
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

/// Loads the config again; on any problem logs every one and returns `None` (the running config stays).
fn reload(origin: &ConfigOrigin, env: &Env, running: &Config) -> Option<Config> {
    match origin.load(env) {
        Ok(new) => {
            let later = needs_restart(running, &new);
            if !later.is_empty() {
                warn!(sections = ?later, "These settings changed but take effect only after a restart.");
            }
            Some(new)
        }
        Err(problem) => {
            for field in problem.problems() {
                error!(path = %field.path, problem = %field.message, "Config reload rejected.");
            }
            warn!("Keeping the running configuration.");
            None
        }
    }
}
