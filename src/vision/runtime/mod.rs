//! ONNX Runtime: finding the shared library, loading it once per process, and building sessions on the
//! execution providers the config lists.
//!
//! The library is loaded at run time (`ort`'s load-dynamic), never linked or downloaded at build time, so
//! one binary runs with whatever runtime build a box has (CPU-only, CUDA, OpenVINO...). Loading goes
//! through `ort::init_from`, which returns an error for a missing or too old library instead of panicking;
//! ONNX Runtime allows one environment per process, so it is created once and shared.
//!
//! A session is placed by a `Placement`: the CPU, an accelerator `device::candidates` chose, or the
//! execution providers `vision.providers` lists by hand, tried in order (one that this runtime build
//! lacks or that fails to register is skipped with a warning naming it). The CPU provider always takes
//! what the others cannot run. Every session records where ONNX Runtime put each node
//! (`Assignment`), which says whether an accelerator really runs the graph.
//!
//! Runtimes come with their accelerators beside them, as `deploy/fetch-onnxruntime.sh` lays them out:
//! the CUDA and cuDNN libraries of the GPU build in a `cuda/` folder next to the library (preloaded
//! before any session, so a box needs only NVIDIA's driver), and plugin provider libraries such as
//! OpenVINO's in a folder of their own next to it (registered with the environment, like those
//! `vision.provider_libraries` names).
//!
//!
//! Sessions are built in `session`: their placement on the providers, their settings, and where
//! ONNX Runtime put their nodes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod session;

pub use session::{Opened, Placement, Weights, compiles, load_session};

use super::device::{AcceleratorKind, Inventory, Offer};

use ort::environment::Environment;
use ort::ep;
use ort::ep::ExecutionProvider;
use serde::Deserialize;
use tracing::{info, warn};

/// Where the runtime library is looked for when neither the config nor `ORT_DYLIB_PATH` names it.
pub(crate) const DEFAULT_LIBRARY_PATHS: [&str; 2] = [
    ".ort/lib/libonnxruntime.so",
    "/usr/lib/lookout/libonnxruntime.so",
];

/// The folder beside the runtime library that holds the CUDA and cuDNN libraries of a GPU build.
const CUDA_FOLDER: &str = "cuda";

/// How plugin provider libraries are named (`libonnxruntime_providers_openvino_plugin.so`...).
const PLUGIN_PREFIX: &str = "libonnxruntime_providers_";

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
    #[error("cannot register the provider library {path}: {reason}")]
    ProviderLibrary { path: PathBuf, reason: String },
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
    if let Err(error) = share_cpu_arena(&environment) {
        warn!(error = %error, "Cannot share one CPU memory arena between the sessions; each keeps its own.");
    }
    preload_cuda(library);
    *shared = Some(environment.clone());
    Ok(environment)
}

/// Registers one CPU memory arena with the environment, for every session made with
/// `session.use_env_allocators` (see the module's notes on the arena; without it, each session makes
/// its own). It grows by what is asked, not by powers of two. ort has no wrapper for this part of the
/// C API.
#[allow(unsafe_code)]
fn share_cpu_arena(environment: &Environment) -> ort::Result<()> {
    use ort::AsPointer;
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    /// ONNX Runtime's `ArenaExtendStrategy::kSameAsRequested`.
    const SAME_AS_REQUESTED: usize = 1;
    let memory = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )?;
    let keys = [c"arena_extend_strategy".as_ptr()];
    let values = [SAME_AS_REQUESTED];
    let api = ort::api();
    let mut config: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: the keys and values outlive the call; the configuration is released after use (ONNX
    // Runtime copies it) and the status of each call is checked.
    unsafe {
        ort::Error::result_from_status((api.CreateArenaCfgV2)(
            keys.as_ptr(),
            values.as_ptr(),
            keys.len(),
            &mut config,
        ))?;
        let registered = ort::Error::result_from_status((api.CreateAndRegisterAllocator)(
            environment.ptr().cast_mut(),
            memory.ptr(),
            config,
        ));
        (api.ReleaseArenaCfg)(config);
        registered
    }
}

/// Loads the CUDA and cuDNN libraries of a GPU build from the `cuda/` folder beside `library`, so that
/// its CUDA provider finds them without `LD_LIBRARY_PATH`. A failure is only a warning: the provider
/// then fails to start with its own message, and the CPU answers.
fn preload_cuda(library: &Path) {
    let Some(folder) = library.parent().map(|parent| parent.join(CUDA_FOLDER)) else {
        return;
    };
    if !folder.is_dir() {
        return;
    }
    // cuDNN's runtime-compiled engines need the driver's library: without a driver there is nothing
    // to preload for.
    if let Err(missing) = nvidia_driver() {
        info!(folder = %folder.display(), "{missing}: the CUDA libraries are not loaded.");
        return;
    }
    // Libraries NVIDIA's load at run time by their bare names, which ort's list lacks: nvJitLink (cuFFT,
    // cuDNN) and NVRTC's builtins (NVRTC has no run path to find them beside itself).
    let late = files_named(&folder, |name| {
        name.starts_with("libnvJitLink.so") || name.starts_with("libnvrtc-builtins.so")
    });
    let loaded = late
        .iter()
        .try_for_each(|path| {
            ort::util::preload_dylib(path.as_path())
                .map_err(|error| ort::Error::new(format!("{}: {error}", path.display())))
        })
        .and_then(|()| ep::cuda::preload_dylibs(Some(&folder), Some(&folder)));
    match loaded {
        Ok(()) => info!(folder = %folder.display(), "CUDA and cuDNN libraries loaded."),
        Err(error) => {
            warn!(folder = %folder.display(), error = %error, "Cannot load the CUDA libraries; the CUDA provider will not start.")
        }
    }
}

/// Whether NVIDIA's driver library loads: without it no CUDA provider can start, whatever else is
/// installed, and this says why in words a user can act on.
fn nvidia_driver() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            ort::util::preload_dylib("libcuda.so.1").map_err(|_| {
                "no NVIDIA driver (libcuda.so.1 does not load), so no NVIDIA GPU to run on"
                    .to_owned()
            })
        })
        .clone()
}

/// Names of the provider libraries registered with the process's environment, so each is registered
/// once however many models are loaded.
static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The plugin provider libraries to register: those `configured`, then those installed beside
/// `library` (`libonnxruntime_providers_*.so` in a folder next to it, as `--openvino` installs).
pub fn provider_libraries(library: &Path, configured: &[PathBuf]) -> Vec<PathBuf> {
    let mut libraries = configured.to_vec();
    // Absolute: ONNX Runtime resolves a relative library path against its own folder.
    let Some(parent) = library
        .parent()
        .and_then(|parent| std::path::absolute(parent).ok())
    else {
        return libraries;
    };
    for folder in files_named(&parent, |_| true) {
        if folder.is_dir() {
            libraries.extend(files_named(&folder, |name| {
                name.starts_with(PLUGIN_PREFIX) && name.ends_with(".so")
            }));
        }
    }
    libraries
}

/// The files in `folder` whose names `wanted` takes, in name order.
fn files_named(folder: &Path, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| wanted(&name.to_string_lossy()))
        })
        .collect();
    files.sort();
    files
}

/// Registers each plugin provider library of `libraries` with `environment` (once per process), so the
/// devices it drives join the environment's discovery.
pub fn register_provider_libraries(
    environment: &Environment,
    libraries: &[PathBuf],
) -> Result<(), RuntimeError> {
    let mut registered = REGISTERED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for path in libraries {
        if registered.contains(path) {
            continue;
        }
        let fail = |reason: String| RuntimeError::ProviderLibrary {
            path: path.clone(),
            reason,
        };
        if !path.is_file() {
            return Err(fail("the file does not exist".to_owned()));
        }
        // The registration name only has to be unique: the file's own name is.
        let name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        environment
            .register_ep_library(&name, path)
            .map_err(|error| fail(error.to_string()))?;
        info!(library = %path.display(), "Provider library registered.");
        registered.push(path.clone());
    }
    Ok(())
}

/// What the box offers: the accelerators among the devices `environment` discovers, the built-in
/// accelerator providers of its runtime library, and the accelerator device nodes under `dev`.
pub fn inventory(environment: &Environment, library: &Path, dev: &Path) -> Inventory {
    use ort::memory::DeviceType;
    let mut offers: Vec<Offer> = environment
        .devices()
        .enumerate()
        .filter_map(|(index, device)| {
            let kind = match device.hardware_device().ty() {
                DeviceType::GPU => AcceleratorKind::Gpu,
                DeviceType::NPU => AcceleratorKind::Npu,
                _ => return None,
            };
            Some(Offer::discovered(index, kind, device.ep().ok()?))
        })
        .collect();
    let built_in: Vec<Offer> = [Provider::Cuda, Provider::Qnn]
        .into_iter()
        .filter(|provider| {
            accelerator(*provider).is_some_and(|(_, available, _)| matches!(available, Ok(true)))
        })
        .filter_map(Offer::built_in)
        .filter(|offer| !offers.iter().any(|seen| seen.provider == offer.provider))
        .collect();
    offers.extend(built_in);
    Inventory {
        offers,
        nodes: super::device::accelerator_nodes(dev),
        library: library.to_owned(),
    }
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
