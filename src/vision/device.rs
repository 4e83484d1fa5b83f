//! Which device answers: `vision.device` (`auto`, `cpu`, `gpu`, `npu`) against what the box and its
//! ONNX Runtime library offer.
//!
//! One release binary serves every box, so what a box can use is learnt at start, never at build time:
//! - the devices ONNX Runtime discovers, each with the provider that drives it (the CPU's own, and
//!   those of plugin provider libraries such as OpenVINO's, registered from `vision.provider_libraries`);
//! - the accelerator providers built into the runtime library (CUDA in the GPU build that
//!   `deploy/fetch-onnxruntime.sh --gpu` installs, QNN in Qualcomm's), which ONNX Runtime does not list
//!   as devices: whether their hardware is there is only known by opening a graph on them;
//! - the accelerator device nodes under `/dev`, which say what hardware is there when no provider is
//!   (a GPU's render node with a CPU-only runtime), so the warning can name the way to use it.
//!
//! The choice is made in two steps. `candidates` (pure, tested against device lists) orders the
//! accelerators worth trying. Loading then tries them in turn: the graphs must open on the provider,
//! keep their heavy operators on it (`Assignment::refusal`), and answer a warm-up frame. Under `auto` the
//! first that passes answers, and when none does the CPU answers after one WARN line saying what was
//! found and why it was not used; an explicit `gpu` or `npu` that cannot be honoured is an error, so a
//! box never silently answers on a device its operator did not ask for.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::runtime::Provider;

/// `vision.device`: where the model should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// An accelerator when one is present and the graphs run on it, else the CPU.
    #[default]
    Auto,
    Cpu,
    Gpu,
    Npu,
}

impl DeviceChoice {
    /// The kind of accelerator asked for by name, if one is.
    pub fn kind(self) -> Option<AcceleratorKind> {
        match self {
            DeviceChoice::Gpu => Some(AcceleratorKind::Gpu),
            DeviceChoice::Npu => Some(AcceleratorKind::Npu),
            DeviceChoice::Auto | DeviceChoice::Cpu => None,
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Gpu => "gpu",
            DeviceChoice::Npu => "npu",
        })
    }
}

/// What kind of accelerator a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceleratorKind {
    Gpu,
    Npu,
}

impl AcceleratorKind {
    fn name(self) -> &'static str {
        match self {
            AcceleratorKind::Gpu => "gpu",
            AcceleratorKind::Npu => "npu",
        }
    }
}

/// How a session reaches an accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The n-th device of the environment's discovery (`Environment::devices`).
    Discovered(usize),
    /// A provider built into the runtime library, appended by name.
    BuiltIn(Provider),
}

/// An accelerator the runtime could answer on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub kind: AcceleratorKind,
    /// ONNX Runtime's name of its provider, e.g. `CUDAExecutionProvider`.
    pub provider: String,
    /// Where answers say they ran, e.g. `cuda:0`, `openvino:npu`.
    pub runs_on: String,
    pub route: Route,
}

impl Offer {
    /// An accelerator among the discovered devices: `index` in discovery order, driven by `provider`.
    pub fn discovered(index: usize, kind: AcceleratorKind, provider: &str) -> Offer {
        let short = provider
            .strip_suffix("ExecutionProvider")
            .unwrap_or(provider)
            .to_lowercase();
        Offer {
            kind,
            provider: provider.to_owned(),
            runs_on: format!("{short}:{}", kind.name()),
            route: Route::Discovered(index),
        }
    }

    /// A built-in provider worth trying without being asked for by name: CUDA for GPUs, QNN for NPUs.
    /// TensorRT (which compiles for minutes on first use and needs libraries `--gpu` does not install),
    /// the in-box OpenVINO build (the plugin is the maintained way) and CoreML (not Linux) are
    /// reached through `vision.providers` instead.
    pub fn built_in(provider: Provider) -> Option<Offer> {
        let (kind, name, runs_on) = match provider {
            Provider::Cuda => (AcceleratorKind::Gpu, "CUDAExecutionProvider", "cuda:0"),
            Provider::Qnn => (AcceleratorKind::Npu, "QNNExecutionProvider", "qnn:npu"),
            _ => return None,
        };
        Some(Offer {
            kind,
            provider: name.to_owned(),
            runs_on: runs_on.to_owned(),
            route: Route::BuiltIn(provider),
        })
    }
}

/// What a box has: the accelerators its runtime offers, and the accelerator device nodes it has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    pub offers: Vec<Offer>,
    /// Accelerator device nodes (`/dev/dri/renderD*`, `/dev/accel/*`, `/dev/nvidia0`...).
    pub nodes: Vec<PathBuf>,
    /// The runtime library the offers come from, for messages.
    pub library: PathBuf,
}

impl Inventory {
    /// The nodes of accelerators of `kind`: render and NVIDIA nodes are GPUs, accel nodes NPUs.
    fn nodes_of(&self, kind: AcceleratorKind) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| node.display().to_string())
            .filter(|node| node_kind(node) == Some(kind))
            .collect()
    }

    /// Accelerator hardware no offer serves, as a sentence part, e.g. "a GPU (/dev/dri/renderD128)
    /// that no provider of this runtime drives (deploy/fetch-onnxruntime.sh --openvino...)".
    fn unserved(&self) -> Vec<String> {
        [AcceleratorKind::Gpu, AcceleratorKind::Npu]
            .into_iter()
            .filter(|kind| !self.offers.iter().any(|offer| offer.kind == *kind))
            .filter_map(|kind| {
                let nodes = self.nodes_of(kind);
                (!nodes.is_empty()).then(|| {
                    format!(
                        "{} ({}) that no provider of {} drives ({})",
                        article(kind),
                        nodes.join(", "),
                        self.library.display(),
                        INSTALL_HINT
                    )
                })
            })
            .collect()
    }
}

/// How to get a provider for an accelerator, in messages.
const INSTALL_HINT: &str = "deploy/fetch-onnxruntime.sh --gpu installs the CUDA runtime, --openvino \
                            Intel's provider; other vendors' go in vision.runtime_library or \
                            vision.provider_libraries";

fn article(kind: AcceleratorKind) -> &'static str {
    match kind {
        AcceleratorKind::Gpu => "a GPU",
        AcceleratorKind::Npu => "an NPU",
    }
}

/// The kind of accelerator a device node belongs to, if it is one.
fn node_kind(node: &str) -> Option<AcceleratorKind> {
    let name = node.rsplit('/').next().unwrap_or(node);
    if node.contains("/accel/") {
        Some(AcceleratorKind::Npu)
    } else if name.starts_with("renderD")
        || name
            .strip_prefix("nvidia")
            .is_some_and(|index| !index.is_empty() && index.chars().all(|c| c.is_ascii_digit()))
    {
        Some(AcceleratorKind::Gpu)
    } else {
        None
    }
}

/// The accelerator device nodes in `dev` (normally `/dev`): DRM and accel nodes, NVIDIA's.
pub fn accelerator_nodes(dev: &Path) -> Vec<PathBuf> {
    let mut nodes = Vec::new();
    for folder in ["dri", "accel"] {
        if let Ok(entries) = std::fs::read_dir(dev.join(folder)) {
            nodes.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
    if let Ok(entries) = std::fs::read_dir(dev) {
        nodes.extend(entries.flatten().map(|entry| entry.path()).filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("nvidia"))
        }));
    }
    nodes.sort();
    nodes
}

/// Why `vision.device` cannot be honoured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    #[error("vision.device = \"{wanted}\", but this box offers no {wanted}: {found}")]
    Absent { wanted: DeviceChoice, found: String },
    #[error("vision.device = \"{wanted}\", but no {wanted} could answer: {tried}")]
    Unusable {
        wanted: DeviceChoice,
        /// Each accelerator tried and why it failed.
        tried: String,
    },
}

/// The accelerators to try for `choice`, in order: GPUs before NPUs (a GPU has the memory bandwidth
/// decoding needs), discovered devices before built-in providers (discovery saw the hardware; a
/// built-in provider is only a library). Empty for `cpu`, and for `auto` when there are none; an
/// explicit `gpu` or `npu` with nothing to try is an error naming what is missing.
pub fn candidates(choice: DeviceChoice, inventory: &Inventory) -> Result<Vec<Offer>, DeviceError> {
    let kinds: &[AcceleratorKind] = match choice {
        DeviceChoice::Cpu => return Ok(Vec::new()),
        DeviceChoice::Auto => &[AcceleratorKind::Gpu, AcceleratorKind::Npu],
        DeviceChoice::Gpu => &[AcceleratorKind::Gpu],
        DeviceChoice::Npu => &[AcceleratorKind::Npu],
    };
    let mut chosen = Vec::new();
    for kind in kinds {
        for discovered in [true, false] {
            chosen.extend(
                inventory
                    .offers
                    .iter()
                    .filter(|offer| {
                        offer.kind == *kind
                            && matches!(offer.route, Route::Discovered(_)) == discovered
                    })
                    .cloned(),
            );
        }
    }
    if chosen.is_empty() && choice != DeviceChoice::Auto {
        let kind = kinds[0];
        let nodes = inventory.nodes_of(kind);
        let found = if nodes.is_empty() {
            format!(
                "no {} device node and no {} provider in {} ({INSTALL_HINT})",
                kind.name(),
                kind.name(),
                inventory.library.display()
            )
        } else {
            format!(
                "{} is there ({}) but no provider of {} drives it ({INSTALL_HINT})",
                article(kind),
                nodes.join(", "),
                inventory.library.display()
            )
        };
        return Err(DeviceError::Absent {
            wanted: choice,
            found,
        });
    }
    Ok(chosen)
}

/// Under `auto`, why the CPU answers when the box has accelerators: those `tried` that failed (with
/// why) and hardware no provider drives. `None` when the box has no accelerator at all, which needs no
/// warning.
pub fn cpu_reason(inventory: &Inventory, tried: &[(Offer, String)]) -> Option<String> {
    let mut parts: Vec<String> = tried
        .iter()
        .map(|(offer, why)| format!("{} ({}): {why}", offer.runs_on, offer.provider))
        .collect();
    parts.extend(inventory.unserved());
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The error for an explicit `choice` when every candidate in `tried` failed.
pub fn unusable(choice: DeviceChoice, tried: &[(Offer, String)]) -> DeviceError {
    DeviceError::Unusable {
        wanted: choice,
        tried: tried
            .iter()
            .map(|(offer, why)| format!("{}: {why}", offer.runs_on))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Where the nodes of one graph run, as ONNX Runtime assigned them when the session was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// The graph's file name.
    pub graph: String,
    /// The provider asked for (`CPUExecutionProvider` on the CPU).
    pub provider: String,
    /// Every node, after ONNX Runtime's fusions.
    pub nodes: usize,
    /// The operator types of the nodes that run on the CPU though `provider` is another, in graph order.
    pub fell_back: Vec<String>,
}

/// Operators that carry a graph's weights or its attention: where they run is where the work is.
const HEAVY_OPERATORS: [&str; 13] = [
    "MatMul",
    "Gemm",
    "Conv",
    "MatMulNBits",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "FusedMatMul",
    "QLinearMatMul",
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "FusedConv",
    // Lookout's own, which only the CPU runs: the int8 and int4 decoders' projections.
    crate::vision::operators::linear::NAME,
];

impl Assignment {
    /// Why `auto` should not keep this graph on its accelerator: a heavy operator fell back to the
    /// CPU, so the CPU would do the work anyway and pay for copies between the two memories besides.
    /// Light operators falling back (shape arithmetic, which ONNX Runtime keeps on the CPU on purpose)
    /// are fine.
    pub fn refusal(&self) -> Option<String> {
        let heavy: Vec<&str> = self
            .fell_back
            .iter()
            .map(String::as_str)
            .filter(|operator| HEAVY_OPERATORS.contains(operator))
            .collect();
        (!heavy.is_empty()).then(|| {
            format!(
                "{}: {} of its {} nodes fall back to the CPU, {} of them heavy ({})",
                self.graph,
                self.fell_back.len(),
                self.nodes,
                heavy.len(),
                distinct(&heavy).join(", ")
            )
        })
    }
}

fn distinct<'a>(operators: &[&'a str]) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for operator in operators {
        if !seen.contains(operator) {
            seen.push(operator);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(offers: Vec<Offer>, nodes: &[&str]) -> Inventory {
        Inventory {
            offers,
            nodes: nodes.iter().map(PathBuf::from).collect(),
            library: PathBuf::from("/usr/lib/lookout/libonnxruntime.so"),
        }
    }

    fn runs_on(offers: &[Offer]) -> Vec<&str> {
        offers.iter().map(|offer| offer.runs_on.as_str()).collect()
    }

    #[test]
    fn a_cpu_only_box_answers_on_the_cpu_without_a_warning_unless_a_device_was_asked_for() {
        let cpu_only = inventory(Vec::new(), &[]);
        for choice in [DeviceChoice::Auto, DeviceChoice::Cpu] {
            assert_eq!(candidates(choice, &cpu_only), Ok(Vec::new()));
        }
        assert_eq!(cpu_reason(&cpu_only, &[]), None);
        let error = candidates(DeviceChoice::Gpu, &cpu_only).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "vision.device = \"gpu\", but this box offers no gpu: no gpu device node and no gpu \
                 provider in /usr/lib/lookout/libonnxruntime.so (deploy/fetch-onnxruntime.sh --gpu"
            ),
            "{error}"
        );
        assert!(matches!(
            candidates(DeviceChoice::Npu, &cpu_only),
            Err(DeviceError::Absent {
                wanted: DeviceChoice::Npu,
                ..
            })
        ));
    }

    #[test]
    fn a_gpu_is_tried_before_the_cpu_and_discovered_devices_before_built_in_providers() {
        let offers = vec![
            Offer::built_in(Provider::Cuda).unwrap(),
            Offer::discovered(1, AcceleratorKind::Gpu, "OpenVINOExecutionProvider"),
        ];
        let gpu_box = inventory(offers, &["/dev/nvidia0", "/dev/dri/renderD128"]);
        let auto = candidates(DeviceChoice::Auto, &gpu_box).unwrap();
        assert_eq!(runs_on(&auto), ["openvino:gpu", "cuda:0"]);
        assert_eq!(auto[0].route, Route::Discovered(1));
        assert_eq!(auto[1].route, Route::BuiltIn(Provider::Cuda));
        assert_eq!(
            candidates(DeviceChoice::Gpu, &gpu_box).unwrap(),
            auto,
            "gpu tries the same"
        );
        assert_eq!(candidates(DeviceChoice::Cpu, &gpu_box), Ok(Vec::new()));
        assert!(candidates(DeviceChoice::Npu, &gpu_box).is_err());
    }

    #[test]
    fn an_npu_is_tried_after_gpus_and_alone_when_asked_for() {
        let offers = vec![
            Offer::discovered(2, AcceleratorKind::Npu, "OpenVINOExecutionProvider"),
            Offer::discovered(1, AcceleratorKind::Gpu, "OpenVINOExecutionProvider"),
        ];
        let intel_box = inventory(offers, &["/dev/accel/accel0", "/dev/dri/renderD128"]);
        assert_eq!(
            runs_on(&candidates(DeviceChoice::Auto, &intel_box).unwrap()),
            ["openvino:gpu", "openvino:npu"]
        );
        assert_eq!(
            runs_on(&candidates(DeviceChoice::Npu, &intel_box).unwrap()),
            ["openvino:npu"]
        );
        let npu_only = inventory(
            vec![Offer::built_in(Provider::Qnn).unwrap()],
            &["/dev/accel/accel0"],
        );
        assert_eq!(
            runs_on(&candidates(DeviceChoice::Auto, &npu_only).unwrap()),
            ["qnn:npu"]
        );
    }

    #[test]
    fn an_accelerator_whose_provider_library_is_missing_is_named_with_the_way_to_get_one() {
        // A GPU's render node, and a CPU-only runtime: nothing to try.
        let unserved = inventory(Vec::new(), &["/dev/dri/card0", "/dev/dri/renderD128"]);
        assert_eq!(candidates(DeviceChoice::Auto, &unserved), Ok(Vec::new()));
        let reason = cpu_reason(&unserved, &[]).expect("auto warns");
        assert!(
            reason.starts_with(
                "a GPU (/dev/dri/renderD128) that no provider of /usr/lib/lookout/libonnxruntime.so \
                 drives (deploy/fetch-onnxruntime.sh --gpu installs the CUDA runtime, --openvino"
            ),
            "{reason}"
        );
        let error = candidates(DeviceChoice::Gpu, &unserved).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("a GPU is there (/dev/dri/renderD128) but no provider of"),
            "{error}"
        );
        // An NPU's node with only a GPU provider: the GPU is tried, the NPU is named.
        let mixed = inventory(
            vec![Offer::built_in(Provider::Cuda).unwrap()],
            &["/dev/accel/accel0", "/dev/nvidia0", "/dev/nvidiactl"],
        );
        let reason = cpu_reason(&mixed, &[]).unwrap();
        assert!(
            reason.starts_with("an NPU (/dev/accel/accel0) that no provider"),
            "{reason}"
        );
    }

    #[test]
    fn accelerators_that_failed_are_each_named_with_why() {
        let cuda = Offer::built_in(Provider::Cuda).unwrap();
        let gpu_runtime = inventory(vec![cuda.clone()], &[]);
        let tried = vec![(
            cuda,
            "CUDA failure 100: no CUDA-capable device is detected".to_owned(),
        )];
        assert_eq!(
            cpu_reason(&gpu_runtime, &tried).as_deref(),
            Some(
                "cuda:0 (CUDAExecutionProvider): CUDA failure 100: no CUDA-capable device is detected"
            )
        );
        assert_eq!(
            unusable(DeviceChoice::Gpu, &tried).to_string(),
            "vision.device = \"gpu\", but no gpu could answer: cuda:0: CUDA failure 100: no \
             CUDA-capable device is detected"
        );
    }

    #[test]
    fn a_graph_whose_heavy_operators_fall_back_is_refused_and_shape_arithmetic_is_not() {
        let shapes_only = Assignment {
            graph: "vision_encoder.onnx".to_owned(),
            provider: "CUDAExecutionProvider".to_owned(),
            nodes: 400,
            fell_back: vec!["Shape".into(), "Gather".into(), "Unsqueeze".into()],
        };
        assert_eq!(shapes_only.refusal(), None);
        let unsupported = Assignment {
            fell_back: vec![
                "Shape".into(),
                "MatMulNBits".into(),
                "GroupQueryAttention".into(),
                "MatMulNBits".into(),
            ],
            graph: "decoder_model_merged_lookout_int4.onnx".to_owned(),
            ..shapes_only
        };
        assert_eq!(
            unsupported.refusal().as_deref(),
            Some(
                "decoder_model_merged_lookout_int4.onnx: 4 of its 400 nodes fall back to the CPU, 3 \
                 of them heavy (MatMulNBits, GroupQueryAttention)"
            )
        );
    }

    #[test]
    fn device_nodes_are_told_apart() {
        assert_eq!(node_kind("/dev/dri/renderD128"), Some(AcceleratorKind::Gpu));
        assert_eq!(node_kind("/dev/nvidia0"), Some(AcceleratorKind::Gpu));
        assert_eq!(node_kind("/dev/accel/accel0"), Some(AcceleratorKind::Npu));
        for not_one in ["/dev/dri/card0", "/dev/nvidiactl", "/dev/nvidia-uvm"] {
            assert_eq!(node_kind(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn nodes_are_found_in_their_folders() {
        let dev = tempfile::tempdir().unwrap();
        for folder in ["dri", "accel"] {
            std::fs::create_dir(dev.path().join(folder)).unwrap();
        }
        for node in [
            "dri/renderD128",
            "accel/accel0",
            "nvidia0",
            "nvidia-uvm",
            "null",
        ] {
            std::fs::write(dev.path().join(node), "").unwrap();
        }
        let names: Vec<String> = accelerator_nodes(dev.path())
            .iter()
            .map(|node| node.strip_prefix(dev.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["accel/accel0", "dri/renderD128", "nvidia-uvm", "nvidia0"]
        );
    }
}
