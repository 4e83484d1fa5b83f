//! The decoder: prompts prefilled (a shared prefix once, each question's own words on top of its cache),
//! then text answers generated greedily, several together.
//!
//! Two kinds of decoder graph, one loop: the official export's (`growing`: its cache grows by a
//! position each step, passed from step to step as ONNX Runtime's own tensors) and Lookout's own
//! (`fixed`: one buffer per layer of a fixed capacity, written in place). The loop here chooses the
//! tokens; each kind keeps its cache its own way behind `Decoder`, `Cache` and `Batch`.
//!
//! Text answers are decoded together, those of one frame and those of other jobs answered in the same
//! call (`answer_jobs`), up to `batch` at a time. A decoding step is bound by reading the weights, not
//! by arithmetic, so one run for several answers costs little more than for one.

mod fixed;
mod growing;

use std::time::Instant;

use ort::value::DynValue;

use super::score::{argmax, text_confidence};
use super::{SmolVlm, millis};
use crate::message::StageTimings;
use crate::vision::operators::log_sum_exp;
use crate::vision::{AnalyseError, LocalAnswer};
pub(super) use fixed::{CacheElement, CacheShape, FixedDecoder};
pub(super) use growing::{CacheLayout, GrowingDecoder};

/// The decoder graph, of either kind.
pub(super) enum Decoder {
    Growing(GrowingDecoder),
    Fixed(Box<FixedDecoder>),
}

/// A prefilled sequence's cache, as its decoder keeps it.
pub(super) enum Cache {
    Growing(Vec<DynValue>),
    Fixed(fixed::ParkedRows),
}

/// The answers being decoded together, as their decoder holds their caches.
enum Batch {
    Growing(Vec<DynValue>),
    Fixed(fixed::FixedBatch),
}

/// What a prefill runs on top of: nothing, or a cache (a shared prefix's).
pub(super) enum Past<'a> {
    Empty,
    Cache(&'a Cache),
}

/// A prompt run through the decoder: the logits after it and its cache.
pub(super) struct Prefilled {
    pub(super) logits: Vec<f32>,
    pub(super) cache: Cache,
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
    /// The prompt's positions.
    prompt_len: usize,
    /// Positions in its cache (prompt and tokens fed back).
    cached: usize,
    max_new: u32,
    tokens: Vec<u32>,
    /// The log-probability of each chosen token but a stop token.
    log_probs: Vec<f32>,
    timings: StageTimings,
}

impl Decoding {
    /// The row of a prefilled prompt at `place` in the batch, and the prompt's cache. With a cache of
    /// `capacity` positions, the answer stops where the cache is full (the last token chosen needs no
    /// position of its own).
    fn start(place: usize, prefilled: Prefilled, capacity: Option<usize>) -> (Decoding, Cache) {
        let room = capacity.map_or(u32::MAX, |capacity| {
            (capacity + 1).saturating_sub(prefilled.prompt_len) as u32
        });
        let row = Decoding {
            place,
            logits: prefilled.logits,
            prompt_len: prefilled.prompt_len,
            cached: prefilled.prompt_len,
            max_new: prefilled.max_new.min(room),
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

fn wrong_cache() -> AnalyseError {
    AnalyseError::Model("a cache of the other decoder kind".to_owned())
}

impl Decoder {
    /// The most positions a sequence may hold: Lookout's decoder has a limit.
    pub(super) fn capacity(&self) -> Option<usize> {
        match self {
            Decoder::Growing(_) => None,
            Decoder::Fixed(decoder) => Some(decoder.limit()),
        }
    }

    /// Runs the decoder on `embeds` (`count` positions of one sequence after `past_len` cached ones in
    /// `past`) and returns the logits at each requested position (`all_positions`, else only the last)
    /// and the sequence's cache.
    pub(super) fn prefill(
        &mut self,
        embeds: Vec<f32>,
        count: usize,
        past_len: usize,
        past: Past<'_>,
        all_positions: bool,
        vocab: usize,
    ) -> Result<(Vec<Vec<f32>>, Cache), AnalyseError> {
        match self {
            Decoder::Growing(decoder) => {
                let past = match past {
                    Past::Empty => None,
                    Past::Cache(Cache::Growing(values)) => Some(values.as_slice()),
                    Past::Cache(Cache::Fixed(_)) => return Err(wrong_cache()),
                };
                let (logits, cache) =
                    decoder.prefill(embeds, count, past_len, past, all_positions)?;
                Ok((logits, Cache::Growing(cache)))
            }
            Decoder::Fixed(decoder) => {
                let past = match past {
                    Past::Empty => None,
                    Past::Cache(Cache::Fixed(rows)) => Some(rows),
                    Past::Cache(Cache::Growing(_)) => return Err(wrong_cache()),
                };
                let (logits, cache) =
                    decoder.prefill(embeds, count, past_len, past, all_positions, vocab)?;
                Ok((logits, Cache::Fixed(cache)))
            }
        }
    }

    /// Starts decoding the answers whose caches are `caches` (holding `cached` positions each, and
    /// `positions` at most by the end).
    fn start(
        &mut self,
        caches: Vec<Cache>,
        cached: &[usize],
        positions: usize,
    ) -> Result<Batch, AnalyseError> {
        match self {
            Decoder::Growing(decoder) => {
                let mut values = caches
                    .into_iter()
                    .map(|cache| match cache {
                        Cache::Growing(values) => Ok(values),
                        Cache::Fixed(_) => Err(wrong_cache()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if values.len() == 1 {
                    return Ok(Batch::Growing(values.pop().unwrap_or_default()));
                }
                let parts: Vec<(&[DynValue], usize, usize)> = values
                    .iter()
                    .zip(cached)
                    .map(|(cache, cached)| (cache.as_slice(), 0, *cached))
                    .collect();
                Ok(Batch::Growing(decoder.stack_caches(&parts)?))
            }
            Decoder::Fixed(decoder) => {
                let rows = caches
                    .into_iter()
                    .map(|cache| match cache {
                        Cache::Fixed(rows) => Ok(rows),
                        Cache::Growing(_) => Err(wrong_cache()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Batch::Fixed(decoder.start(rows, positions)?))
            }
        }
    }

    /// One step of the batch's answers: `embeds` one position each, `cached` positions before it.
    fn step(
        &mut self,
        batch: &mut Batch,
        embeds: Vec<f32>,
        cached: &[usize],
        vocab: usize,
    ) -> Result<Vec<Vec<f32>>, AnalyseError> {
        match (self, batch) {
            (Decoder::Growing(decoder), Batch::Growing(cache)) => {
                decoder.step(cache, embeds, cached)
            }
            (Decoder::Fixed(decoder), Batch::Fixed(batch)) => {
                decoder.step(batch, embeds, cached, vocab)
            }
            _ => Err(wrong_cache()),
        }
    }

    /// The answers at `leaving` (of `before` in the batch) are complete; those staying hold `cached`
    /// positions each.
    fn leave(
        &mut self,
        batch: &mut Batch,
        before: usize,
        leaving: &[usize],
        cached: &[usize],
    ) -> Result<(), AnalyseError> {
        match (self, batch) {
            (Decoder::Growing(decoder), Batch::Growing(cache)) => {
                let parts: Vec<(&[DynValue], usize, usize)> = staying(before, leaving)
                    .into_iter()
                    .zip(cached)
                    .map(|(index, cached)| (cache.as_slice(), index, *cached))
                    .collect();
                *cache = decoder.stack_caches(&parts)?;
                Ok(())
            }
            (Decoder::Fixed(_), Batch::Fixed(batch)) => {
                batch.leave(leaving);
                Ok(())
            }
            _ => Err(wrong_cache()),
        }
    }
}

impl SmolVlm {
    /// Greedy decoding of several prefilled prompts at once: each step runs the decoder once for all of
    /// them, every row seeing exactly its own prompt. A row whose answer is complete leaves the batch.
    pub(super) fn generate(
        &mut self,
        prefilled: Vec<Prefilled>,
    ) -> Vec<Result<LocalAnswer, AnalyseError>> {
        let started = Instant::now();
        let capacity = self.decoder.capacity();
        let (mut rows, caches): (Vec<Decoding>, Vec<Cache>) = prefilled
            .into_iter()
            .enumerate()
            .map(|(place, prefilled)| Decoding::start(place, prefilled, capacity))
            .unzip();
        let mut answers: Vec<Option<Result<LocalAnswer, AnalyseError>>> =
            rows.iter().map(|_| None).collect();
        let cached: Vec<usize> = rows.iter().map(|row| row.cached).collect();
        // The last token chosen is never fed back: it needs no position.
        let positions = rows
            .iter()
            .map(|row| row.cached + (row.max_new as usize).saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut batch = match self.decoder.start(caches, &cached, positions) {
            Ok(batch) => batch,
            Err(error) => return rows.iter().map(|_| Err(error.clone())).collect(),
        };
        let vocab = self.spec.vocab_size;
        let failure = loop {
            // Choose each row's next token; the rows that are complete leave.
            let mut leaving = Vec::new();
            for (index, row) in rows.iter_mut().enumerate() {
                if row.advance(&self.prompter.stop_ids) {
                    leaving.push(index);
                }
            }
            if !leaving.is_empty() {
                let before = rows.len();
                for index in leaving.iter().rev() {
                    let mut row = rows.remove(*index);
                    row.timings.decode = millis(started);
                    let place = row.place;
                    answers[place] = Some(Ok(self.text_answer(row)));
                }
                if rows.is_empty() {
                    break None;
                }
                let cached: Vec<usize> = rows.iter().map(|row| row.cached).collect();
                if let Err(error) = self.decoder.leave(&mut batch, before, &leaving, &cached) {
                    break Some(error);
                }
            }
            if let Err(error) = self.step(&mut rows, &mut batch, vocab) {
                break Some(error);
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

    /// One decoding step of every row: its last token in, its next logits out.
    fn step(
        &mut self,
        rows: &mut [Decoding],
        batch: &mut Batch,
        vocab: usize,
    ) -> Result<(), AnalyseError> {
        let last: Vec<u32> = rows
            .iter()
            .map(|row| row.tokens.last().copied().unwrap_or_default())
            .collect();
        // One embedding row per sequence: [1, rows] and [rows, 1] ids give the same values.
        let embeds = self.embedder.embed(&last)?;
        let cached: Vec<usize> = rows.iter().map(|row| row.cached).collect();
        let logits = self.decoder.step(batch, embeds, &cached, vocab)?;
        for (row, logits) in rows.iter_mut().zip(logits) {
            row.logits = logits;
            row.cached += 1;
        }
        Ok(())
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
            prompt_tokens: row.prompt_len,
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
            prompt_len: 5,
            cached: 5,
            max_new,
            tokens: Vec::new(),
            log_probs: Vec::new(),
            timings: StageTimings::default(),
        }
    }

    #[test]
    fn an_answer_stops_where_a_fixed_cache_is_full() {
        let prefilled = |max_new| Prefilled {
            logits: Vec::new(),
            cache: Cache::Growing(Vec::new()),
            prompt_len: 10,
            max_new,
            timings: StageTimings::default(),
        };
        // 12 positions: the prompt's 10, two tokens fed back, and a third chosen after them.
        assert_eq!(Decoding::start(0, prefilled(64), Some(12)).0.max_new, 3);
        assert_eq!(Decoding::start(0, prefilled(2), Some(12)).0.max_new, 2);
        assert_eq!(Decoding::start(0, prefilled(64), None).0.max_new, 64);
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
