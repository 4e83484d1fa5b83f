//! `lookout bench`: how long each stage of an answer takes on this box, with this model and runtime.
//! The measuring lives here, beside what it measures (the analyser, preprocessing, the model folder's
//! decoder weights); the command line only loads the model, calls `run` and prints the report.
//!
//! The analyser answers the same question about the same picture several times; the report gives the
//! median of each stage, so one slow run on a shared machine does not skew it. Time to first token is the
//! image encoding plus the prompt prefill (preprocessing is reported on its own, as the Python reference
//! loop also does it outside its timer); decode speed counts the tokens after the first. Preprocessing is
//! also timed alone, several times in a row, the way the reference's processor is timed.
//!
//! It also measures what several questions about one frame cost against one (the image is encoded once
//! and the prompt prefix it shares prefilled once): three `yes_no` questions, and three `text` questions
//! of up to 32 tokens, each as a ratio to one such question, timed in the same run. And what two cameras'
//! jobs, one 32-token text question each, cost answered together (their answers decoded as one batch)
//! against answered one after the other.
//!
//! A clip (`clip_frames`): the picture repeated as the frames of a clip one second apart, answered as
//! SmolVLM2's video prompt; the several-questions ratios are measured on still frames only.
//!
//! Another setup of the model (another variant, the other decoder, another folder's build) can be
//! timed against this one (`compare`): their answers alternate in this process, so their ratios hold
//! however the shared machine's speed moves, which it did by 15-25% from one process to the next.
//!
//! Decoding one token reads every decoder weight once and the key/value rows cached so far, so memory
//! bandwidth bounds its speed: the report measures this machine's read bandwidth (with the configured
//! threads: each sums its share of a 1 GiB buffer, in huge pages as the weights are, with independent
//! accumulators, the best of five passes, the way that reaches the machine's best) and gives the
//! decode speed as a fraction of that bandwidth over the bytes a step reads (the weights, and the
//! cache rows at the answer's middle).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::huge_pages;
use super::model::{ChosenDecoder, ModelSpec, chosen_decoder};
use super::preprocess::{ImageSettings, preprocess, resampling_kernel};
use super::{AnalyseError, Analyser, Graphs, LocalAnswer, VisionConfig, variant_suffix};
use crate::message::{AnswerKind, Clip, ClipFrame, Frame, Origin, Request};

/// One benchmark's result (milliseconds unless named otherwise).
#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    /// Where it ran: `cpu`, `cuda:0`, `openvino:npu`...
    pub runs_on: String,
    pub width: u32,
    pub height: u32,
    pub split: bool,
    pub runs: usize,
    pub load_ms: f64,
    pub preprocess_ms: f64,
    /// Preprocessing alone, `PREPROCESS_ALONE_RUNS` times in a row (median): how the reference's processor
    /// is timed. Inside an answer it takes longer: the model has just pushed its buffers out of cache.
    pub preprocess_alone_ms: f64,
    /// The instruction set preprocessing resamples with ("AVX-512", "AVX2" or "portable").
    pub resampling_kernel: &'static str,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub ttft_ms: f64,
    pub decode_tokens_per_s: f64,
    pub tokens: usize,
    pub answer_ms: f64,
    /// Processor time (all threads) per whole answer.
    pub cpu_ms_per_answer: f64,
    /// Which decoder answered: `lookout` (built from the checkpoint) or `official`.
    pub graphs: &'static str,
    /// The decoder graph file.
    pub decoder: String,
    /// The frames of the clip answered about (0: a still frame).
    pub clip_frames: usize,
    /// The prompt's length in tokens.
    pub prompt_tokens: usize,
    /// Bytes of decoder weights, read once per generated token.
    pub decoder_weight_bytes: u64,
    /// Bytes of one cached position (keys and values of every layer).
    pub kv_bytes_per_position: u64,
    /// Bytes a decoding step reads on average: the weights, and the cache rows at the answer's middle.
    pub decode_bytes_per_token: u64,
    /// This machine's memory read bandwidth, measured with the configured threads.
    pub memory_read_gb_per_s: f64,
    /// Decode speed over its bandwidth bound (bandwidth / bytes read per token).
    pub decode_bandwidth_fraction: f64,
    /// Three different yes/no questions about the frame in one job, against one (still frames).
    pub three_yes_no_ratio: Option<f64>,
    /// Three different 32-token text questions about the frame in one job, against one.
    pub three_text_ratio: Option<f64>,
    /// Two cameras' jobs of one 32-token text question each, answered together, against in turn.
    pub two_cameras_ratio: Option<f64>,
    /// Peak resident memory once the timed answers are done: answering one question at a time.
    pub answer_peak_rss_mb: f64,
    /// Peak resident memory after the several-questions and two-cameras measurements too, which
    /// hold several answers' caches at once.
    pub peak_rss_mb: f64,
    /// This model against another setup (`compare`), when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<Comparison>,
}

/// This setup against another, measured in the same process, their answers alternating (`compare`):
/// the ratios hold whatever the machine's speed while they ran, which moved by 15-25% from one
/// process to the next on a shared machine.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The other setup's model, decoder (`lookout` or `official`) and decoder graph file.
    pub model: String,
    pub graphs: &'static str,
    pub decoder: String,
    /// Answers of each setup.
    pub rounds: usize,
    /// This setup's decode speed over the other's (medians of the rounds; above 1: this is faster).
    pub decode_ratio: f64,
    /// The other's time to first token over this one's (above 1: this is faster).
    pub ttft_ratio: f64,
    /// The other's prefill time over this one's (above 1: this is faster).
    pub prefill_ratio: f64,
}

/// What to answer: a question about a frame, or about a clip of it.
pub struct Case<'a> {
    pub frame: &'a Frame,
    pub question: &'a str,
    pub split: bool,
    /// 0: the frame itself; else a clip of this many copies of it.
    pub clip_frames: usize,
    pub max_new_tokens: u32,
    pub runs: usize,
}

/// Questions for the several-questions measurement: different texts, as different tasks ask.
const QUESTIONS: [&str; 3] = [
    "Is there a person in the picture?",
    "Is there a vehicle in the picture?",
    "Is the scene lit by daylight?",
];

/// Back-to-back runs of preprocessing alone.
pub const PREPROCESS_ALONE_RUNS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The process's peak resident memory (VmHWM), in MB; 0 where /proc is not available.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// This process's processor time so far (user and system, all threads), from /proc; zero elsewhere.
fn cpu_time_ms() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, after the parenthesised command name, in clock ticks of
    // 10 ms (USER_HZ is 100 on every Linux architecture Lookout builds for).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = |index: usize| fields.get(index)?.parse::<f64>().ok();
            Some((ticks(11)? + ticks(12)?) * 10.0)
        })
        .unwrap_or(0.0)
}

/// Memory read bandwidth in bytes per second: `threads` threads (0: one per core) summing their share
/// of a 1 GiB buffer in huge pages where the system gives them, eight independent sums each (so the
/// adds never wait on one another), the best of five passes.
pub(crate) fn memory_read_bandwidth(threads: usize) -> f64 {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        threads
    };
    let words = 128 << 20;
    let mut buffer: Vec<u64> = Vec::with_capacity(words);
    // In huge pages, as the model's weights are (`huge_pages`): the bound is the best read.
    huge_pages::advise(buffer.spare_capacity_mut());
    buffer.extend(0..words as u64);
    let chunk = buffer.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let started = Instant::now();
        let total = std::thread::scope(|scope| {
            let parts: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| scope.spawn(move || sum_words(part)))
                .collect();
            parts
                .into_iter()
                .fold(0u64, |sum, part| sum.wrapping_add(part.join().unwrap_or(0)))
        });
        std::hint::black_box(total);
        best = best.min(started.elapsed().as_secs_f64());
    }
    (buffer.len() * std::mem::size_of::<u64>()) as f64 / best
}

/// The wrapping sum of `words`, in eight lanes.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, word) in lanes.iter_mut().zip(chunk) {
            *lane = lane.wrapping_add(*word);
        }
    }
    lanes
        .iter()
        .chain(rest)
        .fold(0u64, |sum, word| sum.wrapping_add(*word))
}

/// How the model was set up: its load time, its processor settings, and what the bandwidth bound needs.
pub struct Setup {
    pub load_ms: f64,
    /// The model's processor settings, for timing preprocessing alone.
    pub image: ImageSettings,
    /// The decoder graph the model answers with.
    pub decoder: ChosenDecoder,
    pub kv_bytes_per_position: u64,
    pub threads: usize,
}

impl Setup {
    /// The setup of `analyser`, the model `config` names, loaded in `load_ms`: its decoder is the last
    /// graph it opened (for an analyser without graphs, the one `config` would choose on the CPU). A
    /// folder whose processor settings cannot be read is timed with SmolVLM2's.
    pub fn new(config: &VisionConfig, analyser: &dyn Analyser, load_ms: f64) -> Setup {
        let spec = ModelSpec::read(&config.model_dir).ok();
        let decoder = match analyser.assignments().last() {
            Some(decoder) => ChosenDecoder::of_graph(&config.model_dir, &decoder.graph),
            None => {
                let suffix = config
                    .resolve_variant(None)
                    .ok()
                    .and_then(variant_suffix)
                    .unwrap_or_default();
                chosen_decoder(&config.model_dir, &suffix, config.graphs == Graphs::Lookout)
            }
        };
        let kv_bytes_per_position = spec.as_ref().map_or(0, |spec| {
            // Lookout's fp16 decoder caches in half precision; every other decoder Lookout runs, in f32.
            let half = matches!(
                decoder,
                ChosenDecoder::Built {
                    precision: "fp16",
                    ..
                }
            );
            (spec.kv_bytes_per_position / if half { 2 } else { 1 }) as u64
        });
        Setup {
            load_ms,
            image: spec
                .as_ref()
                .map_or(ImageSettings::SMOLVLM2, |spec| spec.image.clone()),
            decoder,
            kv_bytes_per_position,
            threads: config.threads,
        }
    }
}

/// Answers the case's question `runs` times and reports the medians.
pub fn run(
    analyser: &mut dyn Analyser,
    setup: &Setup,
    case: &Case,
) -> Result<Report, AnalyseError> {
    let Case {
        frame,
        split,
        clip_frames,
        runs,
        ..
    } = *case;
    let mut answers: Vec<(LocalAnswer, f64)> = Vec::with_capacity(runs);
    let cpu_before = cpu_time_ms();
    for _ in 0..runs.max(1) {
        answers.push(answer_case(analyser, case)?);
    }
    let stage = |pick: fn(&LocalAnswer) -> f64| {
        median(answers.iter().map(|(answer, _)| pick(answer)).collect())
    };
    let cpu_ms_per_answer = (cpu_time_ms() - cpu_before) / answers.len() as f64;
    let answer_peak_rss_mb = peak_rss_mb();
    let tokens = answers[0].0.tokens.len();
    let three = |kind: AnswerKind, max_new_tokens: u32, analyser: &mut dyn Analyser| {
        let requests: Vec<Request> = QUESTIONS
            .iter()
            .map(|question| bench_request(question, kind.clone(), split, max_new_tokens))
            .collect();
        cost_ratio(analyser, frame, &requests, runs)
    };
    // Each run reuses the last one's buffer, as the analyser does.
    let mut buffer = Vec::new();
    let preprocess_alone_ms = median(
        (0..PREPROCESS_ALONE_RUNS)
            .map(|_| {
                let started = Instant::now();
                let reused = std::mem::take(&mut buffer);
                let pixels = preprocess(&frame.image, &setup.image, split, setup.threads, reused);
                let elapsed = started.elapsed().as_secs_f64() * 1000.0;
                buffer = std::hint::black_box(pixels).values;
                elapsed
            })
            .collect(),
    );
    let still = clip_frames == 0;
    let three_yes_no_ratio = still
        .then(|| three(AnswerKind::YesNo, 1, analyser))
        .transpose()?;
    let three_text_ratio = still
        .then(|| three(AnswerKind::Text, 32, analyser))
        .transpose()?;
    let two_cameras_ratio = still
        .then(|| two_cameras_ratio(analyser, frame, split, runs))
        .transpose()?;
    let decode_tokens_per_s = decode_speed(tokens, stage(|answer| answer.timings.decode));
    // Read before the bandwidth measurement allocates its buffer.
    let peak_rss_mb = peak_rss_mb();
    let bandwidth = memory_read_bandwidth(setup.threads);
    let prompt_tokens = answers[0].0.prompt_tokens;
    let decoder_weight_bytes = setup.decoder.bytes();
    let cached_mid_answer = (prompt_tokens + tokens / 2) as u64;
    let decode_bytes_per_token =
        decoder_weight_bytes + setup.kv_bytes_per_position * cached_mid_answer;
    let (graphs, decoder) = names(&setup.decoder);
    Ok(Report {
        model: analyser.model().to_owned(),
        runs_on: analyser.runs_on().to_owned(),
        width: frame.image.width(),
        height: frame.image.height(),
        split,
        runs: answers.len(),
        load_ms: setup.load_ms,
        preprocess_ms: stage(|answer| answer.timings.preprocess),
        preprocess_alone_ms,
        resampling_kernel: resampling_kernel(),
        vision_ms: stage(|answer| answer.timings.vision),
        prefill_ms: stage(|answer| answer.timings.prefill),
        ttft_ms: stage(|answer| answer.timings.vision + answer.timings.prefill),
        decode_tokens_per_s,
        tokens,
        answer_ms: median(answers.iter().map(|(_, ms)| *ms).collect()),
        cpu_ms_per_answer,
        graphs,
        decoder,
        clip_frames,
        prompt_tokens,
        decoder_weight_bytes,
        kv_bytes_per_position: setup.kv_bytes_per_position,
        decode_bytes_per_token,
        memory_read_gb_per_s: bandwidth / 1e9,
        decode_bandwidth_fraction: decode_tokens_per_s * decode_bytes_per_token as f64 / bandwidth,
        three_yes_no_ratio,
        three_text_ratio,
        two_cameras_ratio,
        answer_peak_rss_mb,
        peak_rss_mb,
        against: None,
    })
}

/// Tokens a second after the first, of an answer of `tokens` whose decoding took `decode_ms`.
fn decode_speed(tokens: usize, decode_ms: f64) -> f64 {
    if decode_ms > 0.0 {
        tokens.saturating_sub(1) as f64 / (decode_ms / 1000.0)
    } else {
        0.0
    }
}

/// Which decoder `decoder` is (`lookout` or `official`), and its graph file.
fn names(decoder: &ChosenDecoder) -> (&'static str, String) {
    match decoder {
        ChosenDecoder::Built { path, .. } => ("lookout", path.display().to_string()),
        ChosenDecoder::Official(path) => ("official", path.display().to_string()),
    }
}

/// The case's question answered once, with the whole answer's time in milliseconds.
fn answer_case(
    analyser: &mut dyn Analyser,
    case: &Case,
) -> Result<(LocalAnswer, f64), AnalyseError> {
    let request = bench_request(
        case.question,
        AnswerKind::Text,
        case.split,
        case.max_new_tokens,
    );
    let requests = std::slice::from_ref(&request);
    // The clip's frames are copied before the clock starts: the copies are the bench's, not the
    // answer's.
    let clip = (case.clip_frames > 0).then(|| Clip {
        frames: (0..case.clip_frames)
            .map(|second| ClipFrame {
                image: Arc::new(case.frame.image.clone()),
                offset_s: second as f64,
            })
            .collect(),
        duration_s: case.clip_frames as f64,
    });
    let started = Instant::now();
    let mut results = match &clip {
        Some(clip) => analyser.answer_clip(clip, requests),
        None => analyser.answer(case.frame, requests),
    };
    let answer = results
        .pop()
        .unwrap_or_else(|| Err(AnalyseError::Model("no answer".to_owned())))?;
    Ok((answer, started.elapsed().as_secs_f64() * 1000.0))
}

/// `this` against `other` (the setup `other_decoder` describes) on the case: `case.runs` rounds, each
/// answering once with both, the first to answer swapped from round to round so that neither always
/// meets a machine the other has just warmed or cooled.
pub fn compare(
    this: &mut dyn Analyser,
    other: &mut dyn Analyser,
    other_decoder: &ChosenDecoder,
    case: &Case,
) -> Result<Comparison, AnalyseError> {
    let rounds = case.runs.max(1);
    let mut times: [Vec<(f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for turn in 0..2 {
            let which = (round + turn) % 2;
            let analyser: &mut dyn Analyser = if which == 0 { this } else { other };
            let (answer, _) = answer_case(analyser, case)?;
            let timings = &answer.timings;
            times[which].push((
                decode_speed(answer.tokens.len(), timings.decode),
                timings.vision + timings.prefill,
                timings.prefill,
            ));
        }
    }
    let median_of = |which: usize, pick: fn(&(f64, f64, f64)) -> f64| {
        median(times[which].iter().map(pick).collect())
    };
    let (graphs, decoder) = names(other_decoder);
    Ok(Comparison {
        model: other.model().to_owned(),
        graphs,
        decoder,
        rounds,
        decode_ratio: median_of(0, |t| t.0) / median_of(1, |t| t.0),
        ttft_ratio: median_of(1, |t| t.1) / median_of(0, |t| t.1),
        prefill_ratio: median_of(1, |t| t.2) / median_of(0, |t| t.2),
    })
}

fn bench_request(question: &str, kind: AnswerKind, split: bool, max_new_tokens: u32) -> Request {
    Request {
        origin: Origin::Task("bench".into()),
        question: question.to_owned(),
        kind,
        split,
        max_new_tokens,
        permit: None,
        clip: None,
    }
}

/// The median time of answering all `requests` in one job over that of answering the first alone,
/// alternating the two so that both see the same machine.
fn cost_ratio(
    analyser: &mut dyn Analyser,
    frame: &Frame,
    requests: &[Request],
    runs: usize,
) -> Result<f64, AnalyseError> {
    let mut time = |requests: &[Request]| -> Result<f64, AnalyseError> {
        let started = Instant::now();
        for answer in analyser.answer(frame, requests) {
            answer?;
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let (mut one, mut all) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        one.push(time(&requests[..1])?);
        all.push(time(requests)?);
    }
    Ok(median(all) / median(one))
}

/// The median time of answering two cameras' jobs (the same picture, a text question each) together
/// over that of answering them one after the other, alternating the two.
fn two_cameras_ratio(
    analyser: &mut dyn Analyser,
    frame: &Frame,
    split: bool,
    runs: usize,
) -> Result<f64, AnalyseError> {
    let other = Frame {
        camera: "bench-2".into(),
        seq: frame.seq,
        captured_at: frame.captured_at,
        capture_time: frame.capture_time,
        image: frame.image.clone(),
    };
    let first = [bench_request(QUESTIONS[0], AnswerKind::Text, split, 32)];
    let second = [bench_request(QUESTIONS[1], AnswerKind::Text, split, 32)];
    let jobs: [(&Frame, &[Request]); 2] = [(frame, &first), (&other, &second)];
    let (mut apart, mut together) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        for (frame, requests) in jobs {
            for answer in analyser.answer(frame, requests) {
                answer?;
            }
        }
        apart.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        for answer in analyser.answer_jobs(&jobs).into_iter().flatten() {
            answer?;
        }
        together.push(started.elapsed().as_secs_f64());
    }
    Ok(median(together) / median(apart))
}

/// The picture when none is given: a 640x480 pattern with detail everywhere.
pub fn synthetic_image() -> image::RgbImage {
    image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
    })
}

/// A frame for the benchmark from pixels.
pub fn frame(image: image::RgbImage) -> Frame {
    Frame {
        camera: "bench".into(),
        seq: 1,
        captured_at: SystemTime::now(),
        capture_time: std::time::Duration::ZERO,
        image,
    }
}
