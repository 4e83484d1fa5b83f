//! SmolVLM2 on ONNX Runtime: the analyser that answers questions about frames.
//!
//! Three graphs of the official export work together (see the model's ONNX contract): `vision_encoder`
//! turns the preprocessed tiles into 64 feature rows per tile, `embed_tokens` turns prompt ids into
//! embeddings, and the rows of `<image>` placeholders are replaced by the image features in order;
//! `decoder_model_merged` then runs the prompt once (prefill) and one token at a time after it, carrying
//! its key/value cache. The cache a step returns (`present.*`) is moved into the next step as `past.*`:
//! the tensors stay where ONNX Runtime put them, with no copy through our buffers. When `embed_tokens`
//! is a plain table lookup (one `Gather` of a float table stored in the file), its rows are read from
//! the file instead of running it (`embedding`): the 113 MB table is then never held in memory.
//!
//! Several questions about one frame share work: the frame is encoded once per splitting mode, and the
//! prompt prefix they have in common (the chat header and the whole image block) is prefilled once; each
//! question then prefills only its own words on top of that shared cache, passed by reference. A single
//! question is its own prefix: its whole prompt is prefilled in one run.
//!
//! Text answers are then decoded together, those of one frame and those of other jobs answered in the
//! same call (`answer_jobs`), up to `batch` at a time. A decoding step is bound by reading the weights
//! and by ONNX Runtime's per-node overhead, not by arithmetic: a step for 4 sequences took 1.5x (int8)
//! and 1.2x (fp32) one for a single sequence. The caches are stacked left-padded and the padding masked,
//! which with fp32 weights gives exactly each answer alone; the int8 graphs quantize activations with
//! one scale per tensor, so there an answer can shift slightly with its batch.
//!
//! A clip (SmolVLM2's video input) goes the same way: its frames, each one unsplit image, fill the
//! `<image>` rows of the reference's video prompt (frame count, duration, a timestamp per frame).
//!
//! Answer kinds and confidence:
//! - `text`: greedy decoding until a stop token or `max_new_tokens`; confidence is the geometric mean of
//!   the chosen tokens' probabilities (the stop token excluded), and the lowest of them is reported too.
//! - `yes_no` and `one_of`: no free text is generated. Each option (" Yes" / " No", or " " + label) is
//!   scored as the sum of its tokens' log-probabilities right after the prompt; the best option is the
//!   answer and its confidence is its share of the softmax over the options' scores.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, TensorRef, ValueType};

use super::embedding::EmbeddingTable;
use super::model::{ModelError, ModelSpec};
use super::preprocess::{Pixels, preprocess, preprocess_clip};
use super::prompt::{PromptError, Prompter};
use super::runtime::{self, Provider, RuntimeError};
use super::{AnalyseError, Analyser, LocalAnswer};
use crate::message::{AnswerKind, Clip, Frame, MAX_CLIP_FRAMES, Request, StageTimings};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(
        "unknown model variant {0:?}; expected one of fp32, fp16, int8, uint8, quantized, q4, q4f16, bnb4"
    )]
    Variant(String),
    #[error("{graph}: {problem} (is this a SmolVLM2 export?)")]
    Contract { graph: PathBuf, problem: String },
}

/// How to load a model: where it is, which weights, on what.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub model_dir: PathBuf,
    /// The file suffix of the variant: "" for fp32, "_int8", "_q4"...
    pub suffix: String,
    pub library: PathBuf,
    pub providers: Vec<Provider>,
    pub threads: usize,
    /// The most text answers decoded together, one decoder run per token for all of them (1: one at a
    /// time).
    pub batch: usize,
}

/// What the decoder graph's key/value inputs look like, read from its metadata, with their names (built
/// once: they are passed on every generated token).
struct CacheLayout {
    past_names: Vec<String>,
    present_names: Vec<String>,
    kv_heads: i64,
    head_dim: i64,
    has_logits_to_keep: bool,
}

pub struct SmolVlm {
    name: String,
    spec: ModelSpec,
    prompter: Prompter,
    vision: Session,
    embed: Embedder,
    decoder: Session,
    cache: CacheLayout,
    providers: Vec<&'static str>,
    /// The configured thread count, also used for resampling (0: one per core).
    threads: usize,
    /// The most text answers decoded together.
    batch: usize,
    load_time: Duration,
    /// The last answer's pixel values, reused by the next: a fresh buffer of 13 tiles costs about 30 ms
    /// of page faults. Kept only up to the largest still image's size (see `keep_pixel_buffer`).
    pixel_buffer: Vec<f32>,
}

/// How prompt ids become embeddings: rows read from the `embed_tokens` file when that graph is a plain
/// table lookup (see `embedding`: the table is then never held in memory), else the graph run as is.
enum Embedder {
    Table(EmbeddingTable),
    Graph(Session),
}

/// An input or output a graph must declare: name, element type, rank.
struct Port {
    name: String,
    dtype: TensorElementType,
    rank: usize,
}

fn port(name: impl Into<String>, dtype: TensorElementType, rank: usize) -> Port {
    Port {
        name: name.into(),
        dtype,
        rank,
    }
}

/// Checks that `session` declares every port, with the element type and rank given.
fn check_ports(
    path: &Path,
    session: &Session,
    inputs: &[Port],
    outputs: &[Port],
) -> Result<(), LoadError> {
    let contract = |problem: String| LoadError::Contract {
        graph: path.to_owned(),
        problem,
    };
    for (kind, wanted, declared) in [
        ("input", inputs, session.inputs()),
        ("output", outputs, session.outputs()),
    ] {
        for port in wanted {
            let outlet = declared
                .iter()
                .find(|outlet| outlet.name() == port.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = declared.iter().map(|outlet| outlet.name()).collect();
                    contract(format!("no {kind} named {:?}; it has {names:?}", port.name))
                })?;
            match outlet.dtype() {
                ValueType::Tensor { ty, shape, .. }
                    if *ty == port.dtype && shape.len() == port.rank => {}
                ValueType::Tensor { ty, shape, .. } => {
                    return Err(contract(format!(
                        "{kind} {:?} is {ty:?} of rank {}, expected {:?} of rank {}",
                        port.name,
                        shape.len(),
                        port.dtype,
                        port.rank
                    )));
                }
                other => {
                    return Err(contract(format!(
                        "{kind} {:?} is {other:?}, not a tensor",
                        port.name
                    )));
                }
            }
        }
    }
    Ok(())
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

impl SmolVlm {
    pub fn load(options: &LoadOptions) -> Result<SmolVlm, LoadError> {
        let started = Instant::now();
        let spec = ModelSpec::read(&options.model_dir)?;
        let prompter = Prompter::load(
            &options.model_dir,
            spec.image_token_id,
            &spec.eos_ids,
            spec.image_seq_len,
        )?;
        let environment = runtime::environment(&options.library)?;
        let graph = |name: &str| {
            options
                .model_dir
                .join("onnx")
                .join(format!("{name}{}.onnx", options.suffix))
        };
        let load = |path: &Path| {
            runtime::load_session(&environment, path, &options.providers, options.threads)
        };
        use TensorElementType::{Bool, Float32, Int64};

        let vision_path = graph("vision_encoder");
        let (vision, providers) = load(&vision_path)?;
        check_ports(
            &vision_path,
            &vision,
            &[
                port("pixel_values", Float32, 5),
                port("pixel_attention_mask", Bool, 4),
            ],
            &[port("image_features", Float32, 3)],
        )?;
        let embed_path = graph("embed_tokens");
        let embed = match EmbeddingTable::open(&embed_path) {
            Some(table) => Embedder::Table(table),
            None => {
                let (embed, _) = load(&embed_path)?;
                check_ports(
                    &embed_path,
                    &embed,
                    &[port("input_ids", Int64, 2)],
                    &[port("inputs_embeds", Float32, 3)],
                )?;
                Embedder::Graph(embed)
            }
        };

        let decoder_path = graph("decoder_model_merged");
        let (decoder, _) = load(&decoder_path)?;
        let mut inputs = vec![
            port("inputs_embeds", Float32, 3),
            port("attention_mask", Int64, 2),
            port("position_ids", Int64, 2),
        ];
        let mut outputs = vec![port("logits", Float32, 3)];
        for layer in 0..spec.layers {
            for kind in ["key", "value"] {
                inputs.push(port(format!("past_key_values.{layer}.{kind}"), Float32, 4));
                outputs.push(port(format!("present.{layer}.{kind}"), Float32, 4));
            }
        }
        check_ports(&decoder_path, &decoder, &inputs, &outputs)?;
        let cache = cache_layout(&decoder_path, &decoder, spec.layers)?;
        let name = options
            .model_dir
            .file_name()
            .map(|name| format!("{}{}", name.to_string_lossy(), options.suffix))
            .unwrap_or_else(|| "smolvlm2".to_owned());
        tracing::info!(model = %name, providers = ?providers, "SmolVLM2 loaded.");
        Ok(SmolVlm {
            name,
            spec,
            prompter,
            vision,
            embed,
            decoder,
            cache,
            providers,
            threads: options.threads,
            batch: options.batch.max(1),
            load_time: started.elapsed(),
            pixel_buffer: Vec::new(),
        })
    }

    /// Runs the vision encoder on preprocessed pixels (viewed, not copied), one image per run, and returns
    /// the feature rows of every image in order. One image at a time keeps the encoder's memory arena at
    /// one image's activations (its attention alone holds heads x patches² floats, about 50 MB for a
    /// 512-pixel image), and it was faster too: 13 tiles in runs of 4 against 1 took 6.6 against 6.2 s
    /// (int8) and 14.4 against 12.7 s (q4) (`lookout bench --split`).
    fn encode_image(&mut self, pixels: &Pixels) -> Result<Vec<f32>, AnalyseError> {
        let tile = self.spec.image.tile as usize;
        let mask = vec![true; tile * tile];
        let mut features = Vec::new();
        for image in pixels.values.chunks(3 * tile * tile) {
            let values =
                TensorRef::from_array_view(([1, 1, 3, tile, tile], image)).map_err(ort_error)?;
            let mask = TensorRef::from_array_view(([1, 1, tile, tile], mask.as_slice()))
                .map_err(ort_error)?;
            let outputs = self
                .vision
                .run(ort::inputs! {"pixel_values" => values, "pixel_attention_mask" => mask})
                .map_err(ort_error)?;
            let (_, rows) = outputs["image_features"]
                .try_extract_tensor::<f32>()
                .map_err(ort_error)?;
            features.extend_from_slice(rows);
        }
        Ok(features)
    }

    fn embed(&mut self, ids: &[u32]) -> Result<Vec<f32>, AnalyseError> {
        let session = match &mut self.embed {
            Embedder::Table(table) => {
                return table
                    .lookup(ids)
                    .map_err(|error| AnalyseError::Model(error.to_string()));
            }
            Embedder::Graph(session) => session,
        };
        let ids: Vec<i64> = ids.iter().map(|id| i64::from(*id)).collect();
        let tensor = Tensor::from_array(([1, ids.len()], ids)).map_err(ort_error)?;
        let outputs = session
            .run(ort::inputs! {"input_ids" => tensor})
            .map_err(ort_error)?;
        let (_, embeds) = outputs["inputs_embeds"]
            .try_extract_tensor::<f32>()
            .map_err(ort_error)?;
        Ok(embeds.to_vec())
    }

    /// Embeddings of `ids` with the `<image>` rows replaced by `features`, in order.
    fn embed_with_image(
        &mut self,
        ids: &[u32],
        features: &[f32],
    ) -> Result<Vec<f32>, AnalyseError> {
        let mut embeds = self.embed(ids)?;
        let hidden = embeds.len() / ids.len().max(1);
        let slots: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id == self.spec.image_token_id)
            .map(|(index, _)| index)
            .collect();
        if slots.len() * hidden != features.len() {
            return Err(AnalyseError::Model(format!(
                "the prompt has {} image tokens but the encoder gave {} feature rows",
                slots.len(),
                features.len() / hidden.max(1)
            )));
        }
        for (slot, row) in slots.iter().zip(features.chunks_exact(hidden)) {
            embeds[slot * hidden..(slot + 1) * hidden].copy_from_slice(row);
        }
        Ok(embeds)
    }

    /// An empty cache, shaped from the decoder's metadata.
    fn empty_cache(&self) -> Result<Vec<DynValue>, AnalyseError> {
        (0..self.spec.layers * 2)
            .map(|_| {
                Tensor::from_array((
                    [
                        1,
                        self.cache.kv_heads as usize,
                        0,
                        self.cache.head_dim as usize,
                    ],
                    Vec::<f32>::new(),
                ))
                .map(|tensor| tensor.into_dyn())
                .map_err(ort_error)
            })
            .collect()
    }

    /// Runs the decoder on `embeds` (`count` positions after `past_len` cached ones) and returns the
    /// logits at each requested position (`all_positions`, else only the last) and the new cache.
    fn decode(
        &mut self,
        embeds: Vec<f32>,
        count: usize,
        past_len: usize,
        past: Past<'_>,
        all_positions: bool,
    ) -> Result<(Vec<Vec<f32>>, Vec<DynValue>), AnalyseError> {
        let total = past_len + count;
        let rows = Rows {
            batch: 1,
            count,
            attention_mask: vec![1; total],
            position_ids: (past_len as i64..total as i64).collect(),
        };
        self.run_decoder(embeds, rows, past, all_positions)
    }

    /// Runs the decoder on `embeds`, `rows.count` positions of each of `rows.batch` sequences, and
    /// returns, sequence after sequence, the logits at each requested position (`all_positions`, else
    /// only the last) and the new cache.
    fn run_decoder(
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
        if self.cache.has_logits_to_keep {
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
            .cache
            .past_names
            .iter()
            .map(|name| Cow::Borrowed(name.as_str()));
        inputs.extend(names.zip(values));
        let mut outputs = self.decoder.run(inputs).map_err(ort_error)?;
        let (shape, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(ort_error)?;
        let vocab = *shape.last().unwrap_or(&0) as usize;
        let positions = logits.len() / (vocab.max(1) * batch);
        let wanted = if all_positions {
            positions.min(count)
        } else {
            1
        };
        let rows_wanted = logits
            .chunks_exact(positions * vocab)
            .flat_map(|sequence| sequence[(positions - wanted) * vocab..].chunks_exact(vocab))
            .map(<[f32]>::to_vec)
            .collect();
        let mut present = Vec::with_capacity(self.cache.present_names.len());
        for name in &self.cache.present_names {
            let value = outputs
                .remove(name)
                .ok_or_else(|| AnalyseError::Model(format!("no {name} output")))?;
            present.push(value);
        }
        Ok((rows_wanted, present))
    }

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

    /// Keeps `values` for the next answer if no larger than the largest still image needs (17 tiles of
    /// SmolVLM2, 53 MB): a long clip's buffer is freed rather than held for good.
    fn keep_pixel_buffer(&mut self, values: Vec<f32>) {
        let image = &self.spec.image;
        let tiles_per_side = image.longest_edge.div_ceil(image.tile) as usize;
        let largest =
            (tiles_per_side * tiles_per_side + 1) * 3 * (image.tile * image.tile) as usize;
        if values.capacity() <= largest {
            self.pixel_buffer = values;
        }
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
            Some(first) if shared > 0 => {
                let ids = &first[..shared];
                self.embed_with_image(ids, &features)
                    .and_then(|embeds| self.empty_cache().map(|cache| (embeds, cache)))
                    .and_then(|(embeds, cache)| {
                        self.decode(embeds, shared, 0, Past::Owned(cache), false)
                    })
                    .map(|(logits, cache)| {
                        (logits.into_iter().next_back().unwrap_or_default(), cache)
                    })
            }
            _ => Err(AnalyseError::Input("no prompt could be built".to_owned())),
        };
        let prefix_ms = millis(started);
        requests
            .iter()
            .zip(prompts)
            .map(|(request, ids)| {
                let mut timings = StageTimings {
                    preprocess: preprocess_ms,
                    vision: vision_ms,
                    prefill: prefix_ms,
                    decode: 0.0,
                };
                // The question's own ids on top of the prefix, if any: a single prompt is the prefix.
                let prefilled = ids.and_then(|ids| {
                    let (prefix_last, prefix_cache) = prefix.as_ref().map_err(Clone::clone)?;
                    let rest = &ids[shared..];
                    if rest.is_empty() {
                        return Ok((ids, prefix_last.clone(), None));
                    }
                    let started = Instant::now();
                    let embeds = self.embed(rest)?;
                    let (logits, cache) = self.decode(
                        embeds,
                        rest.len(),
                        shared,
                        Past::Shared(prefix_cache),
                        false,
                    )?;
                    timings.prefill += millis(started);
                    let last = logits.into_iter().next_back().unwrap_or_default();
                    Ok((ids, last, Some(cache)))
                });
                let (ids, last, own_cache) = match prefilled {
                    Ok(prefilled) => prefilled,
                    Err(error) => return Prepared::Finished(Err(error)),
                };
                // Each option: the label answered, and the text it is scored as.
                let options: Vec<(&str, String)> = match &request.kind {
                    AnswerKind::Text => {
                        // Decoding goes on from the question's own cache, or from the prefix's when
                        // the prompt is the prefix (then no other prompt shares it).
                        let cache = match own_cache {
                            Some(cache) => cache,
                            None => match std::mem::replace(&mut prefix, Err(prefix_taken())) {
                                Ok((_, cache)) => cache,
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
                    }
                    AnswerKind::YesNo => vec![("yes", " Yes".to_owned()), ("no", " No".to_owned())],
                    AnswerKind::OneOf(labels) => labels
                        .iter()
                        .map(|label| (label.as_str(), format!(" {label}")))
                        .collect(),
                };
                let options: Vec<(&str, &str)> = options
                    .iter()
                    .map(|(label, text)| (*label, text.as_str()))
                    .collect();
                let prefix = match &prefix {
                    Ok((_, cache)) => cache,
                    Err(error) => return Prepared::Finished(Err(error.clone())),
                };
                let started = Instant::now();
                let answer = self.choose(&last, prefix, shared, &ids, &options);
                timings.decode = millis(started);
                Prepared::Finished(answer.map(|answer| LocalAnswer { timings, ..answer }))
            })
            .collect()
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

    /// Greedy decoding of several prefilled prompts at once: each step runs the decoder once for all of
    /// them. Their caches are stacked into one, each right-aligned to the longest and masked where it
    /// is padded, so that every row sees exactly its own prompt. A row whose answer is complete leaves
    /// the batch, and the cache is rebuilt without it.
    fn generate(&mut self, prefilled: Vec<Prefilled>) -> Vec<Result<LocalAnswer, AnalyseError>> {
        let started = Instant::now();
        let mut rows: Vec<Decoding> = Vec::with_capacity(prefilled.len());
        let mut caches = Vec::with_capacity(prefilled.len());
        for (place, prefilled) in prefilled.into_iter().enumerate() {
            rows.push(Decoding {
                place,
                logits: prefilled.logits,
                cached: prefilled.prompt_len,
                max_new: prefilled.max_new,
                tokens: Vec::new(),
                log_probs: Vec::new(),
                timings: prefilled.timings,
            });
            caches.push(prefilled.cache);
        }
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
            match self.stack_caches(&parts) {
                Ok(stacked) => stacked,
                Err(error) => return rows.iter().map(|_| Err(error.clone())).collect(),
            }
        };
        drop(caches);
        let failure = loop {
            // Choose each row's next token; the rows that are complete leave.
            let mut leaving = Vec::new();
            for (index, row) in rows.iter_mut().enumerate() {
                if row.max_new == 0 {
                    leaving.push(index);
                    continue;
                }
                let (next, logit) = argmax(&row.logits);
                row.tokens.push(next as u32);
                if self.prompter.stop_ids.contains(&(next as u32)) {
                    leaving.push(index);
                    continue;
                }
                row.log_probs.push(logit - log_sum_exp(&row.logits));
                if row.tokens.len() as u32 >= row.max_new {
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
                let parts: Vec<(&[DynValue], usize, usize)> = (0..rows.len() + leaving.len())
                    .filter(|index| !leaving.contains(index))
                    .zip(&rows)
                    .map(|(index, row)| (cache.as_slice(), index, row.cached))
                    .collect();
                match self.stack_caches(&parts) {
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
        let embeds = self.embed(&last)?;
        let width = rows.iter().map(|row| row.cached).max().unwrap_or(0) + 1;
        let attention_mask = rows
            .iter()
            .flat_map(|row| {
                let padding = width - 1 - row.cached;
                std::iter::repeat_n(0, padding).chain(std::iter::repeat_n(1, width - padding))
            })
            .collect();
        let batch = Rows {
            batch: rows.len(),
            count: 1,
            attention_mask,
            position_ids: rows.iter().map(|row| row.cached as i64).collect(),
        };
        let (logits, present) = self.run_decoder(embeds, batch, Past::Owned(cache), false)?;
        for (row, logits) in rows.iter_mut().zip(logits) {
            row.logits = logits;
            row.cached += 1;
        }
        Ok(present)
    }

    /// One cache of `parts.len()` rows from rows of others: each part names a cache, a row of it, and
    /// how many of that row's last positions are real. Each row is right-aligned to the longest and
    /// zero before it (the attention mask hides those positions).
    fn stack_caches(
        &self,
        parts: &[(&[DynValue], usize, usize)],
    ) -> Result<Vec<DynValue>, AnalyseError> {
        let heads = self.cache.kv_heads as usize;
        let head_dim = self.cache.head_dim as usize;
        let width = parts.iter().map(|(_, _, real)| *real).max().unwrap_or(0);
        (0..self.cache.past_names.len())
            .map(|tensor| {
                let mut stacked = vec![0f32; parts.len() * heads * width * head_dim];
                for (row, (cache, from, real)) in parts.iter().enumerate() {
                    let (shape, values) = cache[tensor]
                        .try_extract_tensor::<f32>()
                        .map_err(ort_error)?;
                    let from_width = shape[2] as usize;
                    for head in 0..heads {
                        let source =
                            ((from * heads + head) * from_width + from_width - real) * head_dim;
                        let target = ((row * heads + head) * width + width - real) * head_dim;
                        stacked[target..target + real * head_dim]
                            .copy_from_slice(&values[source..source + real * head_dim]);
                    }
                }
                Tensor::from_array(([parts.len(), heads, width, head_dim], stacked))
                    .map(|tensor| tensor.into_dyn())
                    .map_err(ort_error)
            })
            .collect()
    }

    /// A complete text answer: its text and its confidence, the geometric mean of its chosen tokens'
    /// probabilities (the stop token excluded), with the lowest of them.
    fn text_answer(&self, row: Decoding) -> LocalAnswer {
        let confidence = if row.log_probs.is_empty() {
            0.0
        } else {
            (row.log_probs.iter().map(|lp| f64::from(*lp)).sum::<f64>()
                / row.log_probs.len() as f64)
                .exp()
        };
        let min_probability = row
            .log_probs
            .iter()
            .map(|lp| f64::from(*lp).exp())
            .fold(None, |min: Option<f64>, p| {
                Some(min.map_or(p, |m| m.min(p)))
            });
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

    /// Scores each option's continuation after the prompt and picks the most likely.
    /// `prefix` caches the first `shared` ids of `ids`; `last` holds the logits after all of `ids`.
    fn choose(
        &mut self,
        last: &[f32],
        prefix: &[DynValue],
        shared: usize,
        ids: &[u32],
        options: &[(&str, &str)],
    ) -> Result<LocalAnswer, AnalyseError> {
        let mut scores = Vec::with_capacity(options.len());
        let mut option_ids = Vec::with_capacity(options.len());
        for (_, text) in options {
            let continuation = self
                .prompter
                .encode(text)
                .map_err(|error| AnalyseError::Input(error.to_string()))?;
            let log_prob = |row: &[f32], token: u32| {
                f64::from(
                    row.get(token as usize)
                        .copied()
                        .unwrap_or(f32::NEG_INFINITY)
                        - log_sum_exp(row),
                )
            };
            let mut score = log_prob(last, continuation[0]);
            if continuation.len() > 1 {
                // Teacher-force the option after the full prompt: prompt rest + option tokens but the last.
                let full: Vec<u32> = ids
                    .iter()
                    .chain(&continuation[..continuation.len() - 1])
                    .copied()
                    .collect();
                let rest = &full[shared..];
                let embeds = self.embed(rest)?;
                let (rows, _) =
                    self.decode(embeds, rest.len(), shared, Past::Shared(prefix), true)?;
                let offset = rows.len() - (continuation.len() - 1);
                for (k, token) in continuation[1..].iter().enumerate() {
                    score += log_prob(&rows[offset + k], *token);
                }
            }
            scores.push(score);
            option_ids.push(continuation);
        }
        let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = scores.iter().map(|score| (score - best).exp()).sum();
        let (index, score) = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(index, score)| (index, *score))
            .unwrap_or((0, 0.0));
        Ok(LocalAnswer {
            text: options[index].0.to_owned(),
            confidence: (score - best).exp() / total,
            min_probability: None,
            tokens: option_ids.swap_remove(index),
            timings: StageTimings::default(),
        })
    }
}

/// The decoder's past: moved in from the previous step, or borrowed from a shared prefix.
enum Past<'a> {
    Owned(Vec<DynValue>),
    Shared(&'a [DynValue]),
}

/// The positions of one decoder run: `count` new positions of each of `batch` sequences, with the
/// attention mask over all positions (past and new) and the new positions' ids, sequence after sequence.
struct Rows {
    batch: usize,
    count: usize,
    attention_mask: Vec<i64>,
    position_ids: Vec<i64>,
}

/// An answer as the first pass over a job leaves it: complete (a choice, a failure), or a text answer
/// whose prompt is prefilled, waiting to be decoded with others.
enum Prepared {
    Finished(Result<LocalAnswer, AnalyseError>),
    ToDecode(Prefilled),
}

/// A prompt run through the decoder: the logits after it and its cache.
struct Prefilled {
    logits: Vec<f32>,
    cache: Vec<DynValue>,
    prompt_len: usize,
    max_new: u32,
    timings: StageTimings,
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

fn cache_layout(path: &Path, decoder: &Session, layers: usize) -> Result<CacheLayout, LoadError> {
    let first = decoder
        .inputs()
        .iter()
        .find(|input| input.name() == "past_key_values.0.key")
        .map(|input| input.dtype().clone());
    let Some(ValueType::Tensor { shape, .. }) = first else {
        return Err(LoadError::Contract {
            graph: path.to_owned(),
            problem: "past_key_values.0.key is not a tensor".to_owned(),
        });
    };
    let (kv_heads, head_dim) = (shape[1], shape[3]);
    if kv_heads <= 0 || head_dim <= 0 {
        return Err(LoadError::Contract {
            graph: path.to_owned(),
            problem: format!(
                "the cache shape {shape:?} does not give fixed kv heads and head size"
            ),
        });
    }
    let names = |prefix: &str| {
        (0..layers)
            .flat_map(|layer| ["key", "value"].map(|kind| format!("{prefix}.{layer}.{kind}")))
            .collect()
    };
    Ok(CacheLayout {
        past_names: names("past_key_values"),
        present_names: names("present"),
        kv_heads,
        head_dim,
        has_logits_to_keep: decoder
            .inputs()
            .iter()
            .any(|input| input.name() == "num_logits_to_keep"),
    })
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

/// The length of the id prefix all prompts share, covering every image token, else 0. A single prompt is
/// its own prefix, prefilled in one run; of several, each keeps at least its last position out of it, to
/// run on top of the shared cache and produce its own logits.
fn shared_prefix(prompts: &[&Vec<u32>], image_token: u32) -> usize {
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

/// log(sum(exp(logits))), so that a token's log-probability is its logit minus this. One pass of f32
/// exponentials in independent lanes (vectorisable): it runs on every generated token.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0f32; 8];
    let chunks = logits.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|x| (x - max).exp()).sum();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += (x - max).exp();
        }
    }
    max + (lanes.iter().sum::<f32>() + tail).ln()
}

fn argmax(values: &[f32]) -> (usize, f32) {
    values
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (index, value)| {
            if value > best.1 { (index, value) } else { best }
        })
}

impl Analyser for SmolVlm {
    fn model(&self) -> &str {
        &self.name
    }

    fn providers(&self) -> &[&'static str] {
        &self.providers
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
