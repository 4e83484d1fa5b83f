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
//!   both sessions have it. One arena, registered with the environment, serves every session
//!   (`session.use_env_allocators`): the vision encoder and the decoder run one after the other, so
//!   the decoder's prefill reuses what the encoder's runs left free, and it grows by what is asked
//!   rather than by powers of two (`lookout bench`, int8, 13 tiles: peak RSS of one answer 655 MB
//!   against 681 with an arena per session, at the same speed). The memory pattern added 130-170 MB for
//!   one image and no speed;
//! - thread-pool threads stop spinning when a run returns (`session.force_spinning_stop`). By default an
//!   idle pool thread spins for tens of milliseconds after every run, on a core the next stage needs:
//!   the vision encoder's pool spun through the prefill (each session has its own pool) and the
//!   decoder's through the next frame's preprocessing. Stopping it made prefill about 20% faster and
//!   preprocessing inside an answer about 40% faster, with decoding unchanged: within a run, where the
//!   decoder's thousands of small operators need it, threads still spin (`lookout bench`, int8 and fp32,
//!   two rounds each way).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::device::{AcceleratorKind, Assignment, Inventory, Offer, Route};

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

/// Where a model's sessions run.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// The CPU provider alone.
    Cpu,
    /// One accelerator of the box's inventory, and the folder where its provider keeps the graphs it
    /// compiles; the CPU takes what it cannot run.
    Accelerator(Offer, PathBuf),
    /// `vision.providers`, listed by hand: each this runtime has, in order, then the CPU; and the folder
    /// where TensorRT keeps the engines it compiles.
    Listed(Vec<Provider>, PathBuf),
}

impl Placement {
    /// Whether the sessions' inputs and outputs live in host memory (no accelerator placed).
    pub fn host_memory(&self) -> bool {
        match self {
            Placement::Cpu => true,
            Placement::Accelerator(..) => false,
            Placement::Listed(providers, _) => providers.iter().all(|p| *p == Provider::Cpu),
        }
    }
}

/// A graph opened on its placement.
pub struct Opened {
    pub session: Session,
    /// Where it runs, as answers say it: `cpu`, `cuda:0`, `openvino:npu`, or the first listed
    /// provider that registered.
    pub runs_on: String,
    /// Where ONNX Runtime put its nodes.
    pub assignment: Assignment,
}

/// The CPU provider with Lookout's settings (the arena: see the module's notes).
fn cpu_provider() -> ep::ExecutionProviderDispatch {
    ep::CPU::default().with_arena_allocator(true).build()
}

/// TensorRT with its engines and timing cache kept in `tensorrt/` under `compiled`, so that only the
/// first start compiles them (minutes for a large graph).
fn tensorrt_cached(compiled: &Path) -> ep::ExecutionProviderDispatch {
    let folder = compiled.join("tensorrt");
    if let Err(error) = std::fs::create_dir_all(&folder) {
        warn!(folder = %folder.display(), error = %error, "Cannot keep TensorRT's engines; each start compiles them again.");
        return ep::TensorRT::default().build();
    }
    let folder = folder.display().to_string();
    ep::TensorRT::default()
        .with_engine_cache(true)
        .with_engine_cache_path(&folder)
        .with_timing_cache(true)
        .with_timing_cache_path(&folder)
        .build()
}

/// Registers the usable providers of `wanted`, in order, on `builder` (TensorRT keeping its engines
/// under `compiled`); returns it with the names in use and ONNX Runtime's name of the first (the CPU's
/// when none registered). The CPU provider is always there, last.
fn with_providers(
    mut builder: SessionBuilder,
    wanted: &[Provider],
    compiled: &Path,
) -> (SessionBuilder, Vec<&'static str>, &'static str) {
    let mut used = Vec::new();
    let mut first = ep::CPU::NAME;
    // The providers after the CPU's would never be reached.
    for (provider, (name, available, registration)) in wanted
        .iter()
        .map_while(|provider| accelerator(*provider).map(|found| (provider, found)))
    {
        if !matches!(available, Ok(true)) {
            warn!(
                provider = name,
                "This ONNX Runtime build has no such execution provider; falling back."
            );
            continue;
        }
        let registration = match provider {
            Provider::Tensorrt => tensorrt_cached(compiled),
            _ => registration,
        };
        let provider_name = registration.name();
        builder = match builder.with_execution_providers([registration.error_on_failure()]) {
            Ok(builder) => {
                if used.is_empty() {
                    first = provider_name;
                }
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
    match builder.with_execution_providers([cpu_provider()]) {
        Ok(builder) => (builder, used, first),
        Err(error) => {
            warn!(error = %error, "The CPU provider's settings were refused; using its defaults.");
            (error.recover(), used, first)
        }
    }
}

/// `builder` with the CPU provider alone, chosen as a device. Appending the CPU provider is not
/// enough: a session with no other provider appended falls to ONNX Runtime's device selection policy
/// (ort sets one), which hands the graph to a registered plugin's CPU device (OpenVINO's) instead.
/// The CPU memory arena stays on, as sessions have it by default.
fn only_cpu(environment: &Environment, builder: SessionBuilder) -> ort::Result<SessionBuilder> {
    let cpu = environment
        .devices()
        .find(|device| device.ep().is_ok_and(|name| name == ep::CPU::NAME))
        .ok_or_else(|| ort::Error::new("the runtime lists no CPU device"))?;
    Ok(builder.with_devices([cpu], None)?)
}

/// `builder` with its providers for `placement`; returns it with where it runs and ONNX Runtime's
/// name of the provider asked for.
fn placed(
    environment: &Environment,
    builder: SessionBuilder,
    placement: &Placement,
) -> ort::Result<(SessionBuilder, String, String)> {
    match placement {
        Placement::Cpu => Ok((
            only_cpu(environment, builder)?,
            "cpu".to_owned(),
            ep::CPU::NAME.to_owned(),
        )),
        Placement::Listed(providers, compiled) => {
            let (builder, used, first) = with_providers(builder, providers, compiled);
            let builder = if first == ep::CPU::NAME {
                only_cpu(environment, builder)?
            } else {
                builder
            };
            Ok((builder, used[0].to_owned(), first.to_owned()))
        }
        Placement::Accelerator(offer, compiled) => {
            let builder = match offer.route {
                Route::Discovered(index) => {
                    let device = environment.devices().nth(index).ok_or_else(|| {
                        ort::Error::new(format!("the device {index} is no longer discovered"))
                    })?;
                    let options = compiled_cache(offer, compiled);
                    builder.with_devices([device], options.as_deref())?
                }
                Route::BuiltIn(provider) => {
                    if matches!(provider, Provider::Cuda | Provider::Tensorrt) {
                        nvidia_driver().map_err(ort::Error::new)?;
                    }
                    let (_, _, registration) = accelerator(provider).ok_or_else(|| {
                        ort::Error::new(format!("{provider:?} is not an accelerator"))
                    })?;
                    builder
                        .with_execution_providers([registration.error_on_failure()])?
                        .with_execution_providers([cpu_provider()])?
                }
            };
            Ok((builder, offer.runs_on.clone(), offer.provider.clone()))
        }
    }
}

/// Whether `offer`'s provider compiles the graphs for its device at load, which `compiled_cache` keeps:
/// OpenVINO's. (TensorRT, reached through `vision.providers`, keeps its engines by `tensorrt_cached`;
/// QNN's compiled context is not kept.)
pub fn compiles(offer: &Offer) -> bool {
    offer.provider == "OpenVINOExecutionProvider"
}

/// The options that have `offer`'s provider keep what it compiles in a folder of its own under
/// `compiled` (OpenVINO's plugin takes the folder per device in `load_config`; it ignores `cache_dir`);
/// `None` for providers that do not compile, or when the folder cannot be made (then every start
/// compiles, which is only slower).
fn compiled_cache(offer: &Offer, compiled: &Path) -> Option<Vec<(String, String)>> {
    if !compiles(offer) {
        return None;
    }
    let folder = compiled.join("openvino");
    if let Err(error) = std::fs::create_dir_all(&folder) {
        warn!(folder = %folder.display(), error = %error, "Cannot keep the compiled graphs; each start compiles them again.");
        return None;
    }
    let device = match offer.kind {
        AcceleratorKind::Gpu => "GPU",
        AcceleratorKind::Npu => "NPU",
    };
    let config = serde_json::json!({ device: { "CACHE_DIR": folder } });
    Some(vec![(
        format!("{}.load_config", offer.provider),
        config.to_string(),
    )])
}

/// Where ONNX Runtime put the nodes of `session` (made with `session.record_ep_graph_assignment_info`),
/// against `provider`, the one asked for. ort has no wrapper for this part of the C API, hence unsafe
/// code: each pointer comes from ONNX Runtime and lives as long as the session.
#[allow(unsafe_code)]
fn assignment(session: &Session, graph: &Path, provider: &str) -> ort::Result<Assignment> {
    use ort::AsPointer;
    use std::ffi::{CStr, c_char};
    let text = |pointer: *const c_char| -> String {
        if pointer.is_null() {
            String::new()
        } else {
            // SAFETY: ONNX Runtime returns NUL-terminated strings owned by the session.
            unsafe { CStr::from_ptr(pointer) }
                .to_string_lossy()
                .into_owned()
        }
    };
    let api = ort::api();
    let mut subgraphs: *const *const ort::sys::OrtEpAssignedSubgraph = std::ptr::null();
    let mut count = 0usize;
    // SAFETY: the session outlives the arrays, which it owns; each call's status is checked.
    unsafe {
        ort::Error::result_from_status((api.Session_GetEpGraphAssignmentInfo)(
            session.ptr(),
            &mut subgraphs,
            &mut count,
        ))?;
    }
    let subgraphs = if count == 0 {
        &[][..]
    } else {
        // SAFETY: ONNX Runtime returned `count` subgraph pointers.
        unsafe { std::slice::from_raw_parts(subgraphs, count) }
    };
    let mut placed = Assignment {
        graph: graph
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        provider: provider.to_owned(),
        ..Assignment::default()
    };
    for subgraph in subgraphs {
        let mut name: *const c_char = std::ptr::null();
        let mut nodes: *const *const ort::sys::OrtEpAssignedNode = std::ptr::null();
        let mut node_count = 0usize;
        // SAFETY: as above.
        unsafe {
            ort::Error::result_from_status((api.EpAssignedSubgraph_GetEpName)(
                *subgraph, &mut name,
            ))?;
            ort::Error::result_from_status((api.EpAssignedSubgraph_GetNodes)(
                *subgraph,
                &mut nodes,
                &mut node_count,
            ))?;
        }
        placed.nodes += node_count;
        if text(name) == provider || node_count == 0 {
            continue;
        }
        // SAFETY: ONNX Runtime returned `node_count` node pointers.
        for node in unsafe { std::slice::from_raw_parts(nodes, node_count) } {
            let mut operator: *const c_char = std::ptr::null();
            // SAFETY: as above.
            unsafe {
                ort::Error::result_from_status((api.EpAssignedNode_GetOperatorType)(
                    *node,
                    &mut operator,
                ))?;
            }
            placed.fell_back.push(text(operator));
        }
    }
    Ok(placed)
}

/// Loads one graph on `placement` with `threads` threads per run.
pub fn load_session(
    environment: &Environment,
    path: &Path,
    placement: &Placement,
    threads: usize,
) -> Result<Opened, RuntimeError> {
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
        .map_err(|error| fail(error.to_string()))?
        .with_config_entry("session.record_ep_graph_assignment_info", "1")
        .map_err(|error| fail(error.to_string()))?
        .with_config_entry("session.use_env_allocators", "1")
        .map_err(|error| fail(error.to_string()))?
        .with_operators(super::operators::operators().map_err(|error| fail(error.to_string()))?)
        .map_err(|error| fail(error.to_string()))?;
    let builder = if threads > 0 {
        builder
            .with_intra_threads(threads)
            .map_err(|error| fail(error.to_string()))?
    } else {
        builder
    };
    let (mut builder, runs_on, provider) =
        placed(environment, builder, placement).map_err(|error| fail(error.to_string()))?;
    let session = builder
        .commit_from_file(path)
        .map_err(|error| fail(error.to_string()))?;
    let assignment =
        assignment(&session, path, &provider).map_err(|error| fail(error.to_string()))?;
    Ok(Opened {
        session,
        runs_on,
        assignment,
    })
}
