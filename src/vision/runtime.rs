//! ONNX Runtime: finding the shared library, loading it once per process, and building sessions on the
//! execution providers the config lists.
//!
//! The library is loaded at run time (`ort`'s load-dynamic), never linked or downloaded at build time, so
//! one binary runs with whatever runtime build a box has (CPU-only, CUDA, OpenVINO...). Loading goes
//! through `ort::init_from`, which returns an error for a missing or too old library instead of panicking;
//! ONNX Runtime allows one environment per process, so it is created once and shared.
//!
//! Execution providers are tried in the configured order; one that this runtime build lacks or that fails
//! to register is skipped with a warning naming it, and the CPU provider always remains as the last resort.
//!
//! Session settings are chosen for a box that runs one model for months next to other work:
//! - every graph optimisation ONNX Runtime has (`All`, its own default; `ort`'s `Level3` stops short of
//!   some fusions);
//! - ONNX Runtime's CPU memory arena, without the memory pattern. An arena keeps its high-water mark for
//!   the life of the session, so the vision encoder sees one image per run and the mark is one image's
//!   activations. Without the arena every run took its buffers fresh from the system: five million page
//!   faults for a 13-tile answer, against under half a million with it. With it (`lookout bench`, int8,
//!   13 tiles) TTFT went from 7.7 to 6.7 s and the bench's peak RSS from 1.53 to 1.15 GB; for one image
//!   the encoder is 3-6% faster and `lookout ask --kind yes_no` peaks at 550 MB (565 without). A 13-tile
//!   `ask` alone peaks at 910 MB (700 without); with the arena on the vision encoder only, 1.65 GB, so
//!   both sessions have it. The memory pattern added 130-170 MB for one image and no speed;
//! - thread-pool threads stop spinning when a run returns (`session.force_spinning_stop`). By default an
//!   idle pool thread spins for tens of milliseconds after every run, on a core the next stage needs:
//!   the vision encoder's pool spun through the prefill (each session has its own pool) and the
//!   decoder's through the next frame's preprocessing. Stopping it made prefill about 20% faster and
//!   preprocessing inside an answer about 40% faster, with decoding unchanged: within a run, where the
//!   decoder's thousands of small operators need it, threads still spin (`lookout bench`, int8 and fp32,
//!   two rounds each way).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep;
use ort::ep::ExecutionProvider;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use serde::Deserialize;
use tracing::{info, warn};

/// Where the runtime library is looked for when neither the config nor `ORT_DYLIB_PATH` names it.
pub(crate) const DEFAULT_LIBRARY_PATHS: [&str; 2] = [
    ".ort/lib/libonnxruntime.so",
    "/usr/lib/lookout/libonnxruntime.so",
];

/// An execution provider, in the config's `vision.providers` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Cuda,
    Tensorrt,
    Openvino,
    Qnn,
    Coreml,
    Cpu,
}

/// Why the runtime could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "no ONNX Runtime library found (looked at {tried}); install it with deploy/fetch-onnxruntime.sh or name it \
         in vision.runtime_library or ORT_DYLIB_PATH"
    )]
    NotFound { tried: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
    #[error("cannot load the graph {path}: {reason}")]
    Session { path: PathBuf, reason: String },
}

/// The library to load: the configured path, else the first default that exists.
pub fn resolve_library(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = configured {
        return Ok(path.to_owned());
    }
    DEFAULT_LIBRARY_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .ok_or_else(|| RuntimeError::NotFound {
            tried: DEFAULT_LIBRARY_PATHS.join(", "),
        })
}

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// The process's ONNX Runtime environment, loading `library` the first time.
pub fn environment(library: &Path) -> Result<Environment, RuntimeError> {
    let mut shared = ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(environment) = shared.as_ref() {
        return Ok(environment.clone());
    }
    if !library.exists() {
        return Err(RuntimeError::NotFound {
            tried: library.display().to_string(),
        });
    }
    let environment = ort::init_from(library)
        .map_err(|error| RuntimeError::Load {
            path: library.to_owned(),
            reason: error.to_string(),
        })?
        .with_name("lookout")
        .build()
        .map_err(|error| RuntimeError::Environment(error.to_string()))?;
    info!(library = %library.display(), "ONNX Runtime loaded.");
    *shared = Some(environment.clone());
    Ok(environment)
}

/// An accelerator's provider: its name, whether the loaded runtime library has it, and its
/// registration; `None` for the CPU, which `with_providers` registers last with its own settings.
type Accelerator = (
    &'static str,
    ort::Result<bool>,
    ep::ExecutionProviderDispatch,
);

fn accelerator(provider: Provider) -> Option<Accelerator> {
    fn found<P: ExecutionProvider + Default + Into<ep::ExecutionProviderDispatch>>(
        name: &'static str,
    ) -> Option<Accelerator> {
        Some((name, P::is_available(), P::default().into()))
    }
    match provider {
        Provider::Cuda => found::<ep::CUDA>("cuda"),
        Provider::Tensorrt => found::<ep::TensorRT>("tensorrt"),
        Provider::Openvino => found::<ep::OpenVINO>("openvino"),
        Provider::Qnn => found::<ep::QNN>("qnn"),
        Provider::Coreml => found::<ep::CoreML>("coreml"),
        Provider::Cpu => None,
    }
}

/// A device ONNX Runtime sees, as `lookout doctor` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenDevice {
    /// cpu, gpu, npu or fpga.
    pub kind: &'static str,
    pub vendor: String,
    /// The execution provider that runs on it, e.g. `CPUExecutionProvider`.
    pub provider: String,
}

/// The devices the runtime library of `environment` sees, with the provider of each.
pub fn devices(environment: &Environment) -> Vec<SeenDevice> {
    use ort::memory::DeviceType;
    environment
        .devices()
        .map(|device| {
            let hardware = device.hardware_device();
            SeenDevice {
                kind: match hardware.ty() {
                    DeviceType::CPU => "cpu",
                    DeviceType::GPU => "gpu",
                    DeviceType::NPU => "npu",
                    DeviceType::FPGA => "fpga",
                },
                vendor: hardware.vendor().unwrap_or("unknown").to_owned(),
                provider: device.ep().unwrap_or("unknown").to_owned(),
            }
        })
        .collect()
}

/// Each accelerator provider Lookout can register, and whether the loaded runtime library has it.
pub fn accelerator_providers() -> Vec<(&'static str, bool)> {
    [
        Provider::Cuda,
        Provider::Tensorrt,
        Provider::Openvino,
        Provider::Qnn,
        Provider::Coreml,
    ]
    .into_iter()
    .filter_map(accelerator)
    .map(|(name, available, _)| (name, matches!(available, Ok(true))))
    .collect()
}

/// Registers the usable providers of `wanted`, in order, on `builder`; returns it with the names in use.
/// The CPU provider is always there, last.
fn with_providers(
    mut builder: SessionBuilder,
    wanted: &[Provider],
) -> (SessionBuilder, Vec<&'static str>) {
    let mut used = Vec::new();
    // The providers after the CPU's would never be reached.
    for (name, available, registration) in
        wanted.iter().map_while(|provider| accelerator(*provider))
    {
        if !matches!(available, Ok(true)) {
            warn!(
                provider = name,
                "This ONNX Runtime build has no such execution provider; falling back."
            );
            continue;
        }
        builder = match builder.with_execution_providers([registration.error_on_failure()]) {
            Ok(builder) => {
                used.push(name);
                builder
            }
            Err(error) => {
                warn!(provider = name, error = %error, "Execution provider failed to register; falling back.");
                error.recover()
            }
        };
    }
    used.push("cpu");
    let cpu = ep::CPU::default().with_arena_allocator(true).build();
    match builder.with_execution_providers([cpu]) {
        Ok(builder) => (builder, used),
        Err(error) => {
            warn!(error = %error, "The CPU provider's settings were refused; using its defaults.");
            (error.recover(), used)
        }
    }
}

/// Loads one graph with the configured providers and threads; returns it with the providers in use.
pub fn load_session(
    environment: &Environment,
    path: &Path,
    providers: &[Provider],
    threads: usize,
) -> Result<(Session, Vec<&'static str>), RuntimeError> {
    let fail = |reason: String| RuntimeError::Session {
        path: path.to_owned(),
        reason,
    };
    if !path.is_file() {
        return Err(fail("the file does not exist".to_owned()));
    }
    let builder = Session::builder(environment).map_err(|error| fail(error.to_string()))?;
    let builder = builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|error| fail(error.to_string()))?
        .with_memory_pattern(false)
        .map_err(|error| fail(error.to_string()))?
        .with_config_entry("session.force_spinning_stop", "1")
        .map_err(|error| fail(error.to_string()))?;
    let builder = if threads > 0 {
        builder
            .with_intra_threads(threads)
            .map_err(|error| fail(error.to_string()))?
    } else {
        builder
    };
    let (mut builder, used) = with_providers(builder, providers);
    let session = builder
        .commit_from_file(path)
        .map_err(|error| fail(error.to_string()))?;
    Ok((session, used))
}
