//! The official export's decoder: its cache grows by one position a step, each step's `present.*`
//! moved into the next as `past.*` (the tensors stay where ONNX Runtime put them, with no copy through
//! our buffers). A shared prefix's cache is passed by reference to each question prefilled on top of
//! it.
//!
//! Text answers decoded together have their caches stacked left-padded and the padding masked, which
//! with fp32 weights gives exactly each answer alone; the int8 graphs quantize activations with one
//! scale per tensor, so there an answer can shift slightly with its batch. A row that leaves the batch
//! has the cache rebuilt without it.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::{CacheElement, wanted_logits};
use crate::vision::AnalyseError;
use crate::vision::smolvlm::ort_error;

/// What the decoder graph's key/value inputs look like, read from its metadata, with their names (built
/// once: they are passed on every generated token).
pub(in crate::vision::smolvlm) struct CacheLayout {
    pub(in crate::vision::smolvlm) past_names: Vec<String>,
    pub(in crate::vision::smolvlm) present_names: Vec<String>,
    pub(in crate::vision::smolvlm) kv_heads: i64,
    pub(in crate::vision::smolvlm) head_dim: i64,
    pub(in crate::vision::smolvlm) element: CacheElement,
    pub(in crate::vision::smolvlm) has_logits_to_keep: bool,
}

/// The official decoder graph and the layout of its cache.
pub(in crate::vision::smolvlm) struct GrowingDecoder {
    pub(in crate::vision::smolvlm) session: Session,
    pub(in crate::vision::smolvlm) layout: CacheLayout,
}

/// The positions of one decoder run: `count` new positions of each of `batch` sequences, with the
/// attention mask over all positions (past and new) and the new positions' ids, sequence after sequence.
#[derive(Debug, PartialEq)]
struct Rows {
    batch: usize,
    count: usize,
    attention_mask: Vec<i64>,
    position_ids: Vec<i64>,
}

impl Rows {
    /// `count` new positions of one sequence after `past_len` cached ones.
    fn prefill(count: usize, past_len: usize) -> Rows {
        let total = past_len + count;
        Rows {
            batch: 1,
            count,
            attention_mask: vec![1; total],
            position_ids: (past_len as i64..total as i64).collect(),
        }
    }

    /// One new position of each sequence, the sequences holding `cached` positions each: the caches are
    /// right-aligned to the longest, so a shorter one is masked where it is padded on the left.
    fn next_token(cached: &[usize]) -> Rows {
        let width = cached.iter().copied().max().unwrap_or(0) + 1;
        let attention_mask = cached
            .iter()
            .flat_map(|cached| {
                let padding = width - 1 - cached;
                std::iter::repeat_n(0, padding).chain(std::iter::repeat_n(1, width - padding))
            })
            .collect();
        Rows {
            batch: cached.len(),
            count: 1,
            attention_mask,
            position_ids: cached.iter().map(|cached| *cached as i64).collect(),
        }
    }
}

/// One row of a cache tensor ([rows, heads, width, head_dim]) to stack with others: the tensor's values
/// and width, which row, and how many of that row's last positions are real.
struct CacheRow<'a> {
    values: &'a [f32],
    width: usize,
    row: usize,
    real: usize,
}

/// The rows stacked into one tensor of `width` positions ([rows.len(), heads, width, head_dim]): each
/// row right-aligned and zero before it.
fn stack_rows(rows: &[CacheRow<'_>], heads: usize, head_dim: usize, width: usize) -> Vec<f32> {
    let mut stacked = vec![0f32; rows.len() * heads * width * head_dim];
    for (target_row, from) in rows.iter().enumerate() {
        for head in 0..heads {
            let source =
                ((from.row * heads + head) * from.width + from.width - from.real) * head_dim;
            let target = ((target_row * heads + head) * width + width - from.real) * head_dim;
            stacked[target..target + from.real * head_dim]
                .copy_from_slice(&from.values[source..source + from.real * head_dim]);
        }
    }
    stacked
}

impl GrowingDecoder {
    /// An empty cache, shaped from the decoder's metadata.
    fn empty_cache(&self) -> Result<Vec<DynValue>, AnalyseError> {
        (0..self.layout.past_names.len())
            .map(|_| {
                Tensor::from_array((
                    [
                        1,
                        self.layout.kv_heads as usize,
                        0,
                        self.layout.head_dim as usize,
                    ],
                    Vec::<f32>::new(),
                ))
                .map(|tensor| tensor.into_dyn())
                .map_err(ort_error)
            })
            .collect()
    }

    /// Runs `embeds` (`count` positions of one sequence) after `past` (`past_len` positions, or none)
    /// and returns the logits at each requested position and the new cache.
    pub(super) fn prefill(
        &mut self,
        embeds: Vec<f32>,
        count: usize,
        past_len: usize,
        past: Option<&[DynValue]>,
        all_positions: bool,
    ) -> Result<(Vec<Vec<f32>>, Vec<DynValue>), AnalyseError> {
        let rows = Rows::prefill(count, past_len);
        match past {
            Some(past) => self.run(embeds, rows, PastValues::Shared(past), all_positions),
            None => {
                let empty = self.empty_cache()?;
                self.run(embeds, rows, PastValues::Owned(empty), all_positions)
            }
        }
    }

    /// One decoding step of every sequence in `cache` (stacked right-aligned, holding `cached`
    /// positions each): their logits, and the new cache in place of the old.
    pub(super) fn step(
        &mut self,
        cache: &mut Vec<DynValue>,
        embeds: Vec<f32>,
        cached: &[usize],
    ) -> Result<Vec<Vec<f32>>, AnalyseError> {
        let past = std::mem::take(cache);
        let (logits, present) = self.run(
            embeds,
            Rows::next_token(cached),
            PastValues::Owned(past),
            false,
        )?;
        *cache = present;
        Ok(logits)
    }

    /// Runs the decoder on `embeds`, `rows.count` positions of each of `rows.batch` sequences, and
    /// returns, sequence after sequence, the logits at each requested position (`all_positions`, else
    /// only the last) and the new cache.
    fn run(
        &mut self,
        embeds: Vec<f32>,
        rows: Rows,
        past: PastValues<'_>,
        all_positions: bool,
    ) -> Result<(Vec<Vec<f32>>, Vec<DynValue>), AnalyseError> {
        let Rows {
            batch,
            count,
            attention_mask,
            position_ids,
        } = rows;
        let hidden = embeds.len() / (batch * count);
        let total = attention_mask.len() / batch;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            (
                "inputs_embeds".into(),
                Tensor::from_array(([batch, count, hidden], embeds))
                    .map_err(ort_error)?
                    .into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([batch, total], attention_mask))
                    .map_err(ort_error)?
                    .into(),
            ),
            (
                "position_ids".into(),
                Tensor::from_array(([batch, count], position_ids))
                    .map_err(ort_error)?
                    .into(),
            ),
        ];
        if self.layout.has_logits_to_keep {
            let keep = if all_positions { count as i64 } else { 1 };
            inputs.push((
                "num_logits_to_keep".into(),
                Tensor::from_array(([0usize; 0], vec![keep]))
                    .map_err(ort_error)?
                    .into(),
            ));
        }
        let values: Vec<SessionInputValue<'_>> = match past {
            PastValues::Owned(values) => values.into_iter().map(Into::into).collect(),
            PastValues::Shared(values) => values.iter().map(Into::into).collect(),
        };
        let names = self
            .layout
            .past_names
            .iter()
            .map(|name| Cow::Borrowed(name.as_str()));
        inputs.extend(names.zip(values));
        let mut outputs = self.session.run(inputs).map_err(ort_error)?;
        let (shape, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(ort_error)?;
        let vocab = *shape.last().unwrap_or(&0) as usize;
        let rows_wanted = wanted_logits(logits, vocab, batch, count, all_positions);
        let mut present = Vec::with_capacity(self.layout.present_names.len());
        for name in &self.layout.present_names {
            let value = outputs
                .remove(name)
                .ok_or_else(|| AnalyseError::Model(format!("no {name} output")))?;
            present.push(value);
        }
        Ok((rows_wanted, present))
    }

    /// One cache of `parts.len()` rows from rows of others: each part names a cache, a row of it, and
    /// how many of that row's last positions are real. Each row is right-aligned to the longest and
    /// zero before it (the attention mask hides those positions).
    pub(super) fn stack_caches(
        &self,
        parts: &[(&[DynValue], usize, usize)],
    ) -> Result<Vec<DynValue>, AnalyseError> {
        let heads = self.layout.kv_heads as usize;
        let head_dim = self.layout.head_dim as usize;
        let width = parts.iter().map(|(_, _, real)| *real).max().unwrap_or(0);
        (0..self.layout.past_names.len())
            .map(|tensor| {
                let rows = parts
                    .iter()
                    .map(|(cache, row, real)| {
                        let (shape, values) = cache[tensor]
                            .try_extract_tensor::<f32>()
                            .map_err(ort_error)?;
                        Ok(CacheRow {
                            values,
                            width: shape[2] as usize,
                            row: *row,
                            real: *real,
                        })
                    })
                    .collect::<Result<Vec<_>, AnalyseError>>()?;
                let stacked = stack_rows(&rows, heads, head_dim, width);
                Tensor::from_array(([parts.len(), heads, width, head_dim], stacked))
                    .map(|tensor| tensor.into_dyn())
                    .map_err(ort_error)
            })
            .collect()
    }
}

/// The past of a run: moved in from the previous step, or borrowed from a shared prefix.
enum PastValues<'a> {
    Owned(Vec<DynValue>),
    Shared(&'a [DynValue]),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefill_continues_the_positions_after_its_past() {
        assert_eq!(
            Rows::prefill(3, 2),
            Rows {
                batch: 1,
                count: 3,
                attention_mask: vec![1; 5],
                position_ids: vec![2, 3, 4],
            }
        );
    }

    #[test]
    fn a_step_masks_the_left_padding_of_shorter_caches() {
        // Caches of 3 and 1 positions, right-aligned to 3, plus the new position.
        assert_eq!(
            Rows::next_token(&[3, 1]),
            Rows {
                batch: 2,
                count: 1,
                attention_mask: vec![1, 1, 1, 1, 0, 0, 1, 1],
                position_ids: vec![3, 1],
            }
        );
    }

    #[test]
    fn stacked_caches_are_right_aligned_and_zero_before() {
        // One head of size 2: three real positions, and the last of two.
        let long = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let short = [7.0, 8.0, 9.0, 10.0];
        let rows = [
            CacheRow {
                values: &long,
                width: 3,
                row: 0,
                real: 3,
            },
            CacheRow {
                values: &short,
                width: 2,
                row: 0,
                real: 1,
            },
        ];
        assert_eq!(
            stack_rows(&rows, 1, 2, 3),
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 0.0, 9.0, 10.0]
        );
    }

    #[test]
    fn a_stacked_row_is_taken_from_its_row_of_a_batch_head_by_head() {
        // A cache of 2 rows, 2 heads, 2 positions of size 1; its second row, padded to 3 positions.
        let batch = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let rows = [CacheRow {
            values: &batch,
            width: 2,
            row: 1,
            real: 2,
        }];
        assert_eq!(stack_rows(&rows, 2, 1, 3), [0.0, 5.0, 6.0, 0.0, 7.0, 8.0]);
    }
}
