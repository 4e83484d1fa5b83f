//! The front half: one source and one gate per camera, started together from a config and stopped
//! together (cancel the sources; their channels close, so the gates finish). Cheap, so a reload that
//! changes cameras or tasks rebuilds it whole while the back half keeps running.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span};

use crate::config::Config;
use crate::gate::{self, JobQueue};
use crate::message::AskRouter;
use crate::source;
use crate::stats::Stats;
use crate::vision::model::ModelSpec;
use crate::vision::preprocess::{self, ImageSettings};

/// A named task, so supervision can say which stage is late or failed.
pub(super) struct Stage {
    pub(super) name: String,
    pub(super) handle: JoinHandle<()>,
}

/// The sources and gates of one configuration.
pub(super) struct Front {
    pub(super) cancel: CancellationToken,
    pub(super) stages: Vec<Stage>,
}

impl Front {
    /// No sources, no gates: the front half between two configurations.
    pub(super) fn idle() -> Front {
        Front {
            cancel: CancellationToken::new(),
            stages: Vec::new(),
        }
    }

    pub(super) fn start(
        config: &Config,
        queue: &JobQueue,
        router: &AskRouter,
        stats: &Arc<Stats>,
    ) -> Front {
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
                handle: tokio::spawn(
                    source::run(camera.clone(), frames_out, stats.clone(), cancel.clone())
                        .instrument(info_span!("source", camera = %camera.id)),
                ),
            });
            stages.push(Stage {
                name: format!("gate {}", camera.id),
                handle: tokio::spawn(
                    gate::run(
                        Arc::from(camera.id.as_str()),
                        tasks,
                        frames_in,
                        asks,
                        queue.clone(),
                        stats.clone(),
                        clip_resize.clone(),
                    )
                    .instrument(info_span!("gate", camera = %camera.id)),
                ),
            });
        }
        router.set_routes(routes);
        Front { cancel, stages }
    }

    /// Cancels the sources and waits for every source and gate to finish; returns the late ones.
    pub(super) async fn stop(self, router: &AskRouter, deadline: Instant) -> Vec<String> {
        router.set_routes(HashMap::new());
        self.cancel.cancel();
        join_all(self.stages, deadline).await
    }
}

/// Waits for `stages` until `deadline`, logging panics; returns the names of those still running, which
/// are aborted (a blocking stage cannot be, and ends with the process).
pub(super) async fn join_all(stages: Vec<Stage>, deadline: Instant) -> Vec<String> {
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
