//! Model folders: fetching official SmolVLM2 exports from the Hugging Face Hub (`fetch`), checking a
//! fetched folder again against what was fetched (`manifest`), and knowing when `lookout run` has to
//! fetch the default model before it can start. `build` writes Lookout's own decoder graph from a folder's checkpoint.
//!
//! What a folder holds (the variants, their graph files, which variants are complete) is the vision
//! stage's knowledge (`vision::model`, `vision::variant_suffix`): vision reads it at every start and
//! loads what it finds, and must not depend on a module that downloads. So `models` names `vision` for
//! the layout, and nothing later in the stream; vision never names `models`.

pub mod build;
pub mod fetch;
pub mod manifest;

use std::path::PathBuf;

use crate::vision::model::variants_present;
use crate::vision::{AUTO_VARIANT, VisionConfig, preferred_variants};

/// The model `lookout models fetch` and a first `lookout run` download.
pub const DEFAULT_MODEL: &str = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct";

/// Where a fetched model goes unless told: `models/<name without the owner>`.
pub fn default_dir(name: &str) -> PathBuf {
    PathBuf::from("models").join(name.rsplit('/').next().unwrap_or(name))
}

/// The variant of `DEFAULT_MODEL` that `lookout run` must fetch before it starts: some when `vision`
/// names the default folder and that folder holds no complete variant (it is missing, or an
/// interrupted fetch left it incomplete); for `auto`, the first choice on the device asked for (the
/// CPU's unless `vision.device` names an accelerator). A folder the config
/// names on purpose is never filled by itself.
pub fn default_variant_to_fetch(vision: &VisionConfig) -> Option<&str> {
    let dir = &vision.model_dir;
    if *dir != VisionConfig::default().model_dir
        || variants_present(dir).is_ok_and(|present| !present.is_empty())
    {
        return None;
    }
    Some(if vision.variant == AUTO_VARIANT {
        preferred_variants(vision.device.kind())[0]
    } else {
        vision.variant.as_str()
    })
}
