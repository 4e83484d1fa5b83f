//! Loading a model folder: its spec and tokenizer, then the three graphs, each checked against the
//! export's contract (input and output names, element types, ranks, and the cache's fixed sizes) so that
//! a wrong file fails at load with the name of what does not match, never mid-answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::SmolVlm;
use super::decode::{CacheElement, CacheLayout, CacheShape, Decoder, FixedDecoder, GrowingDecoder};
use super::inputs::Embedder;
use crate::vision::device::{Assignment, DeviceError};
use crate::vision::embedding::EmbeddingTable;
use crate::vision::huge_pages;
use crate::vision::model::{ChosenDecoder, ModelError, ModelSpec, chosen_decoder};
use crate::vision::prompt::{PromptError, Prompter};
use crate::vision::runtime::{self, Placement, RuntimeError, Weights};
use crate::vision::{Graphs, PromptBounds};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(
        "unknown model variant {0:?}; expected one of fp32, fp16, int8, uint8, quantized, q4, q4f16, bnb4"
    )]
    Variant(String),
    #[error("{graph}: {problem} (is this a SmolVLM2 export?)")]
    Contract { graph: PathBuf, problem: String },
    #[error("{graph}: cannot allocate its cache of {capacity} positions: {reason}")]
    Cache {
        graph: PathBuf,
        capacity: usize,
        reason: String,
    },
}

/// How to load a model: where it is, which weights, on what.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub model_dir: PathBuf,
    /// The file suffix of the variant: "" for fp32, "_int8", "_q4"...
    pub suffix: String,
    pub library: PathBuf,
    pub placement: Placement,
    pub threads: usize,
    /// The most text answers decoded together, one decoder run per token for all of them (1: one at a
    /// time).
    pub batch: usize,
    /// Lookout's own decoder when the folder holds one for the variant, or the official export's.
    pub graphs: Graphs,
    /// The most positions (prompt and answer) a sequence may hold: the capacity of the cache buffers
    /// of Lookout's decoder.
    pub max_context: MaxContext,
}

/// The capacity of Lookout's decoder's cache: a number of positions, or the largest prompt and answer
/// of some bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxContext {
    Positions(usize),
    Largest(PromptBounds),
}

/// An input or output a graph must declare: name, element type, rank.
#[derive(Debug, PartialEq)]
struct Port {
    name: String,
    dtype: TensorElementType,
    rank: usize,
}

fn port(name: impl Into<String>, dtype: TensorElementType, rank: usize) -> Port {
    Port {
        name: name.into(),
        dtype,
        rank,
    }
}

/// The graphs of one variant in a model folder, opened on one environment; where ONNX Runtime put
/// each one's nodes is kept as they open.
struct GraphFiles<'a> {
    environment: &'a Environment,
    options: &'a LoadOptions,
    assignments: Vec<Assignment>,
    /// The weights sessions read in place (`Weights::InMemory`).
    held_weights: Vec<Arc<[u8]>>,
}

impl GraphFiles<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.options
            .model_dir
            .join("onnx")
            .join(format!("{name}{}.onnx", self.options.suffix))
    }

    /// Loads the graph at `path` and checks that it declares every port; also returns where it runs.
    fn open(
        &mut self,
        path: &Path,
        inputs: &[Port],
        outputs: &[Port],
        weights: Weights,
    ) -> Result<(Session, String), LoadError> {
        let opened = runtime::load_session(
            self.environment,
            path,
            &self.options.placement,
            self.options.threads,
            weights,
        )?;
        check_session(path, &opened.session, inputs, outputs)?;
        self.assignments.push(opened.assignment);
        self.held_weights.extend(opened.weights);
        Ok((opened.session, opened.runs_on))
    }
}

/// Checks that `session` declares every port.
fn check_session(
    path: &Path,
    session: &Session,
    inputs: &[Port],
    outputs: &[Port],
) -> Result<(), LoadError> {
    for (kind, wanted, declared) in [
        ("input", inputs, session.inputs()),
        ("output", outputs, session.outputs()),
    ] {
        let declared: Vec<(&str, &ValueType)> = declared
            .iter()
            .map(|outlet| (outlet.name(), outlet.dtype()))
            .collect();
        check_ports(kind, wanted, &declared).map_err(|problem| contract(path, problem))?;
    }
    Ok(())
}

impl GraphFiles<'_> {
    /// The official export's decoder, whose cache grows step by step.
    fn open_growing(&mut self, path: &Path, spec: &ModelSpec) -> Result<Decoder, LoadError> {
        let positions = port("position_ids", TensorElementType::Int64, 2);
        let (session, layout) = self.open_decoder(path, spec, positions, Weights::Mapped)?;
        if layout.element != CacheElement::F32 {
            return Err(contract(
                path,
                format!(
                    "its cache is {:?}; official decoders run with an f32 cache",
                    layout.element.tensor_type()
                ),
            ));
        }
        Ok(Decoder::Growing(GrowingDecoder { session, layout }))
    }

    /// A decoder graph at `path` whose third input is `third`, checked against the contract, and the
    /// layout of its cache (its element type as the graph declares it).
    fn open_decoder(
        &mut self,
        path: &Path,
        spec: &ModelSpec,
        third: Port,
        weights: Weights,
    ) -> Result<(Session, CacheLayout), LoadError> {
        let (inputs, outputs) = decoder_ports(third);
        let (session, _) = self.open(path, &inputs, &outputs, weights)?;
        let declared: Vec<(&str, &ValueType)> = session
            .inputs()
            .iter()
            .map(|input| (input.name(), input.dtype()))
            .collect();
        let layout =
            cache_layout(&declared, spec.layers).map_err(|problem| contract(path, problem))?;
        let (past, present) = cache_ports(spec.layers, layout.element.tensor_type());
        check_session(path, &session, &past, &present)?;
        Ok((session, layout))
    }

    /// Lookout's own decoder at `path`, with its cache buffers of `max_context` positions.
    fn open_fixed(&mut self, path: &Path, spec: &ModelSpec) -> Result<Decoder, LoadError> {
        let keep = port("num_logits_to_keep", TensorElementType::Int64, 0);
        let (session, layout) = self.open_decoder(path, spec, keep, Weights::of_graph(path))?;
        let (capacity, limit) = match self.options.max_context {
            MaxContext::Positions(positions) => (positions, positions),
            MaxContext::Largest(bounds) => (
                bounds.positions(&spec.image, spec.image_seq_len),
                spec.max_positions,
            ),
        };
        let shape = CacheShape {
            layers: spec.layers,
            kv_heads: layout.kv_heads as usize,
            head_dim: layout.head_dim as usize,
            capacity,
            element: layout.element,
        };
        let batch = self.options.batch.max(1);
        tracing::info!(graph = %path.display(), capacity = shape.capacity, megabytes_per_row = shape.bytes_per_row() as f64 / 1e6, batch, "Allocating the decoder's cache: a row to prefill in now, and one per answer decoded together when several first are.");
        let decoder =
            FixedDecoder::new(session, shape, batch, limit).map_err(|error| LoadError::Cache {
                graph: path.to_owned(),
                capacity: shape.capacity,
                reason: error.to_string(),
            })?;
        Ok(Decoder::Fixed(Box::new(decoder)))
    }
}

fn contract(path: &Path, problem: String) -> LoadError {
    LoadError::Contract {
        graph: path.to_owned(),
        problem,
    }
}

impl SmolVlm {
    pub fn load(options: &LoadOptions) -> Result<SmolVlm, LoadError> {
        let started = Instant::now();
        let spec = ModelSpec::read(&options.model_dir)?;
        let prompter = Prompter::load(
            &options.model_dir,
            spec.image_token_id,
            &spec.eos_ids,
            spec.image_seq_len,
        )?;
        let environment = runtime::environment(&options.library)?;
        let mut graphs = GraphFiles {
            environment: &environment,
            options,
            assignments: Vec::new(),
            held_weights: Vec::new(),
        };
        use TensorElementType::{Bool, Float32, Int64};

        let (vision, runs_on) = graphs.open(
            &graphs.path("vision_encoder"),
            &[
                port("pixel_values", Float32, 5),
                port("pixel_attention_mask", Bool, 4),
            ],
            &[port("image_features", Float32, 3)],
            Weights::Mapped,
        )?;
        let embed_path = graphs.path("embed_tokens");
        let embedder = match EmbeddingTable::open(&embed_path) {
            Some(table) => Embedder::Table(table),
            None => {
                let (session, _) = graphs.open(
                    &embed_path,
                    &[port("input_ids", Int64, 2)],
                    &[port("inputs_embeds", Float32, 3)],
                    Weights::Mapped,
                )?;
                Embedder::Graph(session)
            }
        };
        // Lookout's decoder keeps its cache in host memory, bound in place: on an accelerator every step
        // would copy the whole cache to the device and back, so there the official decoder answers.
        let own_decoder = options.graphs == Graphs::Lookout && options.placement.host_memory();
        if options.graphs == Graphs::Lookout && !own_decoder {
            tracing::info!(runs_on = %runs_on, "Lookout's decoder keeps its cache in host memory: on an accelerator the official decoder answers.");
        }
        let chosen = chosen_decoder(&options.model_dir, &options.suffix, own_decoder);
        let decoder_bytes = chosen.bytes();
        let (decoder, name) = match chosen {
            ChosenDecoder::Built { precision, path } => {
                let decoder = graphs.open_fixed(&path, &spec)?;
                let name = model_name(&options.model_dir, &format!("_lookout_{precision}"));
                (decoder, name)
            }
            ChosenDecoder::Official(path) => {
                if own_decoder {
                    tracing::info!(model_dir = %options.model_dir.display(), variant_suffix = %options.suffix, "No decoder of Lookout's own for this variant (`lookout models build` makes one from the folder's checkpoint): the official decoder answers.");
                }
                let decoder = graphs.open_growing(&path, &spec)?;
                (decoder, model_name(&options.model_dir, &options.suffix))
            }
        };
        // The weights are in memory now; on the CPU, a decoding step reads them faster from huge pages.
        // Moving them costs a copy (seconds where memory must first be compacted), worth it for a
        // model's weights, not for a test fixture's few MB (which made the test suite 18 s slower).
        let huge_pages_mb = if options.placement.host_memory() && decoder_bytes >= HUGE_PAGES_FROM {
            huge_pages::collapse_resident().bytes >> 20
        } else {
            0
        };
        tracing::info!(model = %name, runs_on = %runs_on, huge_pages_mb, "SmolVLM2 loaded.");
        Ok(SmolVlm {
            name,
            spec,
            prompter,
            vision,
            embedder,
            decoder,
            runs_on,
            assignments: graphs.assignments,
            threads: options.threads,
            batch: options.batch.max(1),
            load_time: started.elapsed(),
            pixel_buffer: Vec::new(),
            _held_weights: graphs.held_weights,
        })
    }
}

/// The decoder weights from which moving them into huge pages pays (`huge_pages`).
const HUGE_PAGES_FROM: u64 = 64 << 20;

/// The model's name in answers: the folder's name and the variant's suffix.
fn model_name(model_dir: &Path, suffix: &str) -> String {
    model_dir
        .file_name()
        .map(|name| format!("{}{suffix}", name.to_string_lossy()))
        .unwrap_or_else(|| "smolvlm2".to_owned())
}

/// The decoder's inputs and outputs besides its cache: the embeddings and mask in, then the third
/// input: `position_ids` (official graphs) or `num_logits_to_keep` (Lookout's, whose positions come
/// from the mask); the logits out.
fn decoder_ports(third: Port) -> (Vec<Port>, Vec<Port>) {
    use TensorElementType::{Float32, Int64};
    let inputs = vec![
        port("inputs_embeds", Float32, 3),
        port("attention_mask", Int64, 2),
        third,
    ];
    (inputs, vec![port("logits", Float32, 3)])
}

/// The decoder's cache: a key and a value of every layer, of `element`s, in (`past_key_values.*`) and
/// out (`present.*`).
fn cache_ports(layers: usize, element: TensorElementType) -> (Vec<Port>, Vec<Port>) {
    let ports = |prefix| {
        cache_names(prefix, layers)
            .into_iter()
            .map(|name| port(name, element, 4))
            .collect()
    };
    (ports("past_key_values"), ports("present"))
}

/// The names of the cache tensors: `{prefix}.{layer}.key` and `.value`, layer after layer.
fn cache_names(prefix: &str, layers: usize) -> Vec<String> {
    (0..layers)
        .flat_map(|layer| ["key", "value"].map(|kind| format!("{prefix}.{layer}.{kind}")))
        .collect()
}

/// Checks that `declared` (a graph's inputs or outputs, `kind`) has every port, with the element type
/// and rank given; else says what does not match.
fn check_ports(kind: &str, wanted: &[Port], declared: &[(&str, &ValueType)]) -> Result<(), String> {
    for port in wanted {
        let (_, dtype) = declared
            .iter()
            .find(|(name, _)| *name == port.name)
            .ok_or_else(|| {
                let names: Vec<&str> = declared.iter().map(|(name, _)| *name).collect();
                format!("no {kind} named {:?}; it has {names:?}", port.name)
            })?;
        match dtype {
            ValueType::Tensor { ty, shape, .. }
                if *ty == port.dtype && shape.len() == port.rank => {}
            ValueType::Tensor { ty, shape, .. } => {
                return Err(format!(
                    "{kind} {:?} is {ty:?} of rank {}, expected {:?} of rank {}",
                    port.name,
                    shape.len(),
                    port.dtype,
                    port.rank
                ));
            }
            other => return Err(format!("{kind} {:?} is {other:?}, not a tensor", port.name)),
        }
    }
    Ok(())
}

/// The cache layout from the decoder's declared inputs: the element type (f32 or f16) and the key and
/// value heads and head size, which must be fixed numbers. The first layer's key gives them; every
/// cache port is then checked against them (`check_ports`).
fn cache_layout(inputs: &[(&str, &ValueType)], layers: usize) -> Result<CacheLayout, String> {
    let first = inputs
        .iter()
        .find(|(name, _)| *name == "past_key_values.0.key")
        .map(|(_, dtype)| *dtype);
    let Some(ValueType::Tensor { ty, shape, .. }) = first else {
        return Err("past_key_values.0.key is not a tensor".to_owned());
    };
    let element = match ty {
        TensorElementType::Float32 => CacheElement::F32,
        TensorElementType::Float16 => CacheElement::F16,
        other => {
            return Err(format!(
                "past_key_values.0.key is {other:?}; a cache is Float32 or Float16"
            ));
        }
    };
    if shape.len() != 4 {
        return Err(format!(
            "past_key_values.0.key has rank {}, expected 4",
            shape.len()
        ));
    }
    let (kv_heads, head_dim) = (shape[1], shape[3]);
    if kv_heads <= 0 || head_dim <= 0 {
        return Err(format!(
            "the cache shape {shape:?} does not give fixed kv heads and head size"
        ));
    }
    Ok(CacheLayout {
        past_names: cache_names("past_key_values", layers),
        present_names: cache_names("present", layers),
        kv_heads,
        head_dim,
        element,
        has_logits_to_keep: inputs.iter().any(|(name, _)| *name == "num_logits_to_keep"),
    })
}

#[cfg(test)]
mod tests {
    use ort::value::{Shape, SymbolicDimensions};

    use super::*;
    use ort::value::TensorElementType::{Float16, Float32, Int32, Int64};

    fn tensor(ty: TensorElementType, shape: &[i64]) -> ValueType {
        ValueType::Tensor {
            ty,
            shape: Shape::new(shape.iter().copied()),
            dimension_symbols: SymbolicDimensions::new(shape.iter().map(|_| String::new())),
        }
    }

    #[test]
    fn the_decoder_declares_a_key_and_a_value_per_layer_in_and_out() {
        let (inputs, outputs) = decoder_ports(port("position_ids", Int64, 2));
        assert_eq!(
            inputs,
            [
                port("inputs_embeds", Float32, 3),
                port("attention_mask", Int64, 2),
                port("position_ids", Int64, 2),
            ]
        );
        assert_eq!(outputs, [port("logits", Float32, 3)]);
        let (past, present) = cache_ports(2, Float16);
        assert_eq!(
            past,
            [
                port("past_key_values.0.key", Float16, 4),
                port("past_key_values.0.value", Float16, 4),
                port("past_key_values.1.key", Float16, 4),
                port("past_key_values.1.value", Float16, 4),
            ]
        );
        assert_eq!(
            present,
            [
                port("present.0.key", Float16, 4),
                port("present.0.value", Float16, 4),
                port("present.1.key", Float16, 4),
                port("present.1.value", Float16, 4),
            ]
        );
    }

    #[test]
    fn ports_declared_as_wanted_pass_whatever_else_is_declared() {
        let ids = tensor(Int64, &[-1, -1]);
        let extra = tensor(Float32, &[1]);
        let declared = [("extra", &extra), ("input_ids", &ids)];
        assert_eq!(
            check_ports("input", &[port("input_ids", Int64, 2)], &declared),
            Ok(())
        );
    }

    #[test]
    fn a_missing_port_is_named_with_those_declared() {
        let ids = tensor(Int64, &[-1, -1]);
        assert_eq!(
            check_ports("input", &[port("input_ids", Int64, 2)], &[("ids", &ids)]),
            Err(r#"no input named "input_ids"; it has ["ids"]"#.to_owned())
        );
    }

    #[test]
    fn a_port_of_another_type_or_rank_is_named_with_both() {
        let wanted = [port("logits", Float32, 3)];
        let int = tensor(Int32, &[1, -1, 49280]);
        assert_eq!(
            check_ports("output", &wanted, &[("logits", &int)]),
            Err(r#"output "logits" is Int32 of rank 3, expected Float32 of rank 3"#.to_owned())
        );
        let flat = tensor(Float32, &[-1, 49280]);
        assert_eq!(
            check_ports("output", &wanted, &[("logits", &flat)]),
            Err(r#"output "logits" is Float32 of rank 2, expected Float32 of rank 3"#.to_owned())
        );
        let sequence = ValueType::Sequence(Box::new(tensor(Float32, &[1])));
        let problem = check_ports("output", &wanted, &[("logits", &sequence)]).unwrap_err();
        assert!(
            problem.starts_with(r#"output "logits" is Sequence"#),
            "{problem}"
        );
        assert!(problem.ends_with(", not a tensor"), "{problem}");
    }

    #[test]
    fn the_cache_layout_takes_fixed_heads_and_head_size() {
        let cache = tensor(Float32, &[-1, 3, -1, 64]);
        let keep = tensor(Int64, &[]);
        let Ok(layout) = cache_layout(
            &[
                ("past_key_values.0.key", &cache),
                ("num_logits_to_keep", &keep),
            ],
            1,
        ) else {
            panic!("the layout is refused");
        };
        assert_eq!((layout.kv_heads, layout.head_dim), (3, 64));
        assert_eq!(layout.element, CacheElement::F32);
        assert_eq!(
            layout.past_names,
            ["past_key_values.0.key", "past_key_values.0.value"]
        );
        assert_eq!(layout.present_names, ["present.0.key", "present.0.value"]);
        assert!(layout.has_logits_to_keep);
        let Ok(layout) = cache_layout(&[("past_key_values.0.key", &cache)], 1) else {
            panic!("the layout is refused");
        };
        assert!(!layout.has_logits_to_keep);
    }

    #[test]
    fn a_half_precision_cache_is_read_as_such_and_an_integer_one_refused() {
        let half = tensor(Float16, &[-1, 3, -1, 64]);
        let Ok(layout) = cache_layout(&[("past_key_values.0.key", &half)], 1) else {
            panic!("the layout is refused");
        };
        assert_eq!(layout.element, CacheElement::F16);
        let int = tensor(Int32, &[-1, 3, -1, 64]);
        let Err(problem) = cache_layout(&[("past_key_values.0.key", &int)], 1) else {
            panic!("an Int32 cache is accepted");
        };
        assert_eq!(
            problem,
            "past_key_values.0.key is Int32; a cache is Float32 or Float16"
        );
    }

    #[test]
    fn a_cache_of_dynamic_heads_is_refused() {
        let cache = tensor(Float32, &[-1, -1, -1, 64]);
        assert_eq!(
            cache_layout(&[("past_key_values.0.key", &cache)], 1).err(),
            Some(
                "the cache shape [-1, -1, -1, 64] does not give fixed kv heads and head size"
                    .to_owned()
            )
        );
        assert_eq!(
            cache_layout(&[], 1).err(),
            Some("past_key_values.0.key is not a tensor".to_owned())
        );
    }

    #[test]
    fn the_model_is_named_after_its_folder_and_variant() {
        assert_eq!(
            model_name(Path::new("models/fixtures/smolvlm-micro"), "_int8"),
            "smolvlm-micro_int8"
        );
        assert_eq!(model_name(Path::new("/"), ""), "smolvlm2");
    }
}
