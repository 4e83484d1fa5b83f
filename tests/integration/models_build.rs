//! `lookout models build` on bad checkpoints and configs: each gets an error naming the tensor, field
//! or file, leaves no partial graph behind, and never touches a graph built before. The good path
//! (graphs equal to transformers' answers) is in smolvlm_conformance.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::common::config::smolvlm_fixture;

/// A copy of the fixture's files that `models build` reads (config and checkpoint), in a folder of
/// its own.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(smolvlm_fixture().join(name), model.join(name)).unwrap();
    }
    (dir, model)
}

fn build(model: &Path, precision: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args([
            "models",
            "build",
            model.to_str().unwrap(),
            "--precision",
            precision,
        ])
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The files in the model's onnx/ folder.
fn onnx_files(model: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(model.join("onnx"))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts the build failed (exit 1) with every one of `words` in its message, and left nothing.
fn assert_refused(model: &Path, output: &Output, words: &[&str]) {
    assert_eq!(output.status.code(), Some(1), "{}", stderr(output));
    for word in words {
        assert!(
            stderr(output).contains(word),
            "{word:?} not in: {}",
            stderr(output)
        );
    }
    assert!(
        onnx_files(model).is_empty(),
        "left behind: {:?}",
        onnx_files(model)
    );
}

/// Rewrites the model's checkpoint with `change` applied to its tensors (name, dtype, shape, bytes).
fn rewrite_checkpoint(
    model: &Path,
    change: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let parsed = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = parsed
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    change(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn edit_config(model: &Path, change: impl FnOnce(&mut Value)) {
    let path = model.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    change(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn a_missing_tensor_is_named() {
    let (_dir, model) = model_copy();
    let name = "model.text_model.layers.1.mlp.up_proj.weight";
    rewrite_checkpoint(&model, |tensors| tensors.retain(|tensor| tensor.0 != name));
    assert_refused(
        &model,
        &build(&model, "fp32"),
        &["model.safetensors", name, "missing"],
    );
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_both_shapes() {
    let (_dir, model) = model_copy();
    let name = "model.text_model.layers.0.self_attn.k_proj.weight";
    rewrite_checkpoint(&model, |tensors| {
        let tensor = tensors.iter_mut().find(|tensor| tensor.0 == name).unwrap();
        tensor.2 = vec![64, 32];
    });
    assert_refused(
        &model,
        &build(&model, "int4"),
        &[name, "has shape [64, 32], the config says [32, 64]"],
    );
}

#[test]
fn a_tensor_of_an_unreadable_type_is_named() {
    let (_dir, model) = model_copy();
    let name = "model.text_model.norm.weight";
    rewrite_checkpoint(&model, |tensors| {
        let tensor = tensors.iter_mut().find(|tensor| tensor.0 == name).unwrap();
        tensor.1 = Dtype::I32;
    });
    assert_refused(&model, &build(&model, "fp32"), &[name, "is I32"]);
}

#[test]
fn a_config_whose_sizes_disagree_with_the_tensors_names_the_first_that_differs() {
    let (_dir, model) = model_copy();
    edit_config(&model, |config| {
        config["text_config"]["intermediate_size"] = 256.into();
    });
    assert_refused(
        &model,
        &build(&model, "int8"),
        &[
            "model.text_model.layers.0.mlp.gate_proj.weight",
            "the config says [256, 64]",
        ],
    );
}

#[test]
fn an_unknown_architecture_or_text_model_is_named_with_the_field() {
    let (_dir, model) = model_copy();
    edit_config(&model, |config| config["model_type"] = "qwen2_vl".into());
    assert_refused(
        &model,
        &build(&model, "fp32"),
        &["config.json", "model_type \"qwen2_vl\""],
    );
    edit_config(&model, |config| {
        config["model_type"] = "smolvlm".into();
        config["text_config"]["model_type"] = "mistral".into();
        config["text_config"]["num_attention_heads"] = Value::Null;
    });
    assert_refused(
        &model,
        &build(&model, "fp32"),
        &[
            "text_config.model_type is \"mistral\"",
            "text_config.num_attention_heads must be a positive integer",
        ],
    );
}

#[test]
fn a_truncated_checkpoint_is_refused_with_its_path() {
    let (_dir, model) = model_copy();
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(
        &model,
        &build(&model, "fp32"),
        &["model.safetensors: not a readable safetensors checkpoint"],
    );
}

#[test]
fn a_header_that_lies_about_offsets_is_refused() {
    let (_dir, model) = model_copy();
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    let data = &bytes[8 + length..];
    // The norm's bytes said to run past the end of the file.
    header["model.text_model.norm.weight"]["data_offsets"] =
        serde_json::json!([data.len() - 16, data.len() + 240]);
    let header = header.to_string().into_bytes();
    let mut lying = (header.len() as u64).to_le_bytes().to_vec();
    lying.extend_from_slice(&header);
    lying.extend_from_slice(data);
    std::fs::write(&path, lying).unwrap();
    assert_refused(
        &model,
        &build(&model, "fp32"),
        &["model.safetensors: not a readable safetensors checkpoint"],
    );
}

#[test]
fn a_full_disk_fails_the_build_naming_the_file_and_leaves_nothing() {
    let (_dir, model) = model_copy();
    std::fs::create_dir_all(model.join("onnx")).unwrap();
    // The weights file the build writes first goes to a device that is always full.
    std::os::unix::fs::symlink(
        "/dev/full",
        model.join("onnx/lookout_decoder_fp32.onnx.data.partial"),
    )
    .unwrap();
    assert_refused(
        &model,
        &build(&model, "fp32"),
        &[
            "writing",
            "lookout_decoder_fp32.onnx.data.partial",
            "No space left on device",
        ],
    );
}

#[test]
fn a_failed_build_keeps_the_graph_built_before() {
    let (_dir, model) = model_copy();
    let built = build(&model, "int8");
    assert!(built.status.success(), "{}", stderr(&built));
    assert_eq!(
        onnx_files(&model),
        [
            "lookout_decoder_int8.onnx",
            "lookout_decoder_int8.onnx.data"
        ]
    );
    let before: Vec<Vec<u8>> = onnx_files(&model)
        .iter()
        .map(|name| std::fs::read(model.join("onnx").join(name)).unwrap())
        .collect();
    rewrite_checkpoint(&model, |tensors| {
        tensors.retain(|tensor| tensor.0 != "lm_head.weight")
    });
    let failed = build(&model, "int8");
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let after: Vec<Vec<u8>> = onnx_files(&model)
        .iter()
        .map(|name| std::fs::read(model.join("onnx").join(name)).unwrap())
        .collect();
    assert_eq!(before, after, "the graph built before was changed");
}

#[test]
fn an_unknown_precision_is_a_usage_error() {
    let (_dir, model) = model_copy();
    let output = build(&model, "int3");
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("expected one of fp32, fp16, int8, int4"),
        "{}",
        stderr(&output)
    );
}

/// Only the quantized graphs read their weights in place (`QuantizedLinear`), so only they are loaded
/// with their weights in memory; the others' operators pack copies, which would hold the weights twice.
/// A file that is not a graph says no.
#[test]
fn only_the_quantized_graphs_read_their_weights_in_place() {
    let dir = crate::common::config::smolvlm_built_fixture();
    for (precision, in_place) in [
        ("fp32", false),
        ("fp16", false),
        ("int8", true),
        ("int4", true),
    ] {
        let graph = dir.join(format!("onnx/lookout_decoder_{precision}.onnx"));
        assert!(graph.is_file(), "{}", graph.display());
        assert_eq!(
            lookout::vision::model::reads_weights_in_place(&graph),
            in_place,
            "{precision}"
        );
    }
    assert!(!lookout::vision::model::reads_weights_in_place(
        &dir.join("config.json")
    ));
    assert!(!lookout::vision::model::reads_weights_in_place(
        &dir.join("onnx/missing.onnx")
    ));
}
