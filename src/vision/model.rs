//! A SmolVLM2 model folder in the official export layout, read and checked before any graph is loaded.
//!
//! Every id, size and stop token comes from the folder's own files (config.json, generation_config.json,
//! preprocessor_config.json, processor_config.json, tokenizer.json), never from constants: the real
//! exports, the 500M model and the compact test fixture all differ in some of them. A missing file or
//! field is an error that names the file and the field.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::preprocess::ImageSettings;

/// What the rest of the vision stage needs to know about a model.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub dir: PathBuf,
    pub image: ImageSettings,
    /// `<image>` placeholders per tile (processor_config `image_seq_len`).
    pub image_seq_len: usize,
    pub image_token_id: u32,
    /// generation_config's eos id(s); the tokenizer adds `<|im_end|>` and `<|endoftext|>`.
    pub eos_ids: Vec<u32>,
    pub layers: usize,
    pub vocab_size: usize,
    /// The most positions the text model takes (`max_position_embeddings`; 8192 if unsaid).
    pub max_positions: usize,
    /// The bytes one position of the key/value cache takes (a key and a value of every layer, f32).
    pub kv_bytes_per_position: usize,
}

/// Why a model folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("no model in {0}: set vision.model_dir or LOOKOUT_MODEL_DIR to a SmolVLM2 ONNX export")]
    Missing(PathBuf),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(
        "{dir} has no {variant} variant; it holds: {present} (set vision.variant or --variant to one of them, or fetch it with `lookout models fetch --variant`)"
    )]
    VariantAbsent {
        dir: PathBuf,
        variant: String,
        present: String,
    },
}

/// The variants whose three graphs (`vision_encoder`, `embed_tokens`, `decoder_model_merged`) are all
/// in the folder's `onnx/`, in `VARIANTS` order.
pub(crate) fn variants_present(dir: &Path) -> Result<Vec<&'static str>, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::Missing(dir.to_owned()));
    }
    Ok(super::VARIANTS
        .into_iter()
        .filter(|variant| {
            let suffix = super::variant_suffix(variant).unwrap_or_default();
            ["vision_encoder", "embed_tokens", "decoder_model_merged"]
                .iter()
                .all(|graph| {
                    dir.join("onnx")
                        .join(format!("{graph}{suffix}.onnx"))
                        .is_file()
                })
        })
        .collect())
}

/// `config.json`'s cache size per position: a key and a value of `num_key_value_heads` heads of
/// `head_dim` (else hidden size over heads) f32 values per layer; 0 when the fields are missing.
fn kv_bytes_per_position(config: &Value) -> usize {
    let number = |field: &str| {
        config
            .pointer(&format!("/text_config/{field}"))
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize
    };
    let head_dim = match number("head_dim") {
        0 => number("hidden_size") / number("num_attention_heads").max(1),
        head_dim => head_dim,
    };
    2 * number("num_hidden_layers") * number("num_key_value_heads") * head_dim * size_of::<f32>()
}

/// Lookout's own decoder for a precision (fp32, fp16, int8, int4), built from the folder's checkpoint by
/// `lookout models build`: `onnx/lookout_decoder_<precision>.onnx`, its weights in the same name plus
/// `.data`. The name never collides with an official export's graphs.
pub fn built_decoder_path(dir: &Path, precision: &str) -> PathBuf {
    dir.join("onnx")
        .join(format!("lookout_decoder_{precision}.onnx"))
}

/// The external data file of a built graph: `<graph>.data`.
pub fn built_weights_path(graph: &Path) -> PathBuf {
    let mut name = graph.as_os_str().to_owned();
    name.push(".data");
    PathBuf::from(name)
}

/// Whether the graph at `path` has operators that read their weights in place rather than pack a copy
/// at load (Lookout's `QuantizedLinear`, in int8 and int4 graphs built since they use it). The graph
/// file holds no weights (they are in its `.data`), and the operator's name appears in it only as a
/// node's operator type, so looking for the name's bytes answers without parsing it. A file that
/// cannot be read says no: its load reports why.
pub fn reads_weights_in_place(path: &Path) -> bool {
    let name = crate::vision::operators::linear::NAME.as_bytes();
    std::fs::read(path).is_ok_and(|bytes| bytes.windows(name.len()).any(|window| window == name))
}

/// The decoder graph a folder's variant of graph suffix `suffix` answers with: Lookout's own for the
/// variant's precision when `own` is wanted and the folder holds it, else the official export's.
pub fn chosen_decoder(dir: &Path, suffix: &str, own: bool) -> ChosenDecoder {
    let variant = suffix.strip_prefix('_').unwrap_or("fp32");
    let built = super::built_precision(variant)
        .map(|precision| (precision, built_decoder_path(dir, precision)))
        .filter(|(_, path)| own && path.is_file());
    match built {
        Some((precision, path)) => ChosenDecoder::Built { precision, path },
        None => ChosenDecoder::Official(
            dir.join("onnx")
                .join(format!("decoder_model_merged{suffix}.onnx")),
        ),
    }
}

/// See `chosen_decoder`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChosenDecoder {
    Built {
        precision: &'static str,
        path: PathBuf,
    },
    Official(PathBuf),
}

impl ChosenDecoder {
    /// The decoder a loaded model answers with, from its graph's file name in `dir`'s `onnx/`.
    pub fn of_graph(dir: &Path, file_name: &str) -> ChosenDecoder {
        let path = dir.join("onnx").join(file_name);
        let built = ["fp32", "fp16", "int8", "int4"]
            .into_iter()
            .find(|precision| file_name == format!("lookout_decoder_{precision}.onnx"));
        match built {
            Some(precision) => ChosenDecoder::Built { precision, path },
            None => ChosenDecoder::Official(path),
        }
    }

    /// The bytes of the graph and its weights (external data included).
    pub fn bytes(&self) -> u64 {
        let graph = match self {
            ChosenDecoder::Built { path, .. } | ChosenDecoder::Official(path) => path,
        };
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
        let mut data = graph.as_os_str().to_owned();
        data.push(".data");
        size(graph) + size(&graph.with_extension("onnx_data")) + size(Path::new(&data))
    }
}

/// The metadata keys a built decoder carries: its precision, and the block size of its quantized
/// weights.
pub const BUILT_DECODER_PRECISION_KEY: &str = "lookout.precision";
pub const BUILT_DECODER_BLOCK_KEY: &str = "lookout.block_size";

fn read_json(dir: &Path, name: &str) -> Result<Value, ModelError> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|error| ModelError::File {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|error| ModelError::File {
        path,
        reason: format!("not valid JSON: {error}"),
    })
}

/// Reads one field by JSON pointer and converts it, naming the file and field when it fails.
fn field<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    file: &str,
    json: &Value,
    pointer: &str,
) -> Result<T, ModelError> {
    let value = json.pointer(pointer).ok_or_else(|| ModelError::File {
        path: dir.join(file),
        reason: format!("has no field {pointer}"),
    })?;
    serde_json::from_value(value.clone()).map_err(|error| ModelError::File {
        path: dir.join(file),
        reason: format!("field {pointer}: {error}"),
    })
}

impl ModelSpec {
    /// Reads the folder's configuration files.
    pub fn read(dir: &Path) -> Result<ModelSpec, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::Missing(dir.to_owned()));
        }
        let config = read_json(dir, "config.json")?;
        let generation = read_json(dir, "generation_config.json")?;
        let preprocessor = read_json(dir, "preprocessor_config.json")?;
        let processor = read_json(dir, "processor_config.json")?;
        let triple = |pointer: &str| {
            field::<[f32; 3]>(dir, "preprocessor_config.json", &preprocessor, pointer)
        };
        let image = ImageSettings {
            longest_edge: field(
                dir,
                "preprocessor_config.json",
                &preprocessor,
                "/size/longest_edge",
            )?,
            tile: field(
                dir,
                "preprocessor_config.json",
                &preprocessor,
                "/max_image_size/longest_edge",
            )?,
            rescale_factor: field(
                dir,
                "preprocessor_config.json",
                &preprocessor,
                "/rescale_factor",
            )?,
            mean: triple("/image_mean")?,
            std: triple("/image_std")?,
        };
        if image.tile == 0 || image.longest_edge < image.tile {
            return Err(ModelError::File {
                path: dir.join("preprocessor_config.json"),
                reason: format!(
                    "size.longest_edge ({}) must be at least max_image_size.longest_edge ({})",
                    image.longest_edge, image.tile
                ),
            });
        }
        // generation_config's eos may be one id or a list.
        let eos: Value = field(dir, "generation_config.json", &generation, "/eos_token_id")?;
        let eos_ids: Vec<u32> = match eos {
            Value::Array(ids) => ids
                .iter()
                .filter_map(Value::as_u64)
                .map(|id| id as u32)
                .collect(),
            other => other.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        };
        if eos_ids.is_empty() {
            return Err(ModelError::File {
                path: dir.join("generation_config.json"),
                reason: "eos_token_id is not a token id or a list of them".to_owned(),
            });
        }
        Ok(ModelSpec {
            dir: dir.to_owned(),
            image,
            image_seq_len: field(dir, "processor_config.json", &processor, "/image_seq_len")?,
            image_token_id: field(dir, "config.json", &config, "/image_token_id")?,
            eos_ids,
            layers: field(
                dir,
                "config.json",
                &config,
                "/text_config/num_hidden_layers",
            )?,
            vocab_size: field(dir, "config.json", &config, "/text_config/vocab_size")?,
            max_positions: config
                .pointer("/text_config/max_position_embeddings")
                .and_then(Value::as_u64)
                .map_or(8192, |positions| positions as usize),
            kv_bytes_per_position: kv_bytes_per_position(&config),
        })
    }
}
