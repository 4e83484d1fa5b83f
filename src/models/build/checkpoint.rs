//! A Hugging Face checkpoint (`model.safetensors`) and its text model's sizes (`config.json`), read and
//! checked against each other before anything is written: a missing tensor, a shape that disagrees
//! with the config, a truncated file or a header that lies about its offsets is an error naming the
//! tensor, field or file.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::BuildError;

/// The text model's sizes, from `config.json` (`text_config` of a SmolVLM folder).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub max_positions: usize,
    /// The LM head is the token embedding table (`tie_word_embeddings`), not a tensor of its own.
    pub tied_head: bool,
    /// The prefix of the text model's tensors in the checkpoint (`model.text_model.`).
    pub prefix: &'static str,
}

/// The architectures whose checkpoints Lookout builds from: SmolVLM (model_type `smolvlm`, SmolVLM2's
/// `SmolVLMForConditionalGeneration`) around a Llama text model.
const ARCHITECTURES: [(&str, &str); 1] = [("smolvlm", "model.text_model.")];

impl TextConfig {
    /// Reads `config.json` in `dir`: every missing or unusable field is reported at once.
    pub fn read(dir: &Path) -> Result<TextConfig, BuildError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| BuildError::Io {
            path: path.clone(),
            source,
        })?;
        let root: Value = serde_json::from_str(&text).map_err(|error| BuildError::Config {
            path: path.clone(),
            problems: vec![format!("not JSON: {error}")],
        })?;
        TextConfig::from_json(&root).map_err(|problems| BuildError::Config { path, problems })
    }

    fn from_json(root: &Value) -> Result<TextConfig, Vec<String>> {
        let model_type = root.get("model_type").and_then(Value::as_str).unwrap_or("");
        let Some((_, prefix)) = ARCHITECTURES.iter().find(|(name, _)| *name == model_type) else {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|(name, _)| *name).collect();
            return Err(vec![format!(
                "model_type {model_type:?} is not one Lookout builds (known: {known:?})"
            )]);
        };
        let text = root.get("text_config").unwrap_or(&Value::Null);
        let mut problems = Vec::new();
        let text_type = text.get("model_type").and_then(Value::as_str).unwrap_or("");
        if text_type != "llama" {
            problems.push(format!(
                "text_config.model_type is {text_type:?}; Lookout builds \"llama\" text models"
            ));
        }
        let mut size = |field: &str| -> usize {
            match text.get(field).and_then(Value::as_u64) {
                Some(value) if value > 0 => value as usize,
                _ => {
                    problems.push(format!("text_config.{field} must be a positive integer"));
                    0
                }
            }
        };
        let hidden = size("hidden_size");
        let intermediate = size("intermediate_size");
        let layers = size("num_hidden_layers");
        let heads = size("num_attention_heads");
        let kv_heads = size("num_key_value_heads");
        let vocab = size("vocab_size");
        let max_positions = size("max_position_embeddings");
        let head_dim = match text.get("head_dim").and_then(Value::as_u64) {
            Some(value) if value > 0 => value as usize,
            Some(_) => {
                problems.push("text_config.head_dim must be a positive integer".to_owned());
                0
            }
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        if heads > 0 && kv_heads > 0 && heads % kv_heads != 0 {
            problems.push(format!(
                "text_config.num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})"
            ));
        }
        if head_dim % 2 != 0 {
            problems.push(format!(
                "text_config.head_dim ({head_dim}) must be even for the rotary embedding"
            ));
        }
        let activation = text
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if activation != "silu" {
            problems.push(format!(
                "text_config.hidden_act is {activation:?}; Lookout builds \"silu\""
            ));
        }
        for field in ["attention_bias", "mlp_bias"] {
            if text.get(field).and_then(Value::as_bool) == Some(true) {
                problems.push(format!("text_config.{field} = true is not supported"));
            }
        }
        let float = |value: Option<&Value>| value.and_then(Value::as_f64).map(|value| value as f32);
        let rms_norm_eps = float(text.get("rms_norm_eps")).unwrap_or(1e-5);
        let rope_theta = float(text.get("rope_theta"))
            .or_else(|| float(text.pointer("/rope_parameters/rope_theta")))
            .unwrap_or(10_000.0);
        let rope_type = text
            .pointer("/rope_parameters/rope_type")
            .or_else(|| text.pointer("/rope_scaling/rope_type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if rope_type != "default" {
            problems.push(format!(
                "text_config rope_type {rope_type:?} is not supported (only \"default\")"
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(TextConfig {
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            rms_norm_eps,
            rope_theta,
            max_positions,
            tied_head: text.get("tie_word_embeddings").and_then(Value::as_bool) == Some(true),
            prefix,
        })
    }
}

/// The tensors of a `model.safetensors`, its header already checked against its size.
pub struct Checkpoint<'a> {
    path: PathBuf,
    tensors: SafeTensors<'a>,
}

impl<'a> Checkpoint<'a> {
    /// Parses `bytes`, the contents of `path`: a truncated file or a header whose offsets do not fit is
    /// refused here.
    pub fn parse(path: &Path, bytes: &'a [u8]) -> Result<Checkpoint<'a>, BuildError> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|error| BuildError::Checkpoint {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        Ok(Checkpoint {
            path: path.to_owned(),
            tensors,
        })
    }

    /// The tensor `name` as f32 values in its stored (row-major) order, which must have `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, BuildError> {
        let problem = |problem: String| BuildError::Tensor {
            path: self.path.clone(),
            name: name.to_owned(),
            problem,
        };
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| problem("missing".to_owned()))?;
        if view.shape() != shape {
            return Err(problem(format!(
                "has shape {:?}, the config says {shape:?}",
                view.shape()
            )));
        }
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|bytes| half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|bytes| half::bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32())
                .collect(),
            other => {
                return Err(problem(format!(
                    "is {other:?}; Lookout reads F32, F16 and BF16 checkpoints"
                )));
            }
        };
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"model_type": "smolvlm", "text_config": text})
    }

    fn micro_text() -> serde_json::Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1152,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "hidden_act": "silu"
        })
    }

    #[test]
    fn f16_and_bf16_tensors_are_read_as_f32() {
        use safetensors::tensor::TensorView;
        let values = [1.5f32, -0.25, 65504.0];
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|value| half::f16::from_f32(*value).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|value| half::bf16::from_f32(*value).to_le_bytes())
            .collect();
        let bytes = safetensors::serialize(
            [
                ("a", TensorView::new(Dtype::F16, vec![3], &f16).unwrap()),
                (
                    "b",
                    TensorView::new(Dtype::BF16, vec![1, 3], &bf16).unwrap(),
                ),
            ],
            None,
        )
        .unwrap();
        let checkpoint = Checkpoint::parse(Path::new("m.safetensors"), &bytes).unwrap();
        assert_eq!(checkpoint.tensor("a", &[3]).unwrap(), values);
        // bf16 keeps 8 bits of mantissa: 65504 becomes 65536.
        assert_eq!(
            checkpoint.tensor("b", &[1, 3]).unwrap(),
            [1.5, -0.25, 65536.0]
        );
        let error = checkpoint.tensor("b", &[3]).unwrap_err().to_string();
        assert_eq!(
            error,
            "m.safetensors: tensor b has shape [1, 3], the config says [3]"
        );
    }

    #[test]
    fn a_smolvlm_config_gives_the_text_sizes() {
        let parsed = TextConfig::from_json(&config(micro_text())).unwrap();
        assert_eq!(
            parsed,
            TextConfig {
                hidden: 64,
                intermediate: 128,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                head_dim: 16,
                vocab: 1152,
                rms_norm_eps: 1e-5,
                rope_theta: 100_000.0,
                max_positions: 8192,
                tied_head: false,
                prefix: "model.text_model.",
            }
        );
    }

    #[test]
    fn an_unknown_architecture_is_named() {
        let root = serde_json::json!({"model_type": "qwen2_vl", "text_config": micro_text()});
        assert_eq!(
            TextConfig::from_json(&root).unwrap_err(),
            [r#"model_type "qwen2_vl" is not one Lookout builds (known: ["smolvlm"])"#]
        );
    }

    #[test]
    fn every_unusable_field_is_reported_at_once() {
        let mut text = micro_text();
        text["model_type"] = "mistral".into();
        text["num_key_value_heads"] = 3.into();
        text["hidden_size"] = serde_json::Value::Null;
        text["rope_parameters"]["rope_type"] = "yarn".into();
        assert_eq!(
            TextConfig::from_json(&config(text)).unwrap_err(),
            [
                r#"text_config.model_type is "mistral"; Lookout builds "llama" text models"#,
                "text_config.hidden_size must be a positive integer",
                "text_config.num_attention_heads (4) is not a multiple of num_key_value_heads (3)",
                r#"text_config rope_type "yarn" is not supported (only "default")"#,
            ]
        );
    }
}
