//! SmolVLM2 on ONNX Runtime: the analyser that answers questions about frames.
//!
//! Three graphs of the official export work together (see the model's ONNX contract): `vision_encoder`
//! turns the preprocessed tiles into 64 feature rows per tile, `embed_tokens` turns prompt ids into
//! embeddings, and the rows of `<image>` placeholders are replaced by the image features in order; the
//! decoder then runs the prompt once (prefill) and one token at a time after it, carrying its key/value
//! cache. The decoder is Lookout's own (`lookout models build`, its cache written in place) where the
//! folder holds one for the variant and `vision.graphs` allows, else the export's
//! `decoder_model_merged` (see `decode`).
//!
//! Several questions about one frame share work: the frame is encoded once per splitting mode, and the
//! prompt prefix they have in common (the chat header and the whole image block) is prefilled once; each
//! question then prefills only its own words on top of that shared cache, passed by reference. A single
//! question is its own prefix: its whole prompt is prefilled in one run. Text answers are then decoded
//! together, those of one frame and those of other jobs answered in the same call (`answer_jobs`), up to
//! `batch` at a time.
//!
//! A clip (SmolVLM2's video input) goes the same way: its frames, each one unsplit image, fill the
//! `<image>` rows of the reference's video prompt (frame count, duration, a timestamp per frame).
//!
//! This file holds the analyser and the order of that work; the steps are in the order an answer meets
//! them: `load` (the model folder, its graphs checked against the contract), `inputs` (image features
//! and prompt embeddings), `decode` (prefill, the key/value cache, text answers generated together) and
//! `score` (logits to tokens, options and confidences).

mod decode;
mod inputs;
mod load;
mod score;

use std::time::{Duration, Instant};

use ort::session::Session;

use super::device::Assignment;
use super::model::ModelSpec;
use super::preprocess::{Pixels, preprocess, preprocess_clip};
use super::prompt::{PromptError, Prompter};
use super::{AnalyseError, Analyser, LocalAnswer};
use crate::message::{Clip, Frame, MAX_CLIP_FRAMES, Request, StageTimings};
use decode::{Cache, Decoder, Past, Prefilled, shared_prefix};
use inputs::Embedder;
pub use load::{LoadError, LoadOptions, MaxContext};

pub struct SmolVlm {
    name: String,
    spec: ModelSpec,
    prompter: Prompter,
    vision: Session,
    embedder: Embedder,
    decoder: Decoder,
    /// Where it runs, as answers say it (`cpu`, `cuda:0`...).
    runs_on: String,
    /// Where ONNX Runtime put the nodes of each graph.
    assignments: Vec<Assignment>,
    /// The configured thread count, also used for resampling (0: one per core).
    threads: usize,
    /// The most text answers decoded together.
    batch: usize,
    load_time: Duration,
    /// The last answer's pixel values, reused by the next: a fresh buffer of 13 tiles costs about 30 ms
    /// of page faults. Kept only up to the largest still image's size (see `keep_pixel_buffer`).
    pixel_buffer: Vec<f32>,
    /// The weights the sessions above read in place (`runtime::Weights::InMemory`). Last, so dropped
    /// last: fields drop in the order they are declared.
    _held_weights: Vec<std::sync::Arc<[u8]>>,
}

/// An answer as the first pass over a job leaves it: complete (a choice, a failure), or a text answer
/// whose prompt is prefilled, waiting to be decoded with others.
enum Prepared {
    Finished(Result<LocalAnswer, AnalyseError>),
    ToDecode(Prefilled),
}

/// The prefix the prompts of one picture share, prefilled: the logits after it and its cache.
struct Prefix {
    logits: Vec<f32>,
    cache: Cache,
}

fn ort_error(error: ort::Error) -> AnalyseError {
    AnalyseError::Model(error.to_string())
}

fn prompt_error(error: PromptError) -> AnalyseError {
    AnalyseError::Input(error.to_string())
}

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The error a prompt meets if the shared prefix's cache was already handed to another text answer: it
/// is only handed over when a single prompt shares it, so this would be a bug.
fn prefix_taken() -> AnalyseError {
    AnalyseError::Model("the shared prefix's cache was already taken".to_owned())
}

/// The question as the model reads it (the answer kind does not change the prompt: options are scored).
fn question_text(request: &Request) -> String {
    request.question.trim().to_owned()
}

impl SmolVlm {
    /// Prepares the answer to every request about `frame`, grouped by splitting mode (each mode's
    /// pixels are encoded once), in the requests' order.
    fn prepare(&mut self, frame: &Frame, requests: &[Request]) -> Vec<Prepared> {
        let mut prepared: Vec<Option<Prepared>> = requests.iter().map(|_| None).collect();
        for split in [false, true] {
            let indices: Vec<usize> = (0..requests.len())
                .filter(|index| requests[*index].split == split)
                .collect();
            if indices.is_empty() {
                continue;
            }
            let group: Vec<&Request> = indices.iter().map(|index| &requests[*index]).collect();
            for (index, answer) in indices
                .into_iter()
                .zip(self.answer_group(frame, &group, split))
            {
                prepared[index] = Some(answer);
            }
        }
        prepared
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Prepared::Finished(Err(AnalyseError::Model("request not answered".to_owned())))
                })
            })
            .collect()
    }

    /// Prepares the answer to every request of one splitting mode about `frame`.
    fn answer_group(&mut self, frame: &Frame, requests: &[&Request], split: bool) -> Vec<Prepared> {
        let started = Instant::now();
        let buffer = std::mem::take(&mut self.pixel_buffer);
        let pixels = preprocess(&frame.image, &self.spec.image, split, self.threads, buffer);
        let preprocess_ms = millis(started);
        let prompts = requests
            .iter()
            .map(|request| {
                self.prompter
                    .ids(&question_text(request), pixels.rows, pixels.cols)
                    .map_err(prompt_error)
            })
            .collect();
        self.answer_prompts(pixels, preprocess_ms, requests, prompts)
    }

    /// Prepares the answer to each request from its prompt ids, the pictures in `pixels` filling the
    /// prompts' `<image>` rows: the pictures are encoded once (their buffer is then kept for the next
    /// answer), and the prefix the prompts share is prefilled once. Choices are answered here; text
    /// answers are left prefilled, to be decoded together (`finish`).
    fn answer_prompts(
        &mut self,
        pixels: Pixels,
        preprocess_ms: f64,
        requests: &[&Request],
        prompts: Vec<Result<Vec<u32>, AnalyseError>>,
    ) -> Vec<Prepared> {
        let started = Instant::now();
        let features = self.encode_image(&pixels);
        self.keep_pixel_buffer(pixels.values);
        let features = match features {
            Ok(features) => features,
            Err(error) => {
                return requests
                    .iter()
                    .map(|_| Prepared::Finished(Err(error.clone())))
                    .collect();
            }
        };
        let vision_ms = millis(started);

        // The prefix every prompt shares (at least the whole image block), prefilled once: its cache,
        // and the logits after it.
        let valid: Vec<&Vec<u32>> = prompts.iter().filter_map(|ids| ids.as_ref().ok()).collect();
        let shared = shared_prefix(&valid, self.spec.image_token_id);
        let started = Instant::now();
        let mut prefix = match valid.first() {
            Some(first) if shared > 0 => self.prefill_prefix(&first[..shared], &features),
            _ => Err(AnalyseError::Input("no prompt could be built".to_owned())),
        };
        let timings = StageTimings {
            preprocess: preprocess_ms,
            vision: vision_ms,
            prefill: millis(started),
            decode: 0.0,
        };
        requests
            .iter()
            .zip(prompts)
            .map(|(request, ids)| {
                self.prepare_request(request, ids, &mut prefix, shared, timings.clone())
            })
            .collect()
    }

    /// Prefills the shared prefix `ids`, its `<image>` rows filled by `features`, from an empty cache.
    fn prefill_prefix(&mut self, ids: &[u32], features: &[f32]) -> Result<Prefix, AnalyseError> {
        let embeds = self.embed_with_image(ids, features)?;
        let (logits, cache) = self.decoder.prefill(
            embeds,
            ids.len(),
            0,
            Past::Empty,
            false,
            self.spec.vocab_size,
        )?;
        Ok(Prefix {
            logits: logits.into_iter().next_back().unwrap_or_default(),
            cache,
        })
    }

    /// Prepares one request's answer from its prompt `ids`, whose first `shared` are the prefix's: its
    /// own ids are prefilled on top of the prefix's cache, then a choice is scored, or a text answer left
    /// prefilled. A prompt that is the whole prefix takes the prefix's cache to decode on.
    fn prepare_request(
        &mut self,
        request: &Request,
        ids: Result<Vec<u32>, AnalyseError>,
        prefix: &mut Result<Prefix, AnalyseError>,
        shared: usize,
        mut timings: StageTimings,
    ) -> Prepared {
        // The question's own ids on top of the prefix, if any: a single prompt is the prefix.
        let prefilled = ids.and_then(|ids| {
            let Prefix {
                logits: prefix_last,
                cache: prefix_cache,
            } = prefix.as_ref().map_err(Clone::clone)?;
            let rest = &ids[shared..];
            if rest.is_empty() {
                return Ok((ids, prefix_last.clone(), None));
            }
            let started = Instant::now();
            let embeds = self.embedder.embed(rest)?;
            let (logits, cache) = self.decoder.prefill(
                embeds,
                rest.len(),
                shared,
                Past::Cache(prefix_cache),
                false,
                self.spec.vocab_size,
            )?;
            timings.prefill += millis(started);
            let last = logits.into_iter().next_back().unwrap_or_default();
            Ok((ids, last, Some(cache)))
        });
        let (ids, last, own_cache) = match prefilled {
            Ok(prefilled) => prefilled,
            Err(error) => return Prepared::Finished(Err(error)),
        };
        let Some(options) = score::options(&request.kind) else {
            // Decoding goes on from the question's own cache, or from the prefix's when the prompt is
            // the prefix (then no other prompt shares it).
            let cache = match own_cache {
                Some(cache) => cache,
                None => match std::mem::replace(prefix, Err(prefix_taken())) {
                    Ok(prefix) => prefix.cache,
                    Err(error) => return Prepared::Finished(Err(error)),
                },
            };
            return Prepared::ToDecode(Prefilled {
                logits: last,
                cache,
                prompt_len: ids.len(),
                max_new: request.max_new_tokens,
                timings,
            });
        };
        let prefix = match prefix {
            Ok(prefix) => &prefix.cache,
            Err(error) => return Prepared::Finished(Err(error.clone())),
        };
        let started = Instant::now();
        let answer = self.choose(&last, prefix, shared, &ids, &options);
        timings.decode = millis(started);
        Prepared::Finished(answer.map(|answer| LocalAnswer { timings, ..answer }))
    }

    /// Decodes the text answers `jobs` left prefilled, up to `batch` of them together, and returns every
    /// result in the place of its request.
    fn finish(&mut self, jobs: Vec<Vec<Prepared>>) -> Vec<Vec<Result<LocalAnswer, AnalyseError>>> {
        let mut results: Vec<Vec<Option<Result<LocalAnswer, AnalyseError>>>> = Vec::new();
        let mut waiting = Vec::new();
        for (job, prepared) in jobs.into_iter().enumerate() {
            let mut answers = Vec::with_capacity(prepared.len());
            for (index, prepared) in prepared.into_iter().enumerate() {
                answers.push(match prepared {
                    Prepared::Finished(result) => Some(result),
                    Prepared::ToDecode(prefilled) => {
                        waiting.push(((job, index), prefilled));
                        None
                    }
                });
            }
            results.push(answers);
        }
        while !waiting.is_empty() {
            let later = waiting.split_off(waiting.len().min(self.batch));
            let (places, batch): (Vec<_>, Vec<_>) =
                std::mem::replace(&mut waiting, later).into_iter().unzip();
            for ((job, index), answer) in places.into_iter().zip(self.generate(batch)) {
                results[job][index] = Some(answer);
            }
        }
        results
            .into_iter()
            .map(|answers| {
                answers
                    .into_iter()
                    .map(|answer| {
                        answer.unwrap_or_else(|| {
                            Err(AnalyseError::Model("request not answered".to_owned()))
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

impl Analyser for SmolVlm {
    fn model(&self) -> &str {
        &self.name
    }

    fn runs_on(&self) -> &str {
        &self.runs_on
    }

    fn assignments(&self) -> &[Assignment] {
        &self.assignments
    }

    fn load_time(&self) -> Duration {
        self.load_time
    }

    fn batch(&self) -> usize {
        self.batch
    }

    fn answer(
        &mut self,
        frame: &Frame,
        requests: &[Request],
    ) -> Vec<Result<LocalAnswer, AnalyseError>> {
        self.answer_jobs(&[(frame, requests)])
            .pop()
            .unwrap_or_default()
    }

    /// Each job's frame is encoded once per splitting mode, its shared prefix prefilled once; then the
    /// text answers of all the jobs are decoded together.
    fn answer_jobs(
        &mut self,
        jobs: &[(&Frame, &[Request])],
    ) -> Vec<Vec<Result<LocalAnswer, AnalyseError>>> {
        let prepared = jobs
            .iter()
            .map(|(frame, requests)| self.prepare(frame, requests))
            .collect();
        self.finish(prepared)
    }

    /// Every request about `clip`, its frames unsplit, in the reference's video prompt.
    fn answer_clip(
        &mut self,
        clip: &Clip,
        requests: &[Request],
    ) -> Vec<Result<LocalAnswer, AnalyseError>> {
        let requests: Vec<&Request> = requests.iter().collect();
        let frames = clip.frames.len();
        if frames == 0 || frames > MAX_CLIP_FRAMES {
            let error = AnalyseError::Input(format!(
                "a clip has 1 to {MAX_CLIP_FRAMES} frames, not {frames}"
            ));
            return requests.iter().map(|_| Err(error.clone())).collect();
        }
        let started = Instant::now();
        let images: Vec<&image::RgbImage> = clip.frames.iter().map(|frame| &*frame.image).collect();
        let buffer = std::mem::take(&mut self.pixel_buffer);
        let pixels = preprocess_clip(&images, &self.spec.image, self.threads, buffer);
        let preprocess_ms = millis(started);
        let offsets: Vec<f64> = clip.frames.iter().map(|frame| frame.offset_s).collect();
        let prompts = requests
            .iter()
            .map(|request| {
                self.prompter
                    .video_ids(&question_text(request), &offsets, clip.duration_s)
                    .map_err(prompt_error)
            })
            .collect();
        let prepared = self.answer_prompts(pixels, preprocess_ms, &requests, prompts);
        self.finish(vec![prepared]).pop().unwrap_or_default()
    }
}
