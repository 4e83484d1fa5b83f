//! The decoder: prompts prefilled (a shared prefix once, each question's own words on top of its cache),
//! then text answers generated greedily, several together.
//!
//! The cache a step returns (`present.*`) is moved into the next step as `past.*`: the tensors stay
//! where ONNX Runtime put them, with no copy through our buffers. A shared prefix's cache is passed by
//! reference to each question prefilled on top of it.
//!
//! Text answers are decoded together, those of one frame and those of other jobs answered in the same
//! call (`answer_jobs`), up to `batch` at a time. A decoding step is bound by reading the weights and by
//! ONNX Runtime's per-node overhead, not by arithmetic: a step for 4 sequences took 1.5x (int8) and 1.2x
//! (fp32) one for a single sequence. The caches are stacked left-padded and the padding masked, which
//! with fp32 weights gives exactly each answer alone; the int8 graphs quantize activations with one
//! scale per tensor, so there an answer can shift slightly with its batch.

use std::borrow::Cow;
use std::time::Instant;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::score::{argmax, log_sum_exp, text_confidence};
use super::{SmolVlm, millis, ort_error};
use crate::message::StageTimings;
use crate::vision::{AnalyseError, LocalAnswer};

/// What the decoder graph's key/value inputs look like, read from its metadata, with their names (built
/// once: they are passed on every generated token).
pub(super) struct CacheLayout {
    pub(super) past_names: Vec<String>,
    pub(super) present_names: Vec<String>,
    pub(super) kv_heads: i64,
    pub(super) head_dim: i64,
    pub(super) has_logits_to_keep: bool,
}

/// The decoder graph and the layout of its cache.
pub(super) struct Decoder {
    pub(super) session: Session,
    pub(super) layout: CacheLayout,
}

/// The decoder's past: moved in from the previous step, or borrowed from a shared prefix.
pub(super) enum Past<'a> {
    Owned(Vec<DynValue>),
    Shared(&'a [DynValue]),
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

/// A prompt run through the decoder: the logits after it and its cache.
pub(super) struct Prefilled {
    pub(super) logits: Vec<f32>,
    pub(super) cache: Vec<DynValue>,
    pub(super) prompt_len: usize,
    pub(super) max_new: u32,
    pub(super) timings: StageTimings,
}

/// A text answer being decoded: one row of the batch.
struct Decoding {
    /// Its place among the answers decoded together.
    place: usize,
    /// The logits for its next token.
    logits: Vec<f32>,
    /// Positions in its cache (prompt and tokens fed back).
    cached: usize,
    max_new: u32,
    tokens: Vec<u32>,
    /// The log-probability of each chosen token but a stop token.
    log_probs: Vec<f32>,
    timings: StageTimings,
}

impl Decoding {
    /// The row of a prefilled prompt at `place` in the batch, and the prompt's cache.
    fn start(place: usize, prefilled: Prefilled) -> (Decoding, Vec<DynValue>) {
        let row = Decoding {
            place,
            logits: prefilled.logits,
            cached: prefilled.prompt_len,
            max_new: prefilled.max_new,
            tokens: Vec::new(),
            log_probs: Vec::new(),
            timings: prefilled.timings,
        };
        (row, prefilled.cache)
    }

    /// Chooses the row's next token, the most likely (greedy), and says whether its answer is complete:
    /// a stop token was chosen (it is kept in `tokens` but has no log-probability), `max_new` tokens
    /// were, or none may be.
    fn advance(&mut self, stop_ids: &[u32]) -> bool {
        if self.max_new == 0 {
            return true;
        }
        let (next, logit) = argmax(&self.logits);
        self.tokens.push(next as u32);
        if stop_ids.contains(&(next as u32)) {
            return true;
        }
        self.log_probs.push(logit - log_sum_exp(&self.logits));
        self.tokens.len() as u32 >= self.max_new
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

/// The rows of a batch of `rows` that stay when those at the indices `leaving` leave, in order.
fn staying(rows: usize, leaving: &[usize]) -> Vec<usize> {
    (0..rows).filter(|index| !leaving.contains(index)).collect()
}

/// From the decoder's logits ([batch, positions, vocab]: all `count` new positions, or only the last if
/// the graph kept one), each sequence's rows wanted: every new position's (`all_positions`) or the
/// last's, sequence after sequence.
fn wanted_logits(
    logits: &[f32],
    vocab: usize,
    batch: usize,
    count: usize,
    all_positions: bool,
) -> Vec<Vec<f32>> {
    let positions = logits.len() / (vocab.max(1) * batch);
    let wanted = if all_positions {
        positions.min(count)
    } else {
        1
    };
    logits
        .chunks_exact(positions * vocab)
        .flat_map(|sequence| sequence[(positions - wanted) * vocab..].chunks_exact(vocab))
        .map(<[f32]>::to_vec)
        .collect()
}

/// The length of the id prefix all prompts share, covering every image token, else 0. A single prompt is
/// its own prefix, prefilled in one run; of several, each keeps at least its last position out of it, to
/// run on top of the shared cache and produce its own logits.
pub(super) fn shared_prefix(prompts: &[&Vec<u32>], image_token: u32) -> usize {
    let Some(first) = prompts.first() else {
        return 0;
    };
    if prompts.len() == 1 {
        return first.len();
    }
    let mut length = prompts.iter().map(|ids| ids.len() - 1).min().unwrap_or(0);
    for ids in &prompts[1..] {
        length = length.min(
            first
                .iter()
                .zip(ids.iter())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let last_image = first
        .iter()
        .rposition(|id| *id == image_token)
        .map_or(0, |at| at + 1);
    if length >= last_image { length } else { 0 }
}

impl Decoder {
    /// An empty cache, shaped from the decoder's metadata.
    pub(super) fn empty_cache(&self) -> Result<Vec<DynValue>, AnalyseError> {
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

    /// Runs the decoder on `embeds` (`count` positions of one sequence after `past_len` cached ones) and
    /// returns the logits at each requested position (`all_positions`, else only the last) and the new
    /// cache.
    pub(super) fn prefill(
        &mut self,
        embeds: Vec<f32>,
        count: usize,
        past_len: usize,
        past: Past<'_>,
        all_positions: bool,
    ) -> Result<(Vec<Vec<f32>>, Vec<DynValue>), AnalyseError> {
        self.run(embeds, Rows::prefill(count, past_len), past, all_positions)
    }

    /// Runs the decoder on `embeds`, `rows.count` positions of each of `rows.batch` sequences, and
    /// returns, sequence after sequence, the logits at each requested position (`all_positions`, else
    /// only the last) and the new cache.
    fn run(
        &mut self,
        embeds: Vec<f32>,
        rows: Rows,
        past: Past<'_>,
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
            Past::Owned(values) => values.into_iter().map(Into::into).collect(),
            Past::Shared(values) => values.iter().map(Into::into).collect(),
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
    fn stack_caches(
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

impl SmolVlm {
    /// Greedy decoding of several prefilled prompts at once: each step runs the decoder once for all of
    /// them. Their caches are stacked into one, each right-aligned to the longest and masked where it
    /// is padded, so that every row sees exactly its own prompt. A row whose answer is complete leaves
    /// the batch, and the cache is rebuilt without it.
    pub(super) fn generate(
        &mut self,
        prefilled: Vec<Prefilled>,
    ) -> Vec<Result<LocalAnswer, AnalyseError>> {
        let started = Instant::now();
        let (mut rows, mut caches): (Vec<Decoding>, Vec<Vec<DynValue>>) = prefilled
            .into_iter()
            .enumerate()
            .map(|(place, prefilled)| Decoding::start(place, prefilled))
            .unzip();
        let mut answers: Vec<Option<Result<LocalAnswer, AnalyseError>>> =
            rows.iter().map(|_| None).collect();
        let mut cache = if caches.len() == 1 {
            caches.pop().unwrap_or_default()
        } else {
            let parts: Vec<(&[DynValue], usize, usize)> = caches
                .iter()
                .zip(&rows)
                .map(|(cache, row)| (cache.as_slice(), 0, row.cached))
                .collect();
            match self.decoder.stack_caches(&parts) {
                Ok(stacked) => stacked,
                Err(error) => return rows.iter().map(|_| Err(error.clone())).collect(),
            }
        };
        drop(caches);
        let failure = loop {
            // Choose each row's next token; the rows that are complete leave.
            let mut leaving = Vec::new();
            for (index, row) in rows.iter_mut().enumerate() {
                if row.advance(&self.prompter.stop_ids) {
                    leaving.push(index);
                }
            }
            if !leaving.is_empty() {
                for index in leaving.iter().rev() {
                    let mut row = rows.remove(*index);
                    row.timings.decode = millis(started);
                    let place = row.place;
                    answers[place] = Some(Ok(self.text_answer(row)));
                }
                if rows.is_empty() {
                    break None;
                }
                let parts: Vec<(&[DynValue], usize, usize)> =
                    staying(rows.len() + leaving.len(), &leaving)
                        .into_iter()
                        .zip(&rows)
                        .map(|(index, row)| (cache.as_slice(), index, row.cached))
                        .collect();
                match self.decoder.stack_caches(&parts) {
                    Ok(stacked) => cache = stacked,
                    Err(error) => break Some(error),
                }
            }
            match self.step(&mut rows, cache) {
                Ok(present) => cache = present,
                Err(error) => break Some(error),
            }
        };
        if let Some(error) = failure {
            for row in &rows {
                answers[row.place] = Some(Err(error.clone()));
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| Err(AnalyseError::Model("not decoded".to_owned())))
            })
            .collect()
    }

    /// One decoding step of every row: its last token in, its next logits out. `cache` holds the rows'
    /// caches right-aligned; the new cache is returned.
    fn step(
        &mut self,
        rows: &mut [Decoding],
        cache: Vec<DynValue>,
    ) -> Result<Vec<DynValue>, AnalyseError> {
        let last: Vec<u32> = rows
            .iter()
            .map(|row| row.tokens.last().copied().unwrap_or_default())
            .collect();
        // One embedding row per sequence: [1, rows] and [rows, 1] ids give the same values.
        let embeds = self.embedder.embed(&last)?;
        let cached: Vec<usize> = rows.iter().map(|row| row.cached).collect();
        let (logits, present) =
            self.decoder
                .run(embeds, Rows::next_token(&cached), Past::Owned(cache), false)?;
        for (row, logits) in rows.iter_mut().zip(logits) {
            row.logits = logits;
            row.cached += 1;
        }
        Ok(present)
    }

    /// A complete text answer: its text, without stop tokens, and its confidence (`text_confidence`).
    fn text_answer(&self, row: Decoding) -> LocalAnswer {
        let (confidence, min_probability) = text_confidence(&row.log_probs);
        let text_tokens: Vec<u32> = row
            .tokens
            .iter()
            .copied()
            .filter(|id| !self.prompter.stop_ids.contains(id))
            .collect();
        LocalAnswer {
            text: self.prompter.decode(&text_tokens).trim().to_owned(),
            confidence,
            min_probability,
            tokens: row.tokens,
            timings: row.timings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(logits: Vec<f32>, max_new: u32) -> Decoding {
        Decoding {
            place: 0,
            logits,
            cached: 5,
            max_new,
            tokens: Vec::new(),
            log_probs: Vec::new(),
            timings: StageTimings::default(),
        }
    }

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
    fn a_row_stops_at_a_stop_token_without_its_probability() {
        let mut decoding = row(vec![0.0, 0.0, 5.0], 10);
        assert!(decoding.advance(&[2]));
        assert_eq!(decoding.tokens, [2]);
        assert!(decoding.log_probs.is_empty());
    }

    #[test]
    fn a_row_stops_after_max_new_tokens() {
        let mut decoding = row(vec![0.0, 3f32.ln()], 2);
        assert!(!decoding.advance(&[0]));
        assert!(decoding.advance(&[0]));
        assert_eq!(decoding.tokens, [1, 1]);
        assert_eq!(decoding.log_probs.len(), 2);
        assert!((decoding.log_probs[0] - 0.75f32.ln()).abs() < 1e-6);
        // No token at all may be chosen.
        let mut decoding = row(vec![0.0, 1.0], 0);
        assert!(decoding.advance(&[]));
        assert!(decoding.tokens.is_empty());
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

    #[test]
    fn rows_that_leave_are_dropped_in_order() {
        assert_eq!(staying(4, &[1, 3]), [0, 2]);
        assert_eq!(staying(3, &[]), [0, 1, 2]);
    }

    #[test]
    fn the_last_position_of_each_sequence_or_all_are_kept() {
        // Two sequences of two positions over a vocabulary of 3.
        let logits: Vec<f32> = (1..=12).map(|value| value as f32).collect();
        assert_eq!(
            wanted_logits(&logits, 3, 2, 2, false),
            [vec![4.0, 5.0, 6.0], vec![10.0, 11.0, 12.0]]
        );
        assert_eq!(
            wanted_logits(&logits, 3, 2, 2, true),
            [
                vec![1.0, 2.0, 3.0],
                vec![4.0, 5.0, 6.0],
                vec![7.0, 8.0, 9.0],
                vec![10.0, 11.0, 12.0]
            ]
        );
        // A graph that kept only the last of 3 new positions.
        assert_eq!(
            wanted_logits(&logits[..3], 3, 1, 3, false),
            [vec![1.0, 2.0, 3.0]]
        );
    }

    #[test]
    fn a_single_prompt_is_its_own_prefix() {
        assert_eq!(shared_prefix(&[&vec![1, 9, 2]], 9), 3);
        assert_eq!(shared_prefix(&[], 9), 0);
    }

    #[test]
    fn prompts_share_their_common_ids_past_the_last_image_token() {
        let first = vec![5, 9, 9, 7, 8];
        let second = vec![5, 9, 9, 7, 6, 6];
        assert_eq!(shared_prefix(&[&first, &second], 9), 4);
        // Equal prompts each keep their last position out, to produce their own logits.
        let same = vec![5, 9, 7];
        assert_eq!(shared_prefix(&[&same, &same], 9), 2);
        // Without image tokens, the common ids are shared.
        assert_eq!(shared_prefix(&[&vec![1, 2, 3], &vec![1, 2, 4]], 9), 2);
    }

    #[test]
    fn prompts_that_part_before_the_last_image_token_share_nothing() {
        let first = vec![5, 9, 1, 9, 7];
        let second = vec![5, 9, 2, 9, 7];
        assert_eq!(shared_prefix(&[&first, &second], 9), 0);
    }
}
