//! Lookout's own decoder (`lookout models build`): one key and one value buffer per layer, of a fixed
//! capacity, allocated once and bound once as both the graph's `past_key_values.N.*` input and its
//! `present.N.*` output. The attention node writes each step's new positions into the buffer at the
//! sequence's length and reads only the valid positions, so a decoding step neither copies nor
//! concatenates the cache, whatever its length.
//!
//! Two sets of buffers: one of a single row, allocated at load, where every prompt is prefilled and
//! a text answer decoded alone; and one of `batch` rows where several text answers are decoded
//! together, allocated the first time there are several. Their pages are given back to the system
//! once allocated (`release_pages`), so only what answers write becomes resident: a buffer sized
//! for the largest prompt costs what the prompts in it fill, and batch rows no batch reaches cost
//! nothing (`lookout bench`, int8 256M, 13 tiles: the peak of one answer 618 MB against 655, and
//! with the several-questions runs 868 MB against 1079). A prefilled prompt's positions are copied
//! out of the single row ("parked", compact: only its valid positions) so that the row is free for
//! the next prompt; a shared prefix is parked once and copied back in under each question, whose
//! own parked positions refer to the prefix's rather than copy them (868 MB down to 831 in the run
//! above). Parking gives the row's pages back, and loading frees what it copies unless another
//! question shares it, so a sequence is never held twice in full (831 down to 799); what it frees
//! goes back to the system, not to the heap, where it stayed resident (one answer's peak 581 MB at
//! 13 tiles, 625 on a 16-frame clip: 678 before). Decoding copies each answer's parked positions
//! into its row once, then steps in place. A row whose answer is complete stays in the batch, idle
//! (one masked position), until the batch ends: moving the others would be a copy, and the idle row
//! costs a few multiply-adds a step.
//!
//! The single row and the batch rows are separate buffers because ONNX Runtime binds a whole tensor:
//! a prefill with one row cannot run on a tensor of several.
//!
//! The capacity is sized at load for the largest prompt the tasks can produce. Unless the config fixed
//! it (`vision.max_context`), a longer prompt (an ask, tasks pushed since) grows the buffers once to
//! fit it, up to the model's position limit: between two answers every cache is parked, so nothing is
//! lost by reallocating.

use std::ops::Range;
use std::sync::Arc;

use ort::memory::Allocator;
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, Tensor, TensorElementType};

use super::wanted_logits;
use crate::vision::AnalyseError;
use crate::vision::smolvlm::ort_error;

/// The cache tensors' sizes: `[rows, kv_heads, capacity, head_dim]`, two per layer, and their element
/// type.
#[derive(Debug, Clone, Copy)]
pub(in crate::vision::smolvlm) struct CacheShape {
    pub(in crate::vision::smolvlm) layers: usize,
    pub(in crate::vision::smolvlm) kv_heads: usize,
    pub(in crate::vision::smolvlm) head_dim: usize,
    pub(in crate::vision::smolvlm) capacity: usize,
    pub(in crate::vision::smolvlm) element: CacheElement,
}

/// What the cache holds: the graph's float type (f16 in a half-precision graph). The loop only copies
/// cache positions around, so it handles them as bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(in crate::vision::smolvlm) enum CacheElement {
    F32,
    F16,
}

impl CacheElement {
    pub(in crate::vision::smolvlm) fn tensor_type(self) -> TensorElementType {
        match self {
            CacheElement::F32 => TensorElementType::Float32,
            CacheElement::F16 => TensorElementType::Float16,
        }
    }

    fn size(self) -> usize {
        match self {
            CacheElement::F32 => size_of::<f32>(),
            CacheElement::F16 => size_of::<half::f16>(),
        }
    }

    /// A cache tensor's bytes.
    fn bytes_mut(self, tensor: &mut DynTensor) -> Result<&mut [u8], AnalyseError> {
        Ok(match self {
            CacheElement::F32 => bytemuck::cast_slice_mut(
                tensor.try_extract_tensor_mut::<f32>().map_err(ort_error)?.1,
            ),
            CacheElement::F16 => bytemuck::cast_slice_mut(
                tensor
                    .try_extract_tensor_mut::<half::f16>()
                    .map_err(ort_error)?
                    .1,
            ),
        })
    }
}

impl CacheShape {
    /// The bytes of one row's buffers: a key and a value tensor per layer.
    pub(in crate::vision::smolvlm) fn bytes_per_row(&self) -> usize {
        2 * self.layers * self.kv_heads * self.capacity * self.position_bytes()
    }

    /// The bytes of one head's position.
    fn position_bytes(&self) -> usize {
        self.head_dim * self.element.size()
    }

    /// Where the positions of `head` of `row` start in a buffer, in bytes.
    fn head_start(&self, row: usize, head: usize) -> usize {
        (row * self.kv_heads + head) * self.capacity * self.position_bytes()
    }
}

/// A sequence's cache kept aside: its valid positions of every cache tensor, in segments of
/// consecutive positions. A question prefilled on top of a shared prefix keeps the prefix's segment
/// (shared, not copied: at 13 tiles it is 41 MB for SmolVLM2-256M) and one of its own positions.
pub(in crate::vision::smolvlm) struct ParkedRows {
    segments: Vec<Arc<Segment>>,
}

/// Positions `positions` of every cache tensor, each `[kv_heads, positions, head_dim]`, as bytes.
struct Segment {
    positions: Range<usize>,
    tensors: Vec<Vec<u8>>,
}

impl ParkedRows {
    /// The positions held.
    fn len(&self) -> usize {
        self.segments
            .last()
            .map_or(0, |segment| segment.positions.end)
    }
}

/// Positions `positions` of `row` of `buffer`.
fn park(buffer: &[u8], shape: &CacheShape, row: usize, positions: Range<usize>) -> Vec<u8> {
    let at = positions.start * shape.position_bytes();
    let block = positions.len() * shape.position_bytes();
    let mut parked = Vec::with_capacity(shape.kv_heads * block);
    for head in 0..shape.kv_heads {
        let start = shape.head_start(row, head) + at;
        parked.extend_from_slice(&buffer[start..start + block]);
    }
    parked
}

/// Puts `parked` back at positions `positions` of `row` of `buffer`.
fn unpark(
    buffer: &mut [u8],
    shape: &CacheShape,
    row: usize,
    parked: &[u8],
    positions: Range<usize>,
) {
    let at = positions.start * shape.position_bytes();
    let block = positions.len() * shape.position_bytes();
    for (head, values) in parked
        .chunks_exact(block.max(1))
        .enumerate()
        .take(shape.kv_heads)
    {
        let start = shape.head_start(row, head) + at;
        buffer[start..start + block].copy_from_slice(values);
    }
}

/// One set of cache buffers, bound to the graph as past and present.
struct KvBuffer {
    rows: usize,
    tensors: Vec<DynTensor>,
    binding: IoBinding,
}

impl KvBuffer {
    fn new(session: &Session, shape: &CacheShape, rows: usize) -> Result<KvBuffer, AnalyseError> {
        let allocator = Allocator::default();
        let mut binding = session.create_binding().map_err(ort_error)?;
        let mut tensors = Vec::with_capacity(2 * shape.layers);
        for layer in 0..shape.layers {
            for kind in ["key", "value"] {
                let mut tensor = DynTensor::new(
                    &allocator,
                    shape.element.tensor_type(),
                    [rows, shape.kv_heads, shape.capacity, shape.head_dim],
                )
                .map_err(ort_error)?;
                release_pages(shape.element.bytes_mut(&mut tensor)?);
                binding
                    .bind_input(format!("past_key_values.{layer}.{kind}"), &tensor)
                    .map_err(ort_error)?;
                binding
                    .bind_output(format!("present.{layer}.{kind}"), &mut tensor)
                    .map_err(ort_error)?;
                tensors.push(tensor);
            }
        }
        Ok(KvBuffer {
            rows,
            tensors,
            binding,
        })
    }
}

/// Gives the pages wholly inside `bytes` back to the system. They stay mapped and read as zeros, and
/// become resident again only when written: `ort` fills a new tensor with zeros, which would make the
/// whole of it resident at once, and memory freed to the heap stays resident until reused.
#[allow(unsafe_code)]
fn release_pages(bytes: &mut [u8]) {
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
    if page == 0 {
        return;
    }
    let start = bytes.as_mut_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + bytes.len()) / page * page;
    if end > first {
        // SAFETY: [first, end) lies inside `bytes`, which this call holds exclusively. The heap's
        // and the CPU allocator's memory is private and anonymous, where MADV_DONTNEED keeps the range
        // mapped and reading as zeros; a failure leaves the pages as they were.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
        }
    }
}

/// Lookout's decoder graph and its cache buffers.
pub(in crate::vision::smolvlm) struct FixedDecoder {
    session: Session,
    /// Where the logits of each run are allocated: the CPU.
    allocator: Allocator,
    shape: CacheShape,
    /// The most answers decoded together.
    batch: usize,
    /// The most positions the buffers may grow to; their capacity when the config fixed it.
    limit: usize,
    single: KvBuffer,
    several: Option<KvBuffer>,
}

/// Which answers a batch decodes: the buffer row of each, in order.
pub(in crate::vision::smolvlm) struct FixedBatch {
    several: bool,
    rows: Vec<usize>,
}

impl FixedDecoder {
    /// The decoder on `session` with buffers of `shape`: one row, and `batch` rows when `batch` > 1;
    /// they may grow up to `limit` positions.
    pub(in crate::vision::smolvlm) fn new(
        session: Session,
        shape: CacheShape,
        batch: usize,
        limit: usize,
    ) -> Result<FixedDecoder, AnalyseError> {
        let single = KvBuffer::new(&session, &shape, 1)?;
        Ok(FixedDecoder {
            session,
            allocator: Allocator::default(),
            shape,
            batch,
            limit: limit.max(shape.capacity),
            single,
            several: None,
        })
    }

    /// The most positions an answer may hold: the buffers' capacity, or what they may grow to.
    pub(in crate::vision::smolvlm) fn limit(&self) -> usize {
        self.limit
    }

    /// Makes room for `positions` in every row: the buffers grow (rounded up to 256 positions) when
    /// they are smaller and may grow; more than the limit is refused.
    fn make_room(&mut self, positions: usize) -> Result<(), AnalyseError> {
        if positions <= self.shape.capacity {
            return Ok(());
        }
        if positions > self.limit {
            return Err(AnalyseError::Input(format!(
                "the answer needs {positions} cache positions, more than the decoder's {} (vision.max_context)",
                self.limit
            )));
        }
        let shape = CacheShape {
            capacity: positions.next_multiple_of(256).min(self.limit),
            ..self.shape
        };
        tracing::info!(
            from = self.shape.capacity,
            to = shape.capacity,
            "The decoder's cache grows for a longer prompt."
        );
        // The old buffers go first: both sets at once could be more memory than the box has. The
        // batch buffer comes back when next needed.
        self.several = None;
        self.single = KvBuffer::new(&self.session, &shape, 1)?;
        self.shape = shape;
        Ok(())
    }

    /// Runs `embeds` (`count` positions of each of the buffer's rows) with `attention_mask` (each
    /// row's valid positions, `[rows, width]`), keeping the logits of the last `keep` positions.
    fn run(
        &mut self,
        several: bool,
        embeds: Vec<f32>,
        count: usize,
        attention_mask: Vec<i64>,
        keep: usize,
    ) -> Result<Vec<f32>, AnalyseError> {
        let buffer = match (several, self.several.as_mut()) {
            (true, Some(buffer)) => buffer,
            _ => &mut self.single,
        };
        let rows = buffer.rows;
        let hidden = embeds.len() / (rows * count).max(1);
        let width = attention_mask.len() / rows;
        let binding = &mut buffer.binding;
        let embeds = Tensor::from_array(([rows, count, hidden], embeds)).map_err(ort_error)?;
        binding
            .bind_input("inputs_embeds", &embeds)
            .map_err(ort_error)?;
        let mask = Tensor::from_array(([rows, width], attention_mask)).map_err(ort_error)?;
        binding
            .bind_input("attention_mask", &mask)
            .map_err(ort_error)?;
        let keep = Tensor::from_array(([0usize; 0], vec![keep as i64])).map_err(ort_error)?;
        binding
            .bind_input("num_logits_to_keep", &keep)
            .map_err(ort_error)?;
        // Bound afresh each run: a bound output keeps its first shape, and the logits kept vary.
        binding
            .bind_output_to_device("logits", self.allocator.memory_info())
            .map_err(ort_error)?;
        let outputs = self.session.run_binding(binding).map_err(ort_error)?;
        let (_, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(ort_error)?;
        Ok(logits.to_vec())
    }

    /// Runs `embeds` (`count` positions of one sequence) after `past` (`past_len` positions, or none)
    /// and returns the logits at each requested position and the sequence's cache, parked.
    pub(super) fn prefill(
        &mut self,
        embeds: Vec<f32>,
        count: usize,
        past_len: usize,
        past: Option<&ParkedRows>,
        all_positions: bool,
        vocab: usize,
    ) -> Result<(Vec<Vec<f32>>, ParkedRows), AnalyseError> {
        let total = past_len + count;
        self.make_room(total)?;
        if let Some(past) = past {
            debug_assert_eq!(past.len(), past_len, "the past holds the positions before");
            self.load(false, 0, past.segments.clone())?;
        }
        let keep = if all_positions { count } else { 1 };
        let logits = self.run(false, embeds, count, vec![1; total], keep)?;
        let logits = wanted_logits(&logits, vocab, 1, count, all_positions);
        let shape = self.shape;
        let own = past_len..total;
        // Each tensor's pages go back to the system once parked, so that the sequence is not held
        // twice in full.
        let tensors = self
            .single
            .tensors
            .iter_mut()
            .map(|tensor| {
                let bytes = shape.element.bytes_mut(tensor)?;
                let parked = park(bytes, &shape, 0, own.clone());
                release_pages(bytes);
                Ok(parked)
            })
            .collect::<Result<_, AnalyseError>>()?;
        let mut segments = past.map_or_else(Vec::new, |past| past.segments.clone());
        segments.push(Arc::new(Segment {
            positions: own,
            tensors,
        }));
        Ok((logits, ParkedRows { segments }))
    }

    /// Copies the segments of a parked sequence into `row` of the single or the batch buffer, tensor
    /// by tensor. What no other sequence shares is freed as soon as it is copied, so that a sequence
    /// is not held twice in full.
    fn load(
        &mut self,
        several: bool,
        row: usize,
        segments: Vec<Arc<Segment>>,
    ) -> Result<(), AnalyseError> {
        let shape = self.shape;
        let buffer = match (several, self.several.as_mut()) {
            (true, Some(buffer)) => buffer,
            _ => &mut self.single,
        };
        let mut segments: Vec<Result<Segment, Arc<Segment>>> =
            segments.into_iter().map(Arc::try_unwrap).collect();
        for (index, tensor) in buffer.tensors.iter_mut().enumerate() {
            let bytes = shape.element.bytes_mut(tensor)?;
            for segment in &mut segments {
                match segment {
                    Ok(own) => {
                        // Freed memory would stay resident in the allocator's heap until reused.
                        let mut values = std::mem::take(&mut own.tensors[index]);
                        unpark(bytes, &shape, row, &values, own.positions.clone());
                        release_pages(&mut values);
                    }
                    Err(shared) => {
                        unpark(
                            bytes,
                            &shape,
                            row,
                            &shared.tensors[index],
                            shared.positions.clone(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts decoding the sequences `caches` together, which will hold at most `positions`: alone
    /// in the single row, else each in its row of the batch buffer (which has room for as many as
    /// `generate` decodes at once).
    pub(super) fn start(
        &mut self,
        caches: Vec<ParkedRows>,
        positions: usize,
    ) -> Result<FixedBatch, AnalyseError> {
        self.make_room(positions)?;
        let several = caches.len() > 1;
        if several && self.several.is_none() {
            self.several = Some(KvBuffer::new(&self.session, &self.shape, self.batch)?);
        }
        let room = match &self.several {
            Some(buffer) if several => buffer.rows,
            _ => 1,
        };
        if caches.len() > room {
            return Err(AnalyseError::Model(format!(
                "{} answers to decode together, room for {room}",
                caches.len()
            )));
        }
        let rows = (0..caches.len()).collect();
        for (row, cache) in caches.into_iter().enumerate() {
            self.load(several, row, cache.segments)?;
        }
        Ok(FixedBatch { several, rows })
    }

    /// One decoding step of the batch's answers (`embeds`: one position each, holding `cached`
    /// positions each): their logits, in order.
    pub(super) fn step(
        &mut self,
        batch: &FixedBatch,
        embeds: Vec<f32>,
        cached: &[usize],
        vocab: usize,
    ) -> Result<Vec<Vec<f32>>, AnalyseError> {
        let width = cached.iter().copied().max().unwrap_or(0) + 1;
        // `start` made room for the whole answers; growing now would drop the rows being decoded.
        if width > self.shape.capacity {
            return Err(AnalyseError::Model(format!(
                "a decoding step needs {width} cache positions, past the {} made room for",
                self.shape.capacity
            )));
        }
        let rows = match (batch.several, &self.several) {
            (true, Some(buffer)) => buffer.rows,
            _ => 1,
        };
        let hidden = embeds.len() / batch.rows.len().max(1);
        let (all_embeds, mask) = step_inputs(&batch.rows, rows, &embeds, hidden, cached, width);
        let logits = self.run(batch.several, all_embeds, 1, mask, 1)?;
        Ok(batch
            .rows
            .iter()
            .map(|row| logits[row * vocab..(row + 1) * vocab].to_vec())
            .collect())
    }
}

impl FixedBatch {
    /// The answers at `leaving` (places in the batch's order) are complete: their rows go idle.
    pub(super) fn leave(&mut self, leaving: &[usize]) {
        let mut place = 0;
        self.rows.retain(|_| {
            let stays = !leaving.contains(&place);
            place += 1;
            stays
        });
    }
}

/// The embeddings and attention mask of one step over a buffer of `rows` rows, of which `active[i]`
/// holds answer `i` (`embeds` row `i`, `cached[i]` positions before the new one): an idle row gets a
/// zero embedding and one valid position, which it overwrites harmlessly.
fn step_inputs(
    active: &[usize],
    rows: usize,
    embeds: &[f32],
    hidden: usize,
    cached: &[usize],
    width: usize,
) -> (Vec<f32>, Vec<i64>) {
    let mut all_embeds = vec![0f32; rows * hidden];
    let mut mask = vec![0i64; rows * width];
    for row in 0..rows {
        mask[row * width] = 1;
    }
    for (index, row) in active.iter().enumerate() {
        all_embeds[row * hidden..(row + 1) * hidden]
            .copy_from_slice(&embeds[index * hidden..(index + 1) * hidden]);
        mask[row * width..row * width + cached[index] + 1].fill(1);
    }
    (all_embeds, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: CacheShape = CacheShape {
        layers: 1,
        kv_heads: 2,
        head_dim: 2,
        capacity: 3,
        element: CacheElement::F32,
    };

    #[test]
    fn parking_takes_each_heads_valid_positions_and_unparking_puts_them_back() {
        // Two rows of 2 heads x 3 positions x 2 values: 24 values numbered in order.
        let buffer: Vec<f32> = (0..24).map(|value| value as f32).collect();
        // Row 1, 2 valid positions: head 0 starts at 12, head 1 at 18.
        let parked = park(bytemuck::cast_slice(&buffer), &SHAPE, 1, 0..2);
        let values: &[f32] = bytemuck::cast_slice(&parked);
        assert_eq!(values, [12.0, 13.0, 14.0, 15.0, 18.0, 19.0, 20.0, 21.0]);
        let mut target = vec![-1f32; 24];
        unpark(
            bytemuck::cast_slice_mut(&mut target),
            &SHAPE,
            0,
            &parked,
            0..2,
        );
        assert_eq!(
            &target[..12],
            [
                12.0, 13.0, 14.0, 15.0, -1.0, -1.0, 18.0, 19.0, 20.0, 21.0, -1.0, -1.0
            ]
        );
        assert!(target[12..].iter().all(|value| *value == -1.0));
    }

    #[test]
    fn a_segment_after_a_prefix_is_parked_and_put_back_at_its_own_positions() {
        let buffer: Vec<f32> = (0..24).map(|value| value as f32).collect();
        // Row 0, position 2 alone: head 0's at 4, head 1's at 10.
        let parked = park(bytemuck::cast_slice(&buffer), &SHAPE, 0, 2..3);
        let values: &[f32] = bytemuck::cast_slice(&parked);
        assert_eq!(values, [4.0, 5.0, 10.0, 11.0]);
        let mut target = vec![-1f32; 24];
        unpark(
            bytemuck::cast_slice_mut(&mut target),
            &SHAPE,
            1,
            &parked,
            2..3,
        );
        let mut expected = vec![-1f32; 24];
        expected[16..18].copy_from_slice(&[4.0, 5.0]);
        expected[22..24].copy_from_slice(&[10.0, 11.0]);
        assert_eq!(target, expected);
    }

    #[test]
    fn released_pages_read_as_zeros_and_the_partial_pages_at_the_ends_are_kept() {
        let page = 4096;
        let mut buffer = vec![7u8; 5 * page];
        // From the middle of the first page to the middle of the fourth: pages 2 and 3 are inside.
        let span = &mut buffer[page / 2..3 * page + page / 2];
        release_pages(span);
        let start = span.as_ptr() as usize;
        let first = start.next_multiple_of(page) - start;
        let end = (start + span.len()) / page * page - start;
        assert!(end - first >= page, "at least one whole page inside");
        assert!(span[..first].iter().all(|&byte| byte == 7));
        assert!(span[first..end].iter().all(|&byte| byte == 0));
        assert!(span[end..].iter().all(|&byte| byte == 7));
        span.fill(3);
        assert!(buffer.iter().filter(|&&byte| byte == 3).count() == 3 * page);
    }

    #[test]
    fn half_precision_positions_are_half_the_bytes() {
        let half = CacheShape {
            element: CacheElement::F16,
            ..SHAPE
        };
        // Two rows of 2 heads x 3 positions x 2 values.
        let buffer: Vec<half::f16> = (0..24)
            .map(|value| half::f16::from_f32(value as f32))
            .collect();
        let parked = park(bytemuck::cast_slice(&buffer), &half, 1, 0..2);
        let values: &[half::f16] = bytemuck::cast_slice(&parked);
        let values: Vec<f32> = values.iter().map(|value| value.to_f32()).collect();
        assert_eq!(values, [12.0, 13.0, 14.0, 15.0, 18.0, 19.0, 20.0, 21.0]);
        assert_eq!(half.bytes_per_row(), SHAPE.bytes_per_row() / 2);
    }

    #[test]
    fn a_step_masks_each_answers_positions_and_idles_the_rest() {
        // Three rows; answers in rows 0 and 2 holding 2 and 0 positions; row 1 idle.
        let (embeds, mask) = step_inputs(&[0, 2], 3, &[1.0, 2.0, 3.0, 4.0], 2, &[2, 0], 3);
        assert_eq!(embeds, [1.0, 2.0, 0.0, 0.0, 3.0, 4.0]);
        assert_eq!(mask, [1, 1, 1, 1, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn answers_that_leave_free_their_rows_in_order() {
        let mut batch = FixedBatch {
            several: true,
            rows: vec![0, 1, 2, 3],
        };
        batch.leave(&[1, 3]);
        assert_eq!(batch.rows, [0, 2]);
    }
}
