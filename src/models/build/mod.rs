//! Lookout's own decoder graph, built from a model folder's Hugging Face checkpoint (`model.safetensors`
//! and `config.json`) in Rust: `lookout models build`, and `models fetch` after a download.
//!
//! Why: the official exports' decoder concatenates the whole key/value cache at every step, runs
//! RMSNorm, rotary and attention as dozens of small nodes, and ships 4-bit weights ONNX Runtime can
//! only run on its slow float path. The graph built here (see `graph`) has a dozen fused nodes a layer
//! and a cache of fixed capacity read and written in place, and its quantized weights are computed
//! here (see `quantize`) with the settings that take ONNX Runtime's integer kernels.
//!
//! The graph and its weights are written under temporary names and renamed into place only when both
//! are complete: a failure (a bad checkpoint, a full disk) leaves no partial file behind, and a daemon
//! that has the previous graph loaded keeps it.

mod checkpoint;
mod graph;
mod onnx;
mod quantize;
mod weights;

use std::path::{Path, PathBuf};
use std::time::Instant;

use checkpoint::{Checkpoint, TextConfig};
use onnx::{IR_VERSION, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use weights::WeightsFile;

use crate::vision::model::{
    BUILT_DECODER_BLOCK_KEY, BUILT_DECODER_PRECISION_KEY, built_decoder_path, built_weights_path,
};

/// The checkpoint a model folder holds.
pub const CHECKPOINT_FILE: &str = "model.safetensors";

/// The weights of a built decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Precision {
    Fp32,
    /// Half-precision weights, activations and cache: the accelerators' graph. The graph's inputs and
    /// logits stay f32 (a cast at each end), so the decoding loop is the same for every precision.
    Fp16,
    Int8,
    Int4,
}

impl Precision {
    pub const ALL: [Precision; 4] = [
        Precision::Fp32,
        Precision::Fp16,
        Precision::Int8,
        Precision::Int4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
        }
    }

    pub fn parse(name: &str) -> Option<Precision> {
        Precision::ALL
            .into_iter()
            .find(|precision| precision.name() == name)
    }
}

/// Why a decoder could not be built. Each names the file, tensor or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {}", problems.join("; "))]
    Config {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{path}: not a readable safetensors checkpoint: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: tensor {name} {problem}")]
    Tensor {
        path: PathBuf,
        name: String,
        problem: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `build` wrote.
#[derive(Debug)]
pub struct Built {
    pub graph: PathBuf,
    pub nodes: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Builds the decoder of the model in `dir` at `precision` into `dir/onnx/`.
pub fn build(dir: &Path, precision: Precision) -> Result<Built, BuildError> {
    let started = Instant::now();
    let config = TextConfig::read(dir)?;
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    let bytes = std::fs::read(&checkpoint_path).map_err(|source| BuildError::Io {
        path: checkpoint_path.clone(),
        source,
    })?;
    let checkpoint = Checkpoint::parse(&checkpoint_path, &bytes)?;

    let graph_path = built_decoder_path(dir, precision.name());
    if let Some(folder) = graph_path.parent() {
        std::fs::create_dir_all(folder).map_err(|source| BuildError::Write {
            path: folder.to_owned(),
            source,
        })?;
    }
    let data_path = built_weights_path(&graph_path);
    let partial = Partial::new(&graph_path, &data_path);
    let location = file_name(&data_path);
    let mut weights = WeightsFile::create(&partial.data, &location)?;
    let graph = graph::decoder(&config, &checkpoint, precision, &mut weights)?;
    weights.finish()?;
    let nodes = graph.node.len();
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "lookout".to_owned(),
        producer_version: env!("CARGO_PKG_VERSION").to_owned(),
        doc_string: format!(
            "SmolVLM2 text decoder built by Lookout from {CHECKPOINT_FILE} ({})",
            precision.name()
        ),
        graph: Some(graph),
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 21,
            },
            OperatorSetIdProto {
                domain: "com.microsoft".to_owned(),
                version: 1,
            },
            OperatorSetIdProto {
                domain: crate::vision::operators::DOMAIN.to_owned(),
                version: 1,
            },
        ],
        metadata_props: vec![
            StringStringEntryProto {
                key: BUILT_DECODER_PRECISION_KEY.to_owned(),
                value: precision.name().to_owned(),
            },
            StringStringEntryProto {
                key: BUILT_DECODER_BLOCK_KEY.to_owned(),
                value: quantize::BLOCK.to_string(),
            },
        ],
    };
    let encoded = onnx::encode(&model);
    write_synced(&partial.graph, &encoded)?;
    let bytes = partial.commit()?;
    Ok(Built {
        graph: graph_path,
        nodes,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|source| BuildError::Write {
        path: path.to_owned(),
        source,
    })
}

/// A graph and its data file being written under temporary names beside their final ones; removed
/// when dropped unless committed.
struct Partial {
    graph: PathBuf,
    data: PathBuf,
    finals: [PathBuf; 2],
    committed: bool,
}

impl Partial {
    fn new(graph: &Path, data: &Path) -> Partial {
        let partial = |path: &Path| {
            let mut name = path.as_os_str().to_owned();
            name.push(".partial");
            PathBuf::from(name)
        };
        Partial {
            graph: partial(graph),
            data: partial(data),
            finals: [graph.to_owned(), data.to_owned()],
            committed: false,
        }
    }

    /// Renames both files into place, the data first (a graph is never left pointing at missing
    /// weights), and returns their size together.
    fn commit(mut self) -> Result<u64, BuildError> {
        let mut bytes = 0;
        for (from, to) in [
            (&self.data, &self.finals[1]),
            (&self.graph, &self.finals[0]),
        ] {
            let rename = std::fs::metadata(from).and_then(|metadata| {
                bytes += metadata.len();
                std::fs::rename(from, to)
            });
            rename.map_err(|source| BuildError::Write {
                path: to.clone(),
                source,
            })?;
        }
        self.committed = true;
        Ok(bytes)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            for path in [&self.graph, &self.data] {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
