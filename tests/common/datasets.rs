//! Loading a dataset folder with Hugging Face `datasets` in Python (`tests/dataset/load.py`), as a
//! user fine-tuning on it would. The environment comes from `tests/dataset/python-env.sh` (run by
//! `make test-deps`); without it the test fails and says how to make it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn python() -> PathBuf {
    std::env::var_os("LOOKOUT_TEST_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dataset-python/bin/python"),
        PathBuf::from,
    )
}

/// What `datasets.load_dataset("imagefolder", data_dir=folder)` gives: `num_rows`, `features`
/// (column name to type) and `rows` (fields, `image_size`, `frame_sizes`). Panics with Python's
/// error when the folder does not load.
pub fn load(folder: &Path) -> Value {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run tests/dataset/python-env.sh (make test-deps does)",
        python.display()
    );
    let cache = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dataset/load.py");
    let output = Command::new(&python)
        .arg(script)
        .arg(folder)
        .env("HF_HOME", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .expect("run Python");
    assert!(
        output.status.success(),
        "datasets could not load {}:\n{}",
        folder.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "load.py printed no JSON ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
