//! Loading the analyser on the device `vision.device` chooses: the accelerators worth trying (see
//! `device`), each loaded with the variant that suits it, checked for graphs that fall back to the CPU
//! and for a warm-up answer, then the CPU; and the warm-up a pushed model passes before it answers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::device::{self, DeviceChoice, Offer};
use super::runtime::{self, Placement};
use super::{
    AUTO_VARIANT, Analyser, LoadError, LoadOptions, MaxContext, PromptBounds, SmolVlm,
    VisionConfig, variant_suffix,
};
use crate::message::{AnswerKind, Frame, Origin, Request};

/// Loads the SmolVLM2 analyser `config` names, its cache sized for the prompts within `prompts` (see
/// `PromptBounds::of` for a config's tasks) unless `max_context` says, on the device `vision.device`
/// chooses (see `device`): each accelerator worth trying is loaded and warmed up in turn, and under
/// `auto` the CPU answers when none passes.
pub fn load(config: &VisionConfig, prompts: PromptBounds) -> Result<Box<dyn Analyser>, LoadError> {
    if config.variant != AUTO_VARIANT && variant_suffix(&config.variant).is_none() {
        return Err(LoadError::Variant(config.variant.clone()));
    }
    let library = runtime::resolve_library(config.runtime_library.as_deref())?;
    let environment = runtime::environment(&library)?;
    runtime::register_provider_libraries(
        &environment,
        &runtime::provider_libraries(&library, &config.provider_libraries),
    )?;
    if !config.providers.is_empty() {
        return load_on(
            config,
            prompts,
            &library,
            Placement::Listed(config.providers.clone(), config.compiled_dir.clone()),
        );
    }
    // A folder without a model fails here, before any accelerator is blamed for it.
    config.resolve_variant(None)?;
    let inventory = runtime::inventory(&environment, &library, Path::new("/dev"));
    let mut tried: Vec<(Offer, String)> = Vec::new();
    for offer in device::candidates(config.device, &inventory)? {
        if runtime::compiles(&offer) {
            info!(runs_on = %offer.runs_on, compiled_dir = %config.compiled_dir.display(), "Trying the accelerator: its provider compiles the graphs on the first start (the slow one) and keeps them for the next.");
        } else {
            info!(runs_on = %offer.runs_on, provider = %offer.provider, "Trying the accelerator.");
        }
        let started = std::time::Instant::now();
        let why = match load_on(
            config,
            prompts,
            &library,
            Placement::Accelerator(offer.clone(), config.compiled_dir.clone()),
        ) {
            Ok(analyser) => match accept(config.device, analyser) {
                Ok(analyser) => {
                    info!(runs_on = %offer.runs_on, seconds = started.elapsed().as_secs_f64(), "Loaded and warmed up on the accelerator.");
                    return Ok(analyser);
                }
                Err(why) => why,
            },
            // What fails only on the accelerator: a graph its provider cannot open, a cache it
            // cannot hold. Anything else (the folder, the tokenizer) fails on every device.
            Err(error @ (LoadError::Runtime(_) | LoadError::Cache { .. })) => error.to_string(),
            Err(error) => return Err(error),
        };
        tried.push((offer, why.trim_end().to_owned()));
    }
    match config.device {
        DeviceChoice::Gpu | DeviceChoice::Npu => {
            return Err(device::unusable(config.device, &tried).into());
        }
        DeviceChoice::Auto => {
            if let Some(found) = device::cpu_reason(&inventory, &tried) {
                warn!(found = %found, "An accelerator was found but cannot answer; the CPU answers.");
            }
        }
        DeviceChoice::Cpu => {}
    }
    load_on(config, prompts, &library, Placement::Cpu)
}

/// Loads the analyser on `placement`, with the variant that suits it.
fn load_on(
    config: &VisionConfig,
    prompts: PromptBounds,
    library: &Path,
    placement: Placement,
) -> Result<Box<dyn Analyser>, LoadError> {
    let kind = match &placement {
        Placement::Accelerator(offer, _) => Some(offer.kind),
        Placement::Cpu | Placement::Listed(..) => None,
    };
    let variant = config.resolve_variant(kind)?;
    if config.variant == AUTO_VARIANT {
        info!(model_dir = %config.model_dir.display(), variant = %variant, "Chose the fastest model variant this folder holds for the device.");
    }
    let options = LoadOptions {
        model_dir: config.model_dir.clone(),
        suffix: variant_suffix(variant).unwrap_or_default(),
        library: library.to_owned(),
        placement,
        threads: config.threads,
        batch: config.batch,
        graphs: config.graphs,
        max_context: match config.max_context {
            0 => MaxContext::Largest(prompts),
            positions => MaxContext::Positions(positions),
        },
    };
    Ok(Box::new(SmolVlm::load(&options)?))
}

/// An analyser loaded on an accelerator, if it keeps its graphs there and answers a warm-up frame. Under
/// `auto` a graph whose heavy operators fell back to the CPU is refused; on an accelerator asked for by
/// name it only earns a warning.
fn accept(
    choice: DeviceChoice,
    mut analyser: Box<dyn Analyser>,
) -> Result<Box<dyn Analyser>, String> {
    for assignment in analyser.assignments() {
        info!(graph = %assignment.graph, provider = %assignment.provider, nodes = assignment.nodes, on_cpu = assignment.fell_back.len(), "Graph placed.");
        if let Some(refusal) = assignment.refusal() {
            if choice == DeviceChoice::Auto {
                return Err(refusal);
            }
            warn!(runs_on = %analyser.runs_on(), "{refusal}");
        }
    }
    warm_up(analyser.as_mut())?;
    Ok(analyser)
}

/// Loads the analyser `config` names and has it answer one question about a plain frame, so that a
/// model is only put in service once it is known to answer.
pub(crate) fn load_and_warm_up(
    config: &VisionConfig,
    prompts: PromptBounds,
) -> Result<Box<dyn Analyser>, String> {
    let mut analyser = load(config, prompts).map_err(|error| error.to_string())?;
    warm_up(analyser.as_mut())?;
    Ok(analyser)
}

/// Has `analyser` answer one question about a plain frame.
fn warm_up(analyser: &mut dyn Analyser) -> Result<(), String> {
    let frame = Frame {
        camera: Arc::from("warm-up"),
        seq: 0,
        captured_at: SystemTime::now(),
        capture_time: Duration::ZERO,
        image: image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128])),
    };
    let request = Request {
        origin: Origin::Task(Arc::from("warm-up")),
        question: "Is anything here?".to_owned(),
        kind: AnswerKind::YesNo,
        split: false,
        max_new_tokens: 1,
        permit: None,
        clip: None,
    };
    let answers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        analyser.answer(&frame, std::slice::from_ref(&request))
    }))
    .map_err(|_| "the model panicked on the warm-up frame".to_owned())?;
    match answers.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err(error)) => Err(format!("the model failed the warm-up frame: {error}")),
        None => Err("the model gave no answer to the warm-up frame".to_owned()),
    }
}
