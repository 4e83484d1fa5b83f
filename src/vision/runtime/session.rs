//! Sessions: where a graph runs (its `Placement` on the execution providers), the settings every
//! session gets, and where ONNX Runtime put each node.
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
use std::sync::Arc;

use ort::environment::Environment;
use ort::ep;
use ort::ep::ExecutionProvider;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use tracing::{info, warn};

use super::{Provider, RuntimeError, accelerator, nvidia_driver};
use crate::vision::device::{AcceleratorKind, Assignment, Offer, Route};

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
    /// The weights read into memory (`Weights::InMemory`), which the session reads in place: whoever
    /// keeps the session keeps these, and drops them after it.
    pub weights: Option<Arc<[u8]>>,
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

/// Whether `offer`'s provider compiles the graphs for its device at load, and Lookout keeps what it
/// compiles: OpenVINO's (its cache folder, `compiled_cache`) and QNN's (its compiled context,
/// `CompiledContext`). TensorRT, reached through `vision.providers`, keeps its engines by
/// `tensorrt_cached`.
pub fn compiles(offer: &Offer) -> bool {
    offer.provider == "OpenVINOExecutionProvider" || offer.provider == ep::QNN::NAME
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

/// Where a graph's external weights (`<graph>.data`, as `lookout models build` writes them) live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weights {
    /// Mapped from the file by ONNX Runtime, which releases the mapping of each weight an operator
    /// packs into its own copy at load (`MatMul`, `MatMulNBits`).
    Mapped,
    /// Read into the process's memory and used there in place, on the CPU: for graphs whose operators
    /// read their weights where they are (Lookout's int8 and int4 decoders: `QuantizedLinear` packs
    /// nothing).
    /// Mapped, they would stay in the page cache's 4 KB pages, which `huge_pages` cannot move (in
    /// huge pages a decoding step's projections read 1.2-1.3x faster: src/vision/operators/linear/).
    InMemory,
}

impl Weights {
    /// How the graph at `path` is best loaded: in memory if its operators read their weights in place
    /// (`model::reads_weights_in_place`); mapped otherwise, since the runtime's packed copies would
    /// hold the weights twice.
    pub fn of_graph(path: &Path) -> Weights {
        if crate::vision::model::reads_weights_in_place(path) {
            Weights::InMemory
        } else {
            Weights::Mapped
        }
    }
}

/// Loads one graph on `placement` with `threads` threads per run, its external weights as `weights`
/// says.
pub fn load_session(
    environment: &Environment,
    path: &Path,
    placement: &Placement,
    threads: usize,
    weights: Weights,
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
        .with_operators(
            crate::vision::operators::operators().map_err(|error| fail(error.to_string()))?,
        )
        .map_err(|error| fail(error.to_string()))?;
    let builder = if threads > 0 {
        builder
            .with_intra_threads(threads)
            .map_err(|error| fail(error.to_string()))?
    } else {
        builder
    };
    let (builder, runs_on, provider) =
        placed(environment, builder, placement).map_err(|error| fail(error.to_string()))?;
    let (mut builder, weights) = if weights == Weights::InMemory && placement.host_memory() {
        weights_in_memory(builder, path).map_err(fail)?
    } else {
        (builder, None)
    };
    let session = match CompiledContext::of(placement, path) {
        Some(context) => context.open(builder, path),
        None => builder.commit_from_file(path),
    }
    .map_err(|error| fail(error.to_string()))?;
    let assignment =
        assignment(&session, path, &provider).map_err(|error| fail(error.to_string()))?;
    Ok(Opened {
        session,
        runs_on,
        assignment,
        weights,
    })
}

/// A session builder, and the weights it was handed to use in place (`Weights::InMemory`).
type WithWeights = (SessionBuilder, Option<Arc<[u8]>>);

/// `builder` with the graph's external data file, if it has one (`<graph>.data`), read into memory and
/// handed to ONNX Runtime to use in place, and that memory (ort's builder holds its reference only
/// until the session is made; ONNX Runtime reads the buffer for as long as the session lives).
fn weights_in_memory(builder: SessionBuilder, graph: &Path) -> Result<WithWeights, String> {
    let data = crate::vision::model::built_weights_path(graph);
    let (Some(location), Ok(mut file)) = (data.file_name(), std::fs::File::open(&data)) else {
        return Ok((builder, None));
    };
    let read = |error: std::io::Error| format!("{}: {error}", data.display());
    let length = file.metadata().map_err(read)?.len();
    let length = usize::try_from(length).map_err(|_| format!("{}: too large", data.display()))?;
    // Made in place: a Vec turned into an Arc would be copied, twice the weights at once.
    let mut buffer = Arc::<[u8]>::new_uninit_slice(length);
    Arc::get_mut(&mut buffer)
        .ok_or("a new buffer is shared")?
        .fill(std::mem::MaybeUninit::new(0));
    #[allow(unsafe_code)]
    // SAFETY: every byte was just written.
    let mut buffer = unsafe { buffer.assume_init() };
    let bytes = Arc::get_mut(&mut buffer).ok_or("a new buffer is shared")?;
    std::io::Read::read_exact(&mut file, bytes).map_err(read)?;
    let builder = builder
        .with_external_initializer_file_in_memory(location, buffer.clone())
        .map_err(|error| error.to_string())?
        .with_config_entry(
            "session.use_external_initializer_file_buffers_directly",
            "1",
        )
        .map_err(|error| error.to_string())?;
    Ok((builder, Some(buffer)))
}

/// QNN's compiled form of one graph, kept as an EPContext model (ONNX Runtime's `ep.context_*`
/// session options, the context binary embedded in it) in `qnn/` under the compiled folder. QNN
/// compiles a graph for the NPU at every session otherwise, the slowest part of a start. The first
/// start compiles and writes it; later starts open it in place of the graph. Its name carries the
/// graph's name, the folder it is in, its size and its modification time, so a graph replaced or
/// rebuilt (`lookout models build`) is compiled anew; one that will not open is removed and compiled
/// again.
struct CompiledContext {
    kept: PathBuf,
}

impl CompiledContext {
    /// The compiled context of `graph` on `placement`: when the accelerator `vision.device` chose is
    /// QNN's (a hand-made `vision.providers` list compiles at every start); `None` for a graph that
    /// cannot be read.
    fn of(placement: &Placement, graph: &Path) -> Option<CompiledContext> {
        use sha2::Digest;
        let Placement::Accelerator(offer, compiled) = placement else {
            return None;
        };
        if offer.provider != ep::QNN::NAME {
            return None;
        }
        let metadata = std::fs::metadata(graph).ok()?;
        let modified = metadata
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        let folder = sha2::Sha256::digest(graph.parent()?.as_os_str().as_encoded_bytes());
        let folder: String = folder[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let stem = graph.file_stem()?.to_string_lossy();
        Some(CompiledContext {
            kept: compiled.join("qnn").join(format!(
                "{stem}-{folder}-{:x}-{modified:x}.onnx",
                metadata.len()
            )),
        })
    }

    /// The session of `graph`: from the kept compiled context when there is one that opens, else
    /// compiled from the graph, its compiled context written for the next start.
    fn open(&self, mut builder: SessionBuilder, graph: &Path) -> ort::Result<Session> {
        if self.kept.is_file() {
            match builder.commit_from_file(&self.kept) {
                Ok(session) => return Ok(session),
                Err(error) => {
                    warn!(kept = %self.kept.display(), error = %error, "The kept compiled context does not open; compiling the graph again.");
                    let _ = std::fs::remove_file(&self.kept);
                }
            }
        }
        // Written under another name (still ending `.onnx`, as providers deriving file names from
        // it expect) and renamed once whole, so that a start cut short leaves no half-written
        // context for the next to open.
        let partial = self.kept.with_extension("partial.onnx");
        let folder = self.kept.parent().unwrap_or(Path::new("."));
        if let Err(error) = std::fs::create_dir_all(folder) {
            warn!(folder = %folder.display(), error = %error, "Cannot keep QNN's compiled context; each start compiles the graph again.");
            return builder.commit_from_file(graph);
        }
        let _ = std::fs::remove_file(&partial);
        info!(graph = %graph.display(), kept = %self.kept.display(), "Compiling the graph for QNN; its compiled context is kept for the next start.");
        let started = std::time::Instant::now();
        let session = builder
            .with_config_entry("ep.context_enable", "1")?
            .with_config_entry("ep.context_embed_mode", "1")?
            .with_config_entry("ep.context_file_path", partial.to_string_lossy())?
            .commit_from_file(graph)?;
        let seconds = started.elapsed().as_secs_f64();
        match std::fs::rename(&partial, &self.kept) {
            Ok(()) => {
                info!(graph = %graph.display(), seconds, "Compiled the graph for QNN and kept its compiled context.")
            }
            Err(error) => {
                warn!(graph = %graph.display(), seconds, error = %error, "Compiled the graph for QNN but could not keep its compiled context; the next start compiles it again.")
            }
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::device::Offer;

    fn qnn(compiled: &Path) -> Placement {
        Placement::Accelerator(
            Offer::built_in(Provider::Qnn).expect("QNN is an accelerator"),
            compiled.to_owned(),
        )
    }

    #[test]
    fn qnn_keeps_a_compiled_context_per_graph_renamed_when_the_graph_changes() {
        let folder = tempfile::tempdir().unwrap();
        let compiled = folder.path().join("compiled");
        let models = [folder.path().join("a"), folder.path().join("b")];
        let graphs = models.each_ref().map(|model| {
            std::fs::create_dir_all(model).unwrap();
            let graph = model.join("decoder_model_merged_fp16.onnx");
            std::fs::write(&graph, b"first").unwrap();
            graph
        });
        let kept = |graph: &Path| CompiledContext::of(&qnn(&compiled), graph).unwrap().kept;
        let first = kept(&graphs[0]);
        assert!(
            first.starts_with(compiled.join("qnn")),
            "{}",
            first.display()
        );
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("decoder_model_merged_fp16-") && name.ends_with(".onnx"),
            "{name}"
        );
        assert_eq!(kept(&graphs[0]), first, "the same graph keeps its name");
        assert_ne!(
            kept(&graphs[1]),
            first,
            "a graph of another folder has its own"
        );
        std::fs::write(&graphs[0], b"rebuilt graph").unwrap();
        assert_ne!(kept(&graphs[0]), first, "a rebuilt graph is compiled anew");
    }

    #[test]
    fn only_qnn_placements_keep_a_compiled_context() {
        let folder = tempfile::tempdir().unwrap();
        let graph = folder.path().join("vision_encoder.onnx");
        std::fs::write(&graph, b"graph").unwrap();
        let compiled = folder.path().join("compiled");
        let cuda =
            Placement::Accelerator(Offer::built_in(Provider::Cuda).unwrap(), compiled.clone());
        for placement in [
            Placement::Cpu,
            cuda,
            Placement::Listed(vec![Provider::Qnn], compiled.clone()),
        ] {
            assert!(
                CompiledContext::of(&placement, &graph).is_none(),
                "{placement:?}"
            );
        }
        assert!(
            CompiledContext::of(&qnn(&compiled), &folder.path().join("missing.onnx")).is_none()
        );
    }
}
