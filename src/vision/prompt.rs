//! The prompt: SmolVLM's chat template with the image placeholder expanded into tiles, tokenized with the
//! model's own `tokenizer.json`.
//!
//! The text is built exactly as transformers' processor builds it and then tokenized whole, so the ids
//! agree with the reference by construction rather than by re-implementing the tokenizer's splitting
//! rules. Special tokens are looked up by name in the tokenizer; a tokenizer lacking one is refused at
//! load with the name of what is missing.

use std::path::Path;

use tokenizers::Tokenizer;

/// Why the tokenizer cannot serve this model.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot load {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("the tokenizer has no {0} token, so it is not a SmolVLM tokenizer")]
    MissingToken(&'static str),
    #[error(
        "the tokenizer's <image> is id {tokenizer}, but config.json says image_token_id is {config}"
    )]
    ImageIdMismatch { tokenizer: u32, config: u32 },
    #[error("cannot tokenize the prompt: {0}")]
    Encode(String),
}

/// The tokenizer and the special ids the decoding loop needs.
pub struct Prompter {
    tokenizer: Tokenizer,
    image_seq_len: usize,
    /// Ids that end an answer: the configured eos plus `<|im_end|>` and `<|endoftext|>`.
    pub stop_ids: Vec<u32>,
}

const REQUIRED: [&str; 5] = [
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
];

impl Prompter {
    pub fn load(
        dir: &Path,
        image_token_id: u32,
        eos_ids: &[u32],
        image_seq_len: usize,
    ) -> Result<Prompter, PromptError> {
        let path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path).map_err(|error| PromptError::Load {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        for name in REQUIRED {
            if tokenizer.token_to_id(name).is_none() {
                return Err(PromptError::MissingToken(name));
            }
        }
        let image = tokenizer.token_to_id("<image>").unwrap_or_default();
        if image != image_token_id {
            return Err(PromptError::ImageIdMismatch {
                tokenizer: image,
                config: image_token_id,
            });
        }
        let mut stop_ids = eos_ids.to_vec();
        for name in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer
                .token_to_id(name)
                .filter(|id| !stop_ids.contains(id))
            {
                stop_ids.push(id);
            }
        }
        Ok(Prompter {
            tokenizer,
            image_seq_len,
            stop_ids,
        })
    }

    /// One unsplit image's placeholder block.
    fn single_image(&self) -> String {
        let image_run = "<image>".repeat(self.image_seq_len);
        format!("<fake_token_around_image><global-img>{image_run}<fake_token_around_image>")
    }

    /// The user turn with one image of `rows` x `cols` tiles (0 x 0: a single image), then `Assistant:`.
    pub fn text(&self, question: &str, rows: usize, cols: usize) -> String {
        let image_run = "<image>".repeat(self.image_seq_len);
        let mut image = String::new();
        if rows == 0 && cols == 0 {
            image.push_str(&self.single_image());
        } else {
            for row in 1..=rows {
                for col in 1..=cols {
                    image.push_str(&format!(
                        "<fake_token_around_image><row_{row}_col_{col}>{image_run}"
                    ));
                }
                image.push('\n');
            }
            image.push_str(&format!(
                "\n<fake_token_around_image><global-img>{image_run}<fake_token_around_image>"
            ));
        }
        format!("<|im_start|>User:{image}{question}<end_of_utterance>\nAssistant:")
    }

    /// The prompt's token ids.
    pub fn ids(&self, question: &str, rows: usize, cols: usize) -> Result<Vec<u32>, PromptError> {
        self.encode(&self.text(question, rows, cols))
    }

    /// The user turn with a video of frames at `offsets_s` (seconds from its start) lasting `duration_s`,
    /// as the reference's video template words it: the frame count in words, the duration as H:MM:SS, and
    /// per frame `Frame from mm:ss:` with a single-image block. The turn starts with text, so `User: `.
    pub fn video_text(&self, question: &str, offsets_s: &[f64], duration_s: f64) -> String {
        let mut video = format!(
            "You are provided the following series of {} frames from a {} [H:MM:SS] video.\n",
            number_words(offsets_s.len()),
            hours_minutes_seconds(duration_s)
        );
        let image = self.single_image();
        for offset in offsets_s {
            let seconds = offset.max(0.0) as u64;
            video.push_str(&format!(
                "\nFrame from {:02}:{:02}:{image}",
                seconds / 60,
                seconds % 60
            ));
        }
        format!("<|im_start|>User: {video}\n\n{question}<end_of_utterance>\nAssistant:")
    }

    /// The video prompt's token ids.
    pub fn video_ids(
        &self,
        question: &str,
        offsets_s: &[f64],
        duration_s: f64,
    ) -> Result<Vec<u32>, PromptError> {
        self.encode(&self.video_text(question, offsets_s, duration_s))
    }

    /// Token ids of any text, with the tokenizer's own special-token handling (as the reference calls it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        self.tokenizer
            .encode(text, true)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|error| PromptError::Encode(error.to_string()))
    }

    /// Text of generated ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}

/// `n` in English words as the reference writes frame counts (num2words): "eight", "twenty-one"; clips
/// have at most 64 frames, and numbers from 100 on are written as digits.
fn number_words(n: usize) -> String {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = [
        "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    match n {
        0..20 => ONES[n].to_owned(),
        20..100 if n.is_multiple_of(10) => TENS[n / 10].to_owned(),
        20..100 => format!("{}-{}", TENS[n / 10], ONES[n % 10]),
        _ => n.to_string(),
    }
}

/// Whole seconds as Python's `str(timedelta(seconds=...))`: `H:MM:SS`.
fn hours_minutes_seconds(seconds: f64) -> String {
    let seconds = seconds.max(0.0) as u64;
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_are_worded_as_the_reference_words_them() {
        let words: Vec<String> = [1, 2, 8, 13, 20, 21, 45, 64]
            .into_iter()
            .map(number_words)
            .collect();
        assert_eq!(
            words,
            [
                "one",
                "two",
                "eight",
                "thirteen",
                "twenty",
                "twenty-one",
                "forty-five",
                "sixty-four"
            ]
        );
        assert_eq!(hours_minutes_seconds(0.4), "0:00:00");
        assert_eq!(hours_minutes_seconds(96.9), "0:01:36");
        assert_eq!(hours_minutes_seconds(3725.0), "1:02:05");
    }
}
