//! From logits to answers: which token comes next, how sure the model is, and which option it chooses.
//!
//! - `text`: greedy decoding until a stop token or `max_new_tokens`; confidence is the geometric mean of
//!   the chosen tokens' probabilities (the stop token excluded), and the lowest of them is reported too.
//! - `yes_no` and `one_of`: no free text is generated. Each option (" Yes" / " No", or " " + label) is
//!   scored as the sum of its tokens' log-probabilities right after the prompt; the best option is the
//!   answer and its confidence is its share of the softmax over the options' scores.

use super::SmolVlm;
use super::decode::{Cache, Past};
use crate::message::AnswerKind;
use crate::message::StageTimings;
use crate::vision::operators::log_sum_exp;
use crate::vision::{AnalyseError, LocalAnswer};

/// The index and value of the largest value, the first of equals.
pub(super) fn argmax(values: &[f32]) -> (usize, f32) {
    values
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (index, value)| {
            if value > best.1 { (index, value) } else { best }
        })
}

/// A text answer's confidence, the geometric mean of its chosen tokens' probabilities (0 if none), and
/// the lowest of them.
pub(super) fn text_confidence(log_probs: &[f32]) -> (f64, Option<f64>) {
    let confidence = if log_probs.is_empty() {
        0.0
    } else {
        (log_probs.iter().map(|lp| f64::from(*lp)).sum::<f64>() / log_probs.len() as f64).exp()
    };
    let min_probability = log_probs
        .iter()
        .map(|lp| f64::from(*lp).exp())
        .fold(None, |min: Option<f64>, p| {
            Some(min.map_or(p, |m| m.min(p)))
        });
    (confidence, min_probability)
}

/// The options a choice is made among, each as the label answered and the text it is scored as; `None`
/// for a text answer, which is generated instead.
pub(super) fn options(kind: &AnswerKind) -> Option<Vec<(&str, String)>> {
    match kind {
        AnswerKind::Text => None,
        AnswerKind::YesNo => Some(vec![("yes", " Yes".to_owned()), ("no", " No".to_owned())]),
        AnswerKind::OneOf(labels) => Some(
            labels
                .iter()
                .map(|label| (label.as_str(), format!(" {label}")))
                .collect(),
        ),
    }
}

/// The log-probability of `token` given the logits `row` (minus infinity for a token past the row).
fn log_prob(row: &[f32], token: u32) -> f64 {
    f64::from(
        row.get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY)
            - log_sum_exp(row),
    )
}

/// The score of an option's tokens `continuation`: the sum of their log-probabilities, the first given
/// `last` (the logits after the prompt), each later one given the row of `forced` (the logits of the
/// option teacher-forced after the prompt) before it, `forced` ending at the option's last but one.
fn option_score(last: &[f32], forced: &[Vec<f32>], continuation: &[u32]) -> f64 {
    let mut score = log_prob(last, continuation[0]);
    if continuation.len() > 1 {
        let offset = forced.len() - (continuation.len() - 1);
        for (k, token) in continuation[1..].iter().enumerate() {
            score += log_prob(&forced[offset + k], *token);
        }
    }
    score
}

/// The best of the options' scores (the last of equals) and its confidence, its share of the softmax
/// over all of them.
fn best_option(scores: &[f64]) -> (usize, f64) {
    let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = scores.iter().map(|score| (score - best).exp()).sum();
    let (index, score) = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(index, score)| (index, *score))
        .unwrap_or((0, 0.0));
    (index, (score - best).exp() / total)
}

impl SmolVlm {
    /// Scores each option's continuation after the prompt and picks the most likely.
    /// `prefix` caches the first `shared` ids of `ids`; `last` holds the logits after all of `ids`.
    pub(super) fn choose(
        &mut self,
        last: &[f32],
        prefix: &Cache,
        shared: usize,
        ids: &[u32],
        options: &[(&str, String)],
    ) -> Result<LocalAnswer, AnalyseError> {
        let mut scores = Vec::with_capacity(options.len());
        let mut option_ids = Vec::with_capacity(options.len());
        for (_, text) in options {
            let continuation = self
                .prompter
                .encode(text)
                .map_err(|error| AnalyseError::Input(error.to_string()))?;
            let mut forced = Vec::new();
            if continuation.len() > 1 {
                // Teacher-force the option after the full prompt: prompt rest + option tokens but the last.
                let full: Vec<u32> = ids
                    .iter()
                    .chain(&continuation[..continuation.len() - 1])
                    .copied()
                    .collect();
                let rest = &full[shared..];
                let embeds = self.embedder.embed(rest)?;
                (forced, _) = self.decoder.prefill(
                    embeds,
                    rest.len(),
                    shared,
                    Past::Cache(prefix),
                    true,
                    self.spec.vocab_size,
                )?;
            }
            scores.push(option_score(last, &forced, &continuation));
            option_ids.push(continuation);
        }
        let (index, confidence) = best_option(&scores);
        Ok(LocalAnswer {
            text: options[index].0.to_owned(),
            confidence,
            min_probability: None,
            tokens: option_ids.swap_remove(index),
            prompt_tokens: ids.len(),
            timings: StageTimings::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-6,
            "{actual} is not {expected}"
        );
    }

    #[test]
    fn argmax_takes_the_first_of_equal_values_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), (1, 3.0));
        assert_eq!(argmax(&[f32::NAN, -1.0]), (1, -1.0));
        assert_eq!(argmax(&[]), (0, f32::NEG_INFINITY));
    }

    #[test]
    fn text_confidence_is_the_geometric_mean_with_the_lowest_probability() {
        // sqrt(0.5 * 0.125) = 0.25.
        let (confidence, lowest) = text_confidence(&[0.5f32.ln(), 0.125f32.ln()]);
        assert_close(confidence, 0.25);
        assert_close(lowest.unwrap(), 0.125);
        assert_eq!(text_confidence(&[0.0]), (1.0, Some(1.0)));
        // No token chosen (the first was a stop token): no confidence, no lowest.
        assert_eq!(text_confidence(&[]), (0.0, None));
    }

    #[test]
    fn options_are_scored_with_a_leading_space_and_answered_by_label() {
        assert_eq!(options(&AnswerKind::Text), None);
        assert_eq!(
            options(&AnswerKind::YesNo),
            Some(vec![("yes", " Yes".to_owned()), ("no", " No".to_owned())])
        );
        let kind = AnswerKind::OneOf(vec!["cat".to_owned(), "red car".to_owned()]);
        assert_eq!(
            options(&kind),
            Some(vec![
                ("cat", " cat".to_owned()),
                ("red car", " red car".to_owned())
            ])
        );
    }

    #[test]
    fn a_token_past_the_logits_has_no_probability() {
        assert_close(log_prob(&[0.0, 0.0], 1), -(2f64.ln()));
        assert_eq!(log_prob(&[0.0, 0.0], 2), f64::NEG_INFINITY);
    }

    #[test]
    fn an_option_scores_the_sum_of_its_tokens_log_probabilities() {
        // After the prompt, token 1 has probability 3/4.
        let last = [0.0, 3f32.ln()];
        assert_close(option_score(&last, &[], &[1]), 0.75f64.ln());
        // Then, teacher-forced, token 0 has 1/2; the rows before the option's (the rest of the prompt)
        // are not read.
        let forced = vec![vec![5.0, 0.0], vec![0.0, 0.0]];
        assert_close(option_score(&last, &forced, &[1, 0]), 0.375f64.ln());
    }

    #[test]
    fn the_best_option_has_its_share_of_the_softmax_over_the_scores() {
        let (index, confidence) = best_option(&[-1.0, -2.0]);
        assert_eq!(index, 0);
        assert_close(confidence, 1.0 / (1.0 + (-1f64).exp()));
        // Scores that are log-probabilities summing to 1 give back the probability.
        let (index, confidence) = best_option(&[0.2f64.ln(), 0.6f64.ln(), 0.2f64.ln()]);
        assert_eq!(index, 1);
        assert_close(confidence, 0.6);
        // Of equal scores the last wins.
        assert_eq!(best_option(&[-0.5, -0.5]), (1, 0.5));
    }
}
