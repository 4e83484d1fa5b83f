//! The token embedding table read from the `embed_tokens` file must give exactly what ONNX Runtime gives
//! running that graph, and only a graph that is a plain table lookup may be read that way.

use std::path::{Path, PathBuf};

use lookout::vision::embedding::{EmbeddingTable, LookupError};
use lookout::vision::runtime::{self, Placement};
use ort::value::Tensor;

fn fixture_graph(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures/smolvlm-micro/onnx")
        .join(name)
}

#[test]
fn rows_read_from_the_file_equal_the_graph_run_by_onnx_runtime() {
    let path = fixture_graph("embed_tokens.onnx");
    let table = EmbeddingTable::open(&path).expect("the fixture's embed graph is a plain lookup");
    let library = runtime::resolve_library(
        std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .as_deref(),
    )
    .unwrap();
    let environment = runtime::environment(&library).unwrap();
    let mut session = runtime::load_session(
        &environment,
        &path,
        &Placement::Cpu,
        1,
        runtime::Weights::Mapped,
    )
    .unwrap()
    .session;
    // The first and last rows, rows in between, and one twice.
    let last = table_rows(&table) - 1;
    let ids: Vec<u32> = vec![0, 1, 17, last / 2, last, 17];
    let tensor = Tensor::from_array((
        [1usize, ids.len()],
        ids.iter().map(|id| i64::from(*id)).collect::<Vec<_>>(),
    ))
    .unwrap();
    let outputs = session.run(ort::inputs! {"input_ids" => tensor}).unwrap();
    let (shape, expected) = outputs["inputs_embeds"]
        .try_extract_tensor::<f32>()
        .unwrap();
    assert_eq!(shape[2] as usize, table.hidden());
    let rows = table.lookup(&ids).unwrap();
    assert_eq!(rows.len(), ids.len() * table.hidden());
    assert!(
        rows.iter()
            .zip(expected)
            .all(|(ours, theirs)| ours.to_bits() == theirs.to_bits()),
        "the rows differ from ONNX Runtime's Gather"
    );
    assert!(rows.iter().any(|value| *value != 0.0));
}

/// The number of rows: the first id the table refuses.
fn table_rows(table: &EmbeddingTable) -> u32 {
    match table.lookup(&[u32::MAX]) {
        Err(LookupError::OutOfRange { vocab, .. }) => vocab as u32,
        other => panic!("an id past the table must be refused, got {other:?}"),
    }
}

#[test]
fn an_id_outside_the_vocabulary_is_an_error_naming_it() {
    let table = EmbeddingTable::open(&fixture_graph("embed_tokens.onnx")).unwrap();
    let vocab = table_rows(&table);
    let error = table.lookup(&[3, vocab]).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("token id {vocab} is outside the vocabulary of {vocab}")
    );
}

#[test]
fn other_graphs_and_damaged_files_are_not_read_as_a_table() {
    // Another graph: the decoder (many nodes), the vision encoder.
    assert!(EmbeddingTable::open(&fixture_graph("decoder_model_merged.onnx")).is_none());
    assert!(EmbeddingTable::open(&fixture_graph("vision_encoder.onnx")).is_none());
    let dir = tempfile::tempdir().unwrap();
    assert!(EmbeddingTable::open(&dir.path().join("missing.onnx")).is_none());
    let whole = std::fs::read(fixture_graph("embed_tokens.onnx")).unwrap();
    // Cut inside the table's bytes, and cut before the graph ends.
    for keep in [whole.len() / 2, whole.len() - 10, 100] {
        let truncated = dir.path().join(format!("truncated-{keep}.onnx"));
        std::fs::write(&truncated, &whole[..keep]).unwrap();
        assert!(
            EmbeddingTable::open(&truncated).is_none(),
            "a file cut to {keep} bytes was read as a table"
        );
    }
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"not a model at all, just text").unwrap();
    assert!(EmbeddingTable::open(&garbage).is_none());
}
