//! Looking at frames: the `Analyser` answers each question of a job, and the vision worker turns its
//! answers into the `Outcome`s the escalation stage reviews and the publisher sends.
//!
//! The analyser owns the model's sessions and runs on one dedicated blocking worker (model runs take
//! hundreds of milliseconds and must not stall the async runtime; one owner means no locking around a
//! session). It receives a whole job at once, so an implementation can encode the frame once for all the
//! questions asked about it. The worker's output channel is bounded and the worker blocks when it is
//! full: answers are never dropped here, and the job queue upstream absorbs the wait by keeping only the
//! newest frame per camera.

pub mod bench;
pub mod device;
pub mod embedding;
mod huge_pages;
mod loading;
pub mod model;
pub mod operators;
pub mod preprocess;
pub mod prompt;
pub mod runtime;
pub(crate) mod smolvlm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn};
use uuid::Uuid;

use crate::gate::JobQueue;
use crate::message::Frame;
use crate::message::{
    Answer, Clip, Failure, FrameInfo, Outcome, Output, Request, StageTimings, TaskConfig, Tier,
    Timings,
};
use crate::stats::{ModelState, Stats};
use crate::validate::Problems;
pub use device::DeviceChoice;
use device::{AcceleratorKind, Assignment};
pub use loading::load;
pub(crate) use loading::load_and_warm_up;
use preprocess::ImageSettings;
pub use runtime::Provider;
pub use smolvlm::{LoadError, LoadOptions, MaxContext, SmolVlm};

/// Which model, which weights, on what.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisionConfig {
    /// A folder in the official SmolVLM2 ONNX export layout.
    pub model_dir: PathBuf,
    /// Which weights of the export: `auto` (the fastest the folder holds for the device, see
    /// `preferred_variants`), or one of fp32, fp16, int8, uint8, quantized, q4, q4f16, bnb4.
    pub variant: String,
    /// The ONNX Runtime library; default: ORT_DYLIB_PATH, else the first of `runtime::DEFAULT_LIBRARY_PATHS`.
    pub runtime_library: Option<PathBuf>,
    /// Where the model runs: `auto` (an accelerator that runs the graphs, else the CPU), `cpu`, `gpu`
    /// or `npu` (an error when the box cannot); see `device`.
    pub device: DeviceChoice,
    /// Plugin provider libraries to register (a vendor's NPU provider...), besides those installed
    /// beside the runtime library.
    pub provider_libraries: Vec<PathBuf>,
    /// Where providers that compile the graphs for their device keep the compiled form, so that only
    /// the first start pays for it; empty: `compiled` in `device.state_dir`.
    pub compiled_dir: PathBuf,
    /// Execution providers by hand, in order of preference, instead of `device`; the CPU is always
    /// the last resort. Empty: `device` chooses.
    pub providers: Vec<Provider>,
    /// Threads per graph run; 0 lets ONNX Runtime choose (one per core).
    pub threads: usize,
    /// The most text answers decoded together, one decoder run per token for all of them; also the
    /// most waiting jobs (frames of different cameras) the worker takes at once. 1 turns batching off.
    pub batch: usize,
    /// `lookout` (default): Lookout's own decoder, built from the folder's checkpoint by `lookout models
    /// build`, where the folder holds one for the variant, else the official decoder; `official`: the
    /// official export's decoder always.
    pub graphs: Graphs,
    /// The most positions (prompt and answer tokens) one answer may hold in Lookout's decoder, whose
    /// cache is allocated once at this size. 0: the largest prompt the tasks can produce.
    pub max_context: usize,
}

/// Which decoder graph answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Graphs {
    Lookout,
    Official,
}

/// The most positions `max_context` may ask for: SmolVLM2's `max_position_embeddings`.
const MAX_CONTEXT_LIMIT: usize = 8192;

/// Room for the chat template and the question's framing, when the context is sized from the tasks.
const PROMPT_TEXT_ROOM: usize = 256;

/// Room for the text around each picture's rows: a tile's markers, or a clip frame's timestamp line
/// (the 64-frame golden clip takes 15 a frame).
const PICTURE_TEXT_ROOM: usize = 16;

/// The largest prompt and answer the tasks can produce: the context Lookout's decoder is sized for
/// when `max_context` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PromptBounds {
    /// Some task splits its frames into tiles.
    pub split: bool,
    /// The most frames of a task's clip (0: no clips).
    pub clip_frames: usize,
    /// The longest question, in characters (a token is at least one).
    pub question_chars: usize,
    /// The longest answer asked for, in tokens.
    pub max_new_tokens: u32,
}

impl PromptBounds {
    pub fn of(tasks: &[TaskConfig]) -> PromptBounds {
        tasks
            .iter()
            .fold(PromptBounds::default(), |bounds, task| PromptBounds {
                split: bounds.split || task.split,
                clip_frames: bounds
                    .clip_frames
                    .max(task.clip.as_ref().map_or(0, |clip| clip.frames)),
                question_chars: bounds.question_chars.max(task.question.chars().count()),
                max_new_tokens: bounds.max_new_tokens.max(task.max_new_tokens),
            })
    }

    /// The bounds of one request's prompt and answer (`lookout ask`).
    pub fn of_request(request: &Request) -> PromptBounds {
        PromptBounds {
            split: request.split,
            clip_frames: request
                .clip
                .as_ref()
                .map_or(0, |clip| clip.clip.frames.len()),
            question_chars: request.question.chars().count(),
            max_new_tokens: request.max_new_tokens,
        }
    }

    /// The positions such a prompt and answer need at most, with pictures of `image_rows` rows each
    /// cut from frames of `settings`; never less than one picture, `PROMPT_TEXT_ROOM` and 64 answer
    /// tokens (an ask from MQTT or the command line fits).
    pub fn positions(&self, settings: &ImageSettings, image_rows: usize) -> usize {
        let per_side = settings.longest_edge.div_ceil(settings.tile.max(1)) as usize;
        let tiles = if self.split {
            per_side * per_side + 1
        } else {
            1
        };
        let pictures = tiles.max(self.clip_frames);
        let text = PROMPT_TEXT_ROOM + self.question_chars;
        let answer = self.max_new_tokens.max(64) as usize;
        (pictures * (image_rows + PICTURE_TEXT_ROOM) + text + answer).min(MAX_CONTEXT_LIMIT)
    }
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            model_dir: PathBuf::from("models/SmolVLM2-256M-Video-Instruct"),
            variant: AUTO_VARIANT.to_owned(),
            runtime_library: None,
            device: DeviceChoice::Auto,
            provider_libraries: Vec::new(),
            compiled_dir: PathBuf::new(),
            providers: Vec::new(),
            threads: 0,
            batch: 4,
            graphs: Graphs::Lookout,
            max_context: 0,
        }
    }
}

/// The most answers decoded together: past a few, each step's cost grows with the batch and the wait
/// for the slowest answer outweighs the saving.
pub(crate) const MAX_BATCH: usize = 16;

/// The variants the official exports publish.
pub const VARIANTS: [&str; 8] = [
    "fp32",
    "fp16",
    "int8",
    "uint8",
    "quantized",
    "q4",
    "q4f16",
    "bnb4",
];

/// `variant = "auto"`: the fastest variant the model folder holds.
pub(crate) const AUTO_VARIANT: &str = "auto";

/// The variants in order of preference on a kind of device (`None`: the CPU), fastest first.
/// - CPUs: the 8-bit exports are the fastest (bench/results.md: int8 against fp32), then fp32; the
///   4-bit ones unpack their weights on every run, and half precision has few CPU kernels, so fp16
///   comes last.
/// - GPUs: half precision, which their tensor cores and memory bandwidth are built for and the official
///   export ships; the 8-bit exports quantize activations on the fly with operators GPU providers
///   mostly lack, so they come after fp32.
/// - NPUs: half precision too (OpenVINO's NPU plugin and QNN's HTP run fp16 graphs; neither runs
///   the dynamic quantization of the 8-bit exports natively), then fp32, then 8-bit.
///
/// The GPU and NPU orders follow what their providers document; they were not measured here.
pub(crate) fn preferred_variants(device: Option<AcceleratorKind>) -> [&'static str; 8] {
    match device {
        None => [
            "int8",
            "uint8",
            "quantized",
            "fp32",
            "q4",
            "bnb4",
            "q4f16",
            "fp16",
        ],
        Some(AcceleratorKind::Gpu) => [
            "fp16",
            "fp32",
            "q4f16",
            "q4",
            "int8",
            "uint8",
            "quantized",
            "bnb4",
        ],
        Some(AcceleratorKind::Npu) => [
            "fp16",
            "fp32",
            "int8",
            "uint8",
            "quantized",
            "q4f16",
            "q4",
            "bnb4",
        ],
    }
}

/// The precision of Lookout's own decoder that stands in for an official variant's: fp32 and fp16 for
/// themselves, int8 for the 8-bit variants, int4 for the 4-bit ones.
pub fn built_precision(variant: &str) -> Option<&'static str> {
    match variant {
        "fp32" => Some("fp32"),
        "fp16" => Some("fp16"),
        "int8" | "uint8" | "quantized" => Some("int8"),
        "q4" | "bnb4" | "q4f16" => Some("int4"),
        _ => None,
    }
}

/// The graph file suffix of a variant ("" for fp32, "_int8"...), or `None` for an unknown variant.
pub fn variant_suffix(variant: &str) -> Option<String> {
    match variant {
        "fp32" => Some(String::new()),
        known if VARIANTS.contains(&known) => Some(format!("_{known}")),
        _ => None,
    }
}

impl VisionConfig {
    /// The variant to load on `device` (`None`: the CPU): the configured one if the folder holds it,
    /// or for `auto` the first of `preferred_variants` that it holds. The error names the variants
    /// the folder does hold.
    pub(crate) fn resolve_variant(
        &self,
        device: Option<AcceleratorKind>,
    ) -> Result<&'static str, model::ModelError> {
        let present = model::variants_present(&self.model_dir)?;
        let chosen = if self.variant == AUTO_VARIANT {
            preferred_variants(device)
                .into_iter()
                .find(|variant| present.contains(variant))
        } else {
            present
                .iter()
                .copied()
                .find(|variant| *variant == self.variant)
        };
        chosen.ok_or_else(|| model::ModelError::VariantAbsent {
            dir: self.model_dir.clone(),
            variant: if self.variant == AUTO_VARIANT {
                "complete".to_owned()
            } else {
                self.variant.clone()
            },
            present: if present.is_empty() {
                "nothing (no onnx/ graph set of any variant)".to_owned()
            } else {
                present.join(", ")
            },
        })
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.model_dir.as_os_str().is_empty() {
            problems.push(format!("{path}.model_dir"), "must name a folder");
        }
        if self.variant != AUTO_VARIANT && variant_suffix(&self.variant).is_none() {
            problems.push(
                format!("{path}.variant"),
                format!(
                    "{:?} is not auto or one of {}",
                    self.variant,
                    VARIANTS.join(", ")
                ),
            );
        }
        if !self.providers.is_empty() && self.device != DeviceChoice::Auto {
            problems.push(
                format!("{path}.providers"),
                format!(
                    "lists providers by hand, so device must stay \"auto\", not \"{}\" (use one or the other)",
                    self.device
                ),
            );
        }
        for (index, library) in self.provider_libraries.iter().enumerate() {
            if !library.is_absolute() {
                problems.push(
                    format!("{path}.provider_libraries[{index}]"),
                    format!("{} must be an absolute path", library.display()),
                );
            }
        }
        if self.threads > 256 {
            problems.push(
                format!("{path}.threads"),
                format!("{} threads is more than any edge box has", self.threads),
            );
        }
        if self.max_context > MAX_CONTEXT_LIMIT {
            problems.push(
                format!("{path}.max_context"),
                format!(
                    "must be at most {MAX_CONTEXT_LIMIT} (0: sized from the tasks), not {}",
                    self.max_context
                ),
            );
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            problems.push(
                format!("{path}.batch"),
                format!("must be 1 to {MAX_BATCH}, not {}", self.batch),
            );
        }
    }
}

/// What the analyser says about one question.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalAnswer {
    pub text: String,
    /// In [0, 1], from the model's own token probabilities.
    pub confidence: f64,
    /// For text answers: the lowest probability among the chosen tokens.
    pub min_probability: Option<f64>,
    /// The generated token ids.
    pub tokens: Vec<u32>,
    /// The prompt's length in tokens (image rows included).
    pub prompt_tokens: usize,
    pub timings: StageTimings,
}

/// Why the analyser could not answer a question.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AnalyseError {
    /// The frame or question cannot be answered (too small, too long...).
    #[error("bad input: {0}")]
    Input(String),
    /// The model failed to run.
    #[error("model failure: {0}")]
    Model(String),
}

/// Answers questions about frames. Implementations own their model; `answer` is called from one thread.
pub trait Analyser: Send {
    /// The model's name, reported in every answer.
    fn model(&self) -> &str;

    /// Where it runs, as answers say it: `cpu`, `cuda:0`, `openvino:npu`...
    fn runs_on(&self) -> &str;

    /// Where ONNX Runtime put the nodes of each of its graphs (none for a model without graphs).
    fn assignments(&self) -> &[Assignment] {
        &[]
    }

    /// How long loading it took.
    fn load_time(&self) -> Duration;

    /// How many jobs it answers well together (see `answer_jobs`); the worker takes up to this many
    /// waiting jobs at once.
    fn batch(&self) -> usize {
        1
    }

    /// One result per request, in the same order.
    fn answer(
        &mut self,
        frame: &Frame,
        requests: &[Request],
    ) -> Vec<Result<LocalAnswer, AnalyseError>>;

    /// For each job (a frame and its requests), one result per request, in the same order. Answering
    /// several jobs at once lets an implementation share work between them (SmolVLM2 decodes their
    /// text answers together); by default they are answered in turn.
    fn answer_jobs(
        &mut self,
        jobs: &[(&Frame, &[Request])],
    ) -> Vec<Vec<Result<LocalAnswer, AnalyseError>>> {
        jobs.iter()
            .map(|(frame, requests)| self.answer(frame, requests))
            .collect()
    }

    /// One result per request, each about the whole clip (every frame unsplit), in the same order.
    fn answer_clip(
        &mut self,
        clip: &Clip,
        requests: &[Request],
    ) -> Vec<Result<LocalAnswer, AnalyseError>>;
}

/// A model loaded in the background (a new config), waiting for the worker to take it between two
/// jobs: the old model answers until then, and no job is dropped by the switch.
#[derive(Clone, Default)]
pub struct Replacement(Arc<std::sync::Mutex<Option<Box<dyn Analyser>>>>);

impl Replacement {
    pub(crate) fn offer(&self, analyser: Box<dyn Analyser>) {
        *self.0.lock().unwrap() = Some(analyser);
    }

    fn take(&self) -> Option<Box<dyn Analyser>> {
        self.0.lock().unwrap().take()
    }
}

fn model_state(analyser: &dyn Analyser) -> ModelState {
    ModelState {
        name: analyser.model().to_owned(),
        runs_on: analyser.runs_on().to_owned(),
        load_time: analyser.load_time(),
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Results from `answer`, `counts[k]` of them for job `k`; a panicking analyser must not take the
/// daemon down: its requests fail and the worker goes on.
fn answer_guarded(
    counts: &[usize],
    answer: impl FnOnce() -> Vec<Vec<Result<LocalAnswer, AnalyseError>>>,
) -> Vec<Vec<Result<LocalAnswer, AnalyseError>>> {
    if counts.iter().all(|count| *count == 0) {
        return counts.iter().map(|_| Vec::new()).collect();
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(answer)).unwrap_or_else(|_| {
        let panicked = AnalyseError::Model("the analyser panicked".to_owned());
        counts
            .iter()
            .map(|count| vec![Err(panicked.clone()); *count])
            .collect()
    })
}

/// Runs `analyser` on every job until the queue is closed and drained, or the next stage is gone.
/// Jobs already waiting when one is taken (the newest frames of other cameras) are taken with it, up to
/// the analyser's batch, and answered together; the worker never waits for more. Blocking: run it with
/// `spawn_blocking`.
pub fn run_blocking(
    mut analyser: Box<dyn Analyser>,
    jobs: JobQueue,
    output: mpsc::Sender<Output>,
    stats: Arc<Stats>,
    replacement: Replacement,
) {
    let mut model = model_state(analyser.as_ref());
    stats.set_model(model.clone());
    while let Some(first) = jobs.pop_blocking() {
        if let Some(new) = replacement.take() {
            analyser = new;
            model = model_state(analyser.as_ref());
            stats.set_model(model.clone());
            info!(model = %model.name, runs_on = %model.runs_on, "The new model is answering.");
        }
        let mut batch = vec![first];
        while batch.len() < analyser.batch() {
            match jobs.try_pop() {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        let working = stats.progress.working("vision");
        // Questions about a frame are answered together (one encoding), the stills of every job of the
        // batch in one call; each clip on its own.
        let parts: Vec<(Vec<Request>, Vec<Request>)> = batch
            .iter_mut()
            .map(|job| {
                std::mem::take(&mut job.requests)
                    .into_iter()
                    .partition(|request| request.clip.is_none())
            })
            .collect();
        let stills: Vec<(&Frame, &[Request])> = batch
            .iter()
            .zip(&parts)
            .map(|(job, (stills, _))| (&*job.frame, stills.as_slice()))
            .collect();
        let counts: Vec<usize> = parts.iter().map(|(stills, _)| stills.len()).collect();
        let mut results = answer_guarded(&counts, || analyser.answer_jobs(&stills));
        for ((_, clips), results) in parts.iter().zip(&mut results) {
            for request in clips {
                if let Some(clip) = &request.clip {
                    results.extend(
                        answer_guarded(&[1], || {
                            vec![analyser.answer_clip(&clip.clip, std::slice::from_ref(request))]
                        })
                        .into_iter()
                        .flatten(),
                    );
                }
            }
        }
        drop(working);
        for ((job, (stills, clips)), results) in batch.iter().zip(&parts).zip(results) {
            for (request, result) in stills.iter().chain(clips).zip(results) {
                let (task, _) = request.origin.task_and_ask_id();
                let _span =
                    info_span!("vision", camera = %job.frame.camera, task = %task).entered();
                let output_item = Output {
                    outcome: outcome(&job.frame, request, result, &model, &stats),
                    frame: job.frame.clone(),
                    clip: request.clip.as_ref().map(|clip| clip.clip.clone()),
                };
                if output.blocking_send(output_item).is_err() {
                    warn!("The escalation stage is gone; the vision worker stops.");
                    return;
                }
            }
        }
    }
}

/// What the analyser's `result` for `request` about `frame` becomes, counted in `stats`.
fn outcome(
    frame: &Frame,
    request: &Request,
    result: Result<LocalAnswer, AnalyseError>,
    model: &ModelState,
    stats: &Stats,
) -> Outcome {
    let (task, ask_id) = request.origin.task_and_ask_id();
    let (task, ask_id) = (task.to_owned(), ask_id.map(str::to_owned));
    match result {
        Ok(local) => {
            let total = SystemTime::now()
                .duration_since(frame.captured_at)
                .unwrap_or_default();
            stats.answers.inc();
            stats.answer_total_ms.add(total.as_millis() as u64);
            stats.answer_last_ms.set(total.as_millis() as u64);
            let timings = &local.timings;
            let inference_ms =
                timings.preprocess + timings.vision + timings.prefill + timings.decode;
            stats.observe_inference(&model.runs_on, inference_ms / 1000.0);
            debug!(camera = %frame.camera, task = %task, confidence = local.confidence, "Answered.");
            Outcome::Answered(Box::new(Answer {
                id: Uuid::now_v7(),
                camera: frame.camera.clone(),
                task,
                ask_id,
                question: request.question.clone(),
                kind: request.kind.clone(),
                answer: local.text,
                confidence: Some(local.confidence),
                confidence_min: local.min_probability,
                tier: Tier::Local,
                model: model.name.clone(),
                runs_on: Some(model.runs_on.clone()),
                escalated: false,
                escalation: None,
                endpoint: None,
                provider: None,
                request_id: None,
                usage: None,
                local: None,
                frame: FrameInfo {
                    seq: frame.seq,
                    captured_at: humantime::format_rfc3339_millis(frame.captured_at).to_string(),
                    width: frame.image.width(),
                    height: frame.image.height(),
                },
                clip: request.clip.as_ref().map(|clip| clip.info.clone()),
                timings_ms: Timings {
                    capture: millis(frame.capture_time),
                    stages: local.timings,
                    cloud: None,
                    total: millis(total),
                },
                tokens: local.tokens,
            }))
        }
        Err(error) => {
            stats.answer_failures.inc();
            warn!(camera = %frame.camera, task = %task, error = %error, "Could not answer.");
            Outcome::Failed(Failure {
                camera: frame.camera.clone(),
                task,
                ask_id,
                error: error.to_string(),
            })
        }
    }
}
