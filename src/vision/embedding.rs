//! The token embedding table, read row by row from the `embed_tokens` graph's own file.
//!
//! The export's `embed_tokens` graph is one `Gather` of a float table (49280 x 576 for SmolVLM2-256M,
//! 113 MB) by the prompt's ids. Loaded as an ONNX Runtime session, the whole table sits in memory, about
//! a third of what the int8 model needs; yet a prompt reads a few hundred of its rows and each decoding
//! step one. So when the file is exactly that graph, with the table stored in it, the analyser reads the
//! rows it needs from the file instead (positioned reads, served by the page cache): the same bytes a
//! `Gather` copies, without holding the table. Any other graph runs as a session, as before.
//!
//! Recognising the graph takes a walk over its protobuf fields (the ONNX `ModelProto` schema) that reads
//! the small ones and skips over the table's bytes; nothing else of ONNX is parsed here.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The rows of a float table stored in a file: `vocab` rows of `hidden` little-endian f32 from `offset`.
#[derive(Debug)]
pub struct EmbeddingTable {
    file: File,
    offset: u64,
    vocab: usize,
    hidden: usize,
}

/// Why ids could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    OutOfRange { id: u32, vocab: usize },
    #[error("reading the embedding table: {0}")]
    Read(#[from] io::Error),
}

impl EmbeddingTable {
    /// The table of `path` if the file is a graph that only gathers rows of a float table stored in it
    /// (`inputs_embeds = Gather(table, input_ids)`, axis 0); `None` for any other graph, or a file that
    /// cannot be read as one (the session that runs it instead reports why).
    pub fn open(path: &Path) -> Option<EmbeddingTable> {
        let mut reader = Fields::new(File::open(path).ok()?).ok()?;
        let graph = find_graph(&mut reader).ok()??;
        let table = graph.gather_table()?;
        Some(EmbeddingTable {
            file: reader.into_file(),
            offset: table.offset,
            vocab: table.vocab,
            hidden: table.hidden,
        })
    }

    /// The width of a row.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The rows of `ids`, one after the other.
    pub fn lookup(&self, ids: &[u32]) -> Result<Vec<f32>, LookupError> {
        let row_bytes = self.hidden * 4;
        let mut bytes = vec![0u8; row_bytes];
        let mut rows = Vec::with_capacity(ids.len() * self.hidden);
        for &id in ids {
            if id as usize >= self.vocab {
                return Err(LookupError::OutOfRange {
                    id,
                    vocab: self.vocab,
                });
            }
            self.file
                .read_exact_at(&mut bytes, self.offset + id as u64 * row_bytes as u64)?;
            rows.extend(
                bytes
                    .chunks_exact(4)
                    .map(|value| f32::from_le_bytes([value[0], value[1], value[2], value[3]])),
            );
        }
        Ok(rows)
    }
}

/// What the walk keeps of a graph: its nodes, and where each float initializer's bytes are.
#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    initializers: Vec<Initializer>,
}

#[derive(Default)]
struct Node {
    op_type: String,
    domain: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// A non-zero `axis` attribute.
    other_axis: bool,
}

#[derive(Default)]
struct Initializer {
    name: String,
    dims: Vec<u64>,
    data_type: u64,
    /// Where `raw_data` starts in the file, and its length; none when stored otherwise.
    raw: Option<(u64, u64)>,
}

/// A float table of `vocab` x `hidden` at `offset`.
struct Table {
    offset: u64,
    vocab: usize,
    hidden: usize,
}

/// ONNX `TensorProto.DataType.FLOAT`.
const FLOAT: u64 = 1;

impl Graph {
    fn gather_table(&self) -> Option<Table> {
        let [node] = self.nodes.as_slice() else {
            return None;
        };
        let plain_gather = node.op_type == "Gather" && node.domain.is_empty() && !node.other_axis;
        if !plain_gather || node.outputs != ["inputs_embeds"] {
            return None;
        }
        let [table_name, ids] = node.inputs.as_slice() else {
            return None;
        };
        if ids != "input_ids" {
            return None;
        }
        let table = self
            .initializers
            .iter()
            .find(|initializer| initializer.name == *table_name)?;
        let [vocab, hidden] = table.dims.as_slice() else {
            return None;
        };
        let (offset, length) = table.raw?;
        let (vocab, hidden) = (
            usize::try_from(*vocab).ok()?,
            usize::try_from(*hidden).ok()?,
        );
        let complete = vocab.checked_mul(hidden)?.checked_mul(4)? as u64 == length;
        (table.data_type == FLOAT && complete && hidden > 0).then_some(Table {
            offset,
            vocab,
            hidden,
        })
    }
}

/// The graph of the `ModelProto` in `reader` (field 7), if it has one.
fn find_graph(reader: &mut Fields) -> io::Result<Option<Graph>> {
    let end = reader.len;
    while let Some((field, wire)) = reader.next_field(end)? {
        if (field, wire) == (7, LENGTH_DELIMITED) {
            let length = reader.varint()?;
            let end = reader.position + length;
            return read_graph(reader, end).map(Some);
        }
        reader.skip(wire)?;
    }
    Ok(None)
}

/// A `GraphProto` from the reader's position to `end`: nodes (field 1) and initializers (field 5).
fn read_graph(reader: &mut Fields, end: u64) -> io::Result<Graph> {
    let mut graph = Graph::default();
    while let Some((field, wire)) = reader.next_field(end)? {
        match (field, wire) {
            (1, LENGTH_DELIMITED) => {
                let bytes = reader.bytes()?;
                graph.nodes.push(read_node(&bytes)?);
            }
            (5, LENGTH_DELIMITED) => {
                let length = reader.varint()?;
                let end = reader.position + length;
                graph.initializers.push(read_initializer(reader, end)?);
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(graph)
}

/// A `NodeProto`: inputs (1), outputs (2), op_type (4), attributes (5), domain (7).
fn read_node(bytes: &[u8]) -> io::Result<Node> {
    let mut node = Node::default();
    let mut reader = Fields::new(io::Cursor::new(bytes))?;
    let end = reader.len;
    while let Some((field, wire)) = reader.next_field(end)? {
        match (field, wire) {
            (1, LENGTH_DELIMITED) => node.inputs.push(reader.string()?),
            (2, LENGTH_DELIMITED) => node.outputs.push(reader.string()?),
            (4, LENGTH_DELIMITED) => node.op_type = reader.string()?,
            (7, LENGTH_DELIMITED) => node.domain = reader.string()?,
            (5, LENGTH_DELIMITED) => {
                let attribute = reader.bytes()?;
                node.other_axis |= is_other_axis(&attribute)?;
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(node)
}

/// Whether an `AttributeProto` is `axis` (name, 1) with a non-zero value (i, 3).
fn is_other_axis(bytes: &[u8]) -> io::Result<bool> {
    let mut reader = Fields::new(io::Cursor::new(bytes))?;
    let end = reader.len;
    let (mut name, mut value) = (String::new(), 0);
    while let Some((field, wire)) = reader.next_field(end)? {
        match (field, wire) {
            (1, LENGTH_DELIMITED) => name = reader.string()?,
            (3, VARINT) => value = reader.varint()?,
            _ => reader.skip(wire)?,
        }
    }
    Ok(name == "axis" && value != 0)
}

/// A `TensorProto` from the reader's position to `end`: dims (1), data_type (2), name (8) and where
/// raw_data (9) lies, skipped over.
fn read_initializer(reader: &mut Fields, end: u64) -> io::Result<Initializer> {
    let mut initializer = Initializer::default();
    while let Some((field, wire)) = reader.next_field(end)? {
        match (field, wire) {
            (1, VARINT) => initializer.dims.push(reader.varint()?),
            (1, LENGTH_DELIMITED) => {
                let packed = reader.bytes()?;
                let mut dims = Fields::new(io::Cursor::new(packed.as_slice()))?;
                while dims.position < dims.len {
                    initializer.dims.push(dims.varint()?);
                }
            }
            (2, VARINT) => initializer.data_type = reader.varint()?,
            (8, LENGTH_DELIMITED) => initializer.name = reader.string()?,
            (9, LENGTH_DELIMITED) => {
                let length = reader.varint()?;
                initializer.raw = Some((reader.position, length));
                reader.advance(length)?;
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(initializer)
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

/// Protobuf fields read in order from a seekable source, with the position kept.
struct Fields<R = File> {
    reader: BufReader<R>,
    position: u64,
    len: u64,
}

impl<R: Read + Seek> Fields<R> {
    fn new(mut source: R) -> io::Result<Fields<R>> {
        let len = source.seek(io::SeekFrom::End(0))?;
        source.seek(io::SeekFrom::Start(0))?;
        Ok(Fields {
            reader: BufReader::new(source),
            position: 0,
            len,
        })
    }

    fn into_file(self) -> R {
        self.reader.into_inner()
    }

    /// The next field's number and wire type, or `None` at `end`.
    fn next_field(&mut self, end: u64) -> io::Result<Option<(u64, u8)>> {
        if self.position >= end {
            return Ok(None);
        }
        let key = self.varint()?;
        Ok(Some((key >> 3, (key & 7) as u8)))
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut byte = [0u8];
        self.reader.read_exact(&mut byte)?;
        self.position += 1;
        Ok(byte[0])
    }

    fn varint(&mut self) -> io::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid("a varint longer than 10 bytes"))
    }

    /// A length-delimited field's bytes; only small fields are read this way.
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let length = self.varint()?;
        if length > self.len - self.position.min(self.len) || length > MAX_SMALL_FIELD {
            return Err(invalid("a field longer than expected"));
        }
        let mut bytes = vec![0u8; length as usize];
        self.reader.read_exact(&mut bytes)?;
        self.position += length;
        Ok(bytes)
    }

    fn string(&mut self) -> io::Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| invalid("a name that is not UTF-8"))
    }

    fn advance(&mut self, length: u64) -> io::Result<()> {
        if self.position + length > self.len {
            return Err(invalid("a field past the end of the file"));
        }
        self.reader.seek_relative(length as i64)?;
        self.position += length;
        Ok(())
    }

    fn skip(&mut self, wire: u8) -> io::Result<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.advance(8),
            LENGTH_DELIMITED => {
                let length = self.varint()?;
                self.advance(length)
            }
            FIXED32 => self.advance(4),
            _ => Err(invalid("an unknown wire type")),
        }
    }
}

/// The largest field read into memory: names, nodes, attributes, packed dims.
const MAX_SMALL_FIELD: u64 = 1 << 20;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}
