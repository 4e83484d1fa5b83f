//! Live control: what runs and can change while it runs. A reload (SIGHUP) or a push on
//! `config/desired` is validated in full, then applied (secrets held first, the front half rebuilt,
//! the escalation policy and endpoints re-read, a new model loaded and warmed up before it replaces
//! the running one); fields that only take effect at the next start are named, never ignored, and an
//! invalid config leaves the running one in place.

use super::front::Front;
use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::remote::{self, Push};

use crate::config::{self, Config, ConfigOrigin, Layers, RemoteConfig, RemoteLayer};
use crate::dataset;
use crate::env::Env;
use crate::errors;
use crate::escalate::Escalation;
use crate::gate::JobQueue;
use crate::message::AskRouter;
use crate::message::{self, Ack};
use crate::publish::discovery;
use crate::publish::{Retained, Topics};
use crate::stats::Stats;
use crate::validate::FieldError;
use crate::vision::{self, PromptBounds, Replacement, VisionConfig};

/// Config sections that only take effect at the next start, named in the log and in push acks.
pub(super) fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
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
pub(super) const PUSH_CAPACITY: usize = 8;

/// What runs and can change while it runs: the config, its layers, the front half, the model.
pub(super) struct Live {
    pub(super) config: Config,
    pub(super) layers: Layers,
    /// Changed fields that wait for a restart.
    pub(super) restart_needed: Vec<&'static str>,
    pub(super) front: Front,
    pub(super) queue: JobQueue,
    pub(super) router: AskRouter,
    pub(super) stats: Arc<Stats>,
    pub(super) escalation: Arc<Escalation>,
    /// The dataset stage's settings (it opens, moves or closes its folder when they change).
    pub(super) dataset: watch::Sender<dataset::Settings>,
    /// Whether the publisher logs each answer (`mqtt.log_answers`, live).
    pub(super) log_answers: watch::Sender<bool>,
    pub(super) replacement: Replacement,
    pub(super) topics: Topics,
    /// Home Assistant discovery topics announced now (and by the last run, until the first update).
    pub(super) announced: BTreeSet<String>,
    /// Discovery topics withdrawn during this run: their empty messages go out on every connect.
    pub(super) withdrawn: BTreeSet<String>,
}

impl Live {
    /// Applies a validated config: its secrets are held for redaction first (a new token or password
    /// is never logged, even by the stages it starts), then cameras and tasks (the front half is
    /// rebuilt), the escalation policy and endpoints, and a new model, which loads and answers a
    /// warm-up frame in the background before it replaces the running one. Returns the changed fields
    /// that wait for a restart, or why the new model cannot be used (then nothing is applied).
    pub(super) async fn apply(
        &mut self,
        new: Config,
        env: &Env,
    ) -> Result<Vec<&'static str>, FieldError> {
        errors::hold(&config::secrets(&new, env));
        // The runtime library is loaded once per process; every other vision field can change live.
        let live_vision = |vision: &VisionConfig| VisionConfig {
            runtime_library: None,
            ..vision.clone()
        };
        if live_vision(&new.vision) != live_vision(&self.config.vision) {
            let vision = new.vision.clone();
            let prompts = PromptBounds::of(&new.tasks);
            let loaded =
                tokio::task::spawn_blocking(move || vision::load_and_warm_up(&vision, prompts))
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
    pub(super) async fn reload(&mut self, origin: &ConfigOrigin, env: &Env) {
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
    pub(super) async fn push(&mut self, payload: &[u8], env: &Env) -> Ack {
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

    pub(super) async fn persist(&self, layer: &RemoteLayer) -> std::io::Result<()> {
        let (path, layer) = (self.config.remote_layer_file(), layer.clone());
        tokio::task::spawn_blocking(move || remote::save_layer(&path, &layer))
            .await
            .map_err(std::io::Error::other)?
    }

    pub(super) fn reported(&self) -> Vec<u8> {
        remote::reported(
            self.layers.remote.version,
            &self.restart_needed,
            &self.layers.effective(),
        )
    }

    /// The retained messages that describe the box now: `config/reported`, the Home Assistant
    /// discovery of each task, and the withdrawal of entities whose task went away. Records which
    /// topics are announced, so that the next run withdraws what this one leaves behind.
    pub(super) async fn retained(&mut self) -> Retained {
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
