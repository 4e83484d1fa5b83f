//! The external data file beside a built graph: every weight's bytes, written as they are produced (a
//! graph holds only their offsets), so building needs memory for one weight at a time and a model
//! past protobuf's 2 GiB limit still fits.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::BuildError;
use super::onnx::{DATA_LOCATION_EXTERNAL, StringStringEntryProto, TensorProto};

/// Each weight starts at a multiple of this, so ONNX Runtime can map it from the file in place.
const ALIGNMENT: u64 = 4096;

pub struct WeightsFile {
    path: PathBuf,
    /// The file's name as the graph refers to it (relative to the graph's folder).
    location: String,
    writer: BufWriter<File>,
    offset: u64,
}

impl WeightsFile {
    /// Creates `path` (the graph refers to it as `location`).
    pub fn create(path: &Path, location: &str) -> Result<WeightsFile, BuildError> {
        let file = File::create(path).map_err(|source| write_error(path, source))?;
        Ok(WeightsFile {
            path: path.to_owned(),
            location: location.to_owned(),
            writer: BufWriter::with_capacity(1 << 20, file),
            offset: 0,
        })
    }

    /// Appends a weight's `bytes` and returns the initializer that points at them.
    pub fn write(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: i32,
        bytes: &[u8],
    ) -> Result<TensorProto, BuildError> {
        let padding = self.offset.next_multiple_of(ALIGNMENT) - self.offset;
        let result = self
            .writer
            .write_all(&vec![0u8; padding as usize])
            .and_then(|()| self.writer.write_all(bytes));
        result.map_err(|source| write_error(&self.path, source))?;
        let offset = self.offset + padding;
        self.offset = offset + bytes.len() as u64;
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.to_owned(),
            value,
        };
        Ok(TensorProto {
            dims: dims.iter().map(|dim| *dim as i64).collect(),
            data_type,
            name: name.to_owned(),
            external_data: vec![
                entry("location", self.location.clone()),
                entry("offset", offset.to_string()),
                entry("length", bytes.len().to_string()),
            ],
            data_location: DATA_LOCATION_EXTERNAL,
            ..TensorProto::default()
        })
    }

    /// Flushes and syncs the file: a full disk is reported here at the latest.
    pub fn finish(self) -> Result<(), BuildError> {
        let path = self.path.clone();
        let file = self
            .writer
            .into_inner()
            .map_err(|error| write_error(&path, error.into_error()))?;
        file.sync_all().map_err(|source| write_error(&path, source))
    }
}

fn write_error(path: &Path, source: std::io::Error) -> BuildError {
    BuildError::Write {
        path: path.to_owned(),
        source,
    }
}
