//! Conformance with transformers, the reference: on the committed random-weight fixture and six images
//! (1x1, square, panorama, tall, RGBA with transparency, greyscale), each with splitting on and off,
//! Lookout's prompt ids must equal the reference's exactly and its pixel values must agree within the
//! tolerance stated below; clips (the video prompt) likewise, in `video`. Golden data:
//! models/fixtures/make_golden.py and make_video_golden.py.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lookout::gate::{Job, JobQueue, Pushed};

use lookout::message::Frame;
use lookout::message::Outcome;
use lookout::message::{AnswerKind, Origin, Request};
use lookout::source::decode;
use lookout::stats::Stats;
use lookout::vision::model::ModelSpec;
use lookout::vision::preprocess::preprocess;
use lookout::vision::prompt::Prompter;
use lookout::vision::runtime::Placement;
use lookout::vision::{
    self, Analyser, Graphs, LoadOptions, LocalAnswer, MaxContext, PromptBounds, Replacement,
    SmolVlm, runtime,
};

use crate::common::config::smolvlm_built_fixture;
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("golden.json")).unwrap()).unwrap()
}

fn cases() -> Vec<Value> {
    golden()["cases"].as_array().unwrap().clone()
}

fn label(case: &Value) -> String {
    format!(
        "{} split={}",
        case["image"].as_str().unwrap(),
        case["split"]
    )
}

/// Pixel tolerance: none beyond how the golden file stores the reference. Lookout resizes in integers as
/// the reference does and normalises with its f32 arithmetic, so every value is the reference's bit for
/// bit; the golden file rounds samples to 6 decimals (so 5e-7 apart at most) and keeps tile means as the
/// reference's f32 mean (within 2 ulps of 1, 2.4e-7, of the exact mean Lookout's f64 sum gives). One
/// level of 255 apart would be 0.0078, ten thousand times these bounds.
const MAX_SAMPLE_DIFF: f64 = 5.1e-7;
const MAX_MEAN_DIFF: f64 = 2.4e-7;

/// The fixture's spec and its tokenizer, as the analyser loads them.
fn fixture_prompter() -> (ModelSpec, Prompter) {
    let spec = ModelSpec::read(&fixture()).unwrap();
    let prompter = Prompter::load(
        &fixture(),
        spec.image_token_id,
        &spec.eos_ids,
        spec.image_seq_len,
    )
    .unwrap();
    (spec, prompter)
}

#[test]
fn prompt_ids_equal_the_reference_exactly() {
    let (spec, prompter) = fixture_prompter();
    for case in cases() {
        let image = decode::decode(
            &std::fs::read(fixture().join(case["image"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        let pixels = preprocess(
            &image,
            &spec.image,
            case["split"].as_bool().unwrap(),
            0,
            Vec::new(),
        );
        let ids = prompter
            .ids(case["question"].as_str().unwrap(), pixels.rows, pixels.cols)
            .unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        assert_eq!(ids, expected, "{}", label(&case));
    }
}

#[test]
fn pixel_values_agree_with_the_reference() {
    let spec = ModelSpec::read(&fixture()).unwrap();
    let stride = golden()["meta"]["sample_stride"].as_u64().unwrap() as usize;
    let tile = spec.image.tile as usize;
    let mut worst_sample: f64 = 0.0;
    let mut worst_mean: f64 = 0.0;
    for case in cases() {
        let image = decode::decode(
            &std::fs::read(fixture().join(case["image"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        let pixels = preprocess(
            &image,
            &spec.image,
            case["split"].as_bool().unwrap(),
            0,
            Vec::new(),
        );
        let reference = &case["pixel_values"];
        let shape: Vec<usize> = serde_json::from_value(reference["shape"].clone()).unwrap();
        assert_eq!(
            shape,
            vec![1, pixels.images, 3, tile, tile],
            "{}",
            label(&case)
        );
        for image_index in 0..pixels.images {
            for channel in 0..3 {
                let plane =
                    &pixels.values[(image_index * 3 + channel) * tile * tile..][..tile * tile];
                let mean = plane.iter().map(|v| f64::from(*v)).sum::<f64>() / plane.len() as f64;
                let expected_mean = reference["channel_means"][image_index][channel]
                    .as_f64()
                    .unwrap();
                worst_mean = worst_mean.max((mean - expected_mean).abs());
                let samples = reference["samples"][image_index][channel]
                    .as_array()
                    .unwrap();
                let positions = (stride / 2..tile).step_by(stride);
                let ours = positions
                    .clone()
                    .flat_map(|y| positions.clone().map(move |x| (y, x)));
                for ((y, x), expected) in ours.zip(samples) {
                    let diff = (f64::from(plane[y * tile + x]) - expected.as_f64().unwrap()).abs();
                    worst_sample = worst_sample.max(diff);
                }
            }
        }
    }
    println!("worst sample difference {worst_sample:e}, worst tile-mean difference {worst_mean:e}");
    assert!(
        worst_sample <= MAX_SAMPLE_DIFF,
        "a sample differs by {worst_sample}"
    );
    assert!(
        worst_mean <= MAX_MEAN_DIFF,
        "a tile mean differs by {worst_mean}"
    );
}

/// The decoders held to the reference: the official export's, and Lookout's own, built from the
/// fixture's checkpoint (`lookout models build`), with the official vision encoder and embeddings.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decoder {
    Official,
    Lookout,
}

/// One test per decoder (`NAME::official`, `NAME::lookout`) of a check `CHECK(Decoder)`, so that the
/// two run side by side: each answers every golden case, for tens of seconds.
macro_rules! with_each_decoder {
    ($(#[$doc:meta])* $name:ident, $check:ident) => {
        $(#[$doc])*
        mod $name {
            #[test]
            fn official() {
                super::$check(super::Decoder::Official);
            }

            #[test]
            fn lookout() {
                super::$check(super::Decoder::Lookout);
            }
        }
    };
}

/// The fixture model's fp32 graphs, with `decoder`, on the runtime `cargo test` points ORT_DYLIB_PATH at
/// (deploy/fetch-onnxruntime.sh).
fn load_fixture(decoder: Decoder) -> SmolVlm {
    load_variant(decoder, "")
}

/// The fixture model's graphs of variant suffix `suffix` with `decoder`. Lookout's decoder starts
/// with the cache for one unsplit picture: split frames and clips make it grow.
fn load_variant(decoder: Decoder, suffix: &str) -> SmolVlm {
    load_with_context(
        decoder,
        suffix,
        MaxContext::Largest(PromptBounds::default()),
    )
}

fn load_with_context(decoder: Decoder, suffix: &str, max_context: MaxContext) -> SmolVlm {
    let library = runtime::resolve_library(
        std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .as_deref(),
    )
    .unwrap();
    let (model_dir, graphs) = match decoder {
        Decoder::Official => (fixture(), Graphs::Official),
        Decoder::Lookout => (smolvlm_built_fixture(), Graphs::Lookout),
    };
    let model = SmolVlm::load(&LoadOptions {
        model_dir,
        suffix: suffix.to_owned(),
        library,
        placement: Placement::Cpu,
        threads: 1,
        batch: 4,
        graphs,
        max_context,
    })
    .unwrap_or_else(|error| panic!("{error}"));
    // A fallback to the official decoder must not pass for Lookout's.
    assert_eq!(
        model.model().contains("_lookout_"),
        decoder == Decoder::Lookout,
        "{decoder:?} loaded {}",
        model.model()
    );
    model
}

fn frame_of(case: &Value) -> Frame {
    let bytes = std::fs::read(fixture().join(case["image"].as_str().unwrap())).unwrap();
    Frame {
        camera: Arc::from("cam"),
        seq: 1,
        captured_at: SystemTime::now(),
        capture_time: Duration::ZERO,
        image: decode::decode(&bytes).unwrap(),
    }
}

fn request(question: &str, kind: AnswerKind, split: bool, max_new_tokens: u32) -> Request {
    Request {
        origin: Origin::Task(Arc::from("t")),
        question: question.to_owned(),
        kind,
        split,
        max_new_tokens,
        permit: None,
        clip: None,
    }
}

/// The reference's greedy tokens for `case`, at most `limit` of them, and the probabilities of those
/// that are not stop tokens (what a text answer's confidence is made of).
fn reference_text(case: &Value, limit: usize, stops: &[u32]) -> (Vec<u32>, Vec<f64>) {
    let mut tokens: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
    tokens.truncate(limit);
    let probabilities: Vec<f64> = serde_json::from_value(case["token_probs"].clone()).unwrap();
    let kept = tokens
        .iter()
        .zip(&probabilities)
        .filter(|(token, _)| !stops.contains(token))
        .map(|(_, p)| *p)
        .collect();
    (tokens, kept)
}

/// Each case's text question alone, the case at `index` allowed `max_new(index)` tokens.
fn text_requests(cases: &[Value], max_new: impl Fn(usize) -> u32) -> Vec<Vec<Request>> {
    cases
        .iter()
        .enumerate()
        .map(|(index, case)| {
            let question = case["question"].as_str().unwrap();
            let split = case["split"].as_bool().unwrap();
            vec![request(question, AnswerKind::Text, split, max_new(index))]
        })
        .collect()
}

/// The jobs of `frames`, each with its requests.
fn jobs<'a>(frames: &'a [Frame], requests: &'a [Vec<Request>]) -> Vec<(&'a Frame, &'a [Request])> {
    frames
        .iter()
        .zip(requests)
        .map(|(frame, requests)| (frame, requests.as_slice()))
        .collect()
}

fn geometric_mean(probabilities: &[f64]) -> f64 {
    (probabilities.iter().map(|p| p.ln()).sum::<f64>() / probabilities.len() as f64).exp()
}

with_each_decoder!(
    greedy_tokens_and_confidences_equal_transformers,
    greedy_tokens_and_confidences_equal_transformers_with
);

fn greedy_tokens_and_confidences_equal_transformers_with(decoder: Decoder) {
    let mut model = load_fixture(decoder);
    let max_new = golden()["meta"]["max_new_tokens"].as_u64().unwrap() as u32;
    let stops: Vec<u32> = serde_json::from_value(golden()["meta"]["stop_ids"].clone()).unwrap();
    for case in cases() {
        let split = case["split"].as_bool().unwrap();
        let frame = frame_of(&case);
        // The text question and both option questions in one job: one image encoding, a shared prefix.
        let mut requests = vec![request(
            case["question"].as_str().unwrap(),
            AnswerKind::Text,
            split,
            max_new,
        )];
        for options in case["options"].as_array().unwrap() {
            let labels: Vec<String> = options["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|score| score["option"].as_str().unwrap().trim().to_owned())
                .collect();
            let kind = if labels == ["Yes", "No"] {
                AnswerKind::YesNo
            } else {
                AnswerKind::OneOf(labels)
            };
            requests.push(request(
                options["question"].as_str().unwrap(),
                kind,
                split,
                max_new,
            ));
        }
        let answers = model.answer(&frame, &requests);
        // Each question alone too: a single prompt is prefilled whole, with no prefix shared.
        let alone: Vec<_> = requests
            .iter()
            .map(|request| {
                model
                    .answer(&frame, std::slice::from_ref(request))
                    .remove(0)
            })
            .collect();

        let text = answers[0]
            .as_ref()
            .unwrap_or_else(|error| panic!("{}: {error}", label(&case)));
        let (expected, kept) = reference_text(&case, usize::MAX, &stops);
        assert_eq!(text.tokens, expected, "{}", label(&case));
        let confidence = geometric_mean(&kept);
        assert!(
            (text.confidence - confidence).abs() < 1e-4,
            "{}: {} vs {confidence}",
            label(&case),
            text.confidence
        );
        let lowest = kept.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(
            (text.min_probability.unwrap() - lowest).abs() < 1e-4,
            "{}",
            label(&case)
        );

        let text_alone = alone[0].as_ref().unwrap();
        assert_eq!(text_alone.tokens, expected, "{} alone", label(&case));
        assert!((text_alone.confidence - confidence).abs() < 1e-4);

        let option_answers = answers[1..].iter().chain(&alone[1..]);
        let option_cases = case["options"].as_array().unwrap().iter().cycle();
        for (answer, options) in option_answers.zip(option_cases) {
            let answer = answer
                .as_ref()
                .unwrap_or_else(|error| panic!("{}: {error}", label(&case)));
            let scores = options["scores"].as_array().unwrap();
            let best = scores
                .iter()
                .max_by(|a, b| {
                    a["logprob"]
                        .as_f64()
                        .unwrap()
                        .total_cmp(&b["logprob"].as_f64().unwrap())
                })
                .unwrap();
            let best_label = best["option"].as_str().unwrap().trim().to_lowercase();
            assert_eq!(
                answer.text.to_lowercase(),
                best_label,
                "{}: {}",
                label(&case),
                options["question"]
            );
            let share = best["share"].as_f64().unwrap();
            assert!(
                (answer.confidence - share).abs() < 1e-4,
                "{}: {} vs {share}",
                label(&case),
                answer.confidence
            );
        }
    }
}

/// A cache the config fixed (`vision.max_context`) does not grow: a prompt that does not fit is refused
/// with the setting's name, and the model goes on answering those that fit; an answer that would
/// overflow it stops where the cache is full.
#[test]
fn a_fixed_context_refuses_longer_prompts_and_keeps_answering() {
    let mut model = load_with_context(Decoder::Lookout, "", MaxContext::Positions(120));
    let case = &cases()[1];
    let frame = frame_of(case);
    let split = request("What is this?", AnswerKind::Text, true, 4);
    let error = model.answer(&frame, &[split]).remove(0).unwrap_err();
    assert!(error.to_string().contains("vision.max_context"), "{error}");
    let unsplit = request("What is this?", AnswerKind::Text, false, 1000);
    let answer = model.answer(&frame, &[unsplit]).remove(0).unwrap();
    let prompt = fixture_prompter()
        .1
        .ids("What is this?", 0, 0)
        .unwrap()
        .len();
    assert!(
        answer.tokens.len() <= 120 + 1 - prompt,
        "{} tokens after a prompt of {prompt}",
        answer.tokens.len()
    );
}

with_each_decoder!(
    /// Text answers decoded together must be exactly the answers each gets alone, the reference's: every
    /// golden case is its own job (frames of different sizes and splitting modes, so prompts of different
    /// lengths share a batch and are padded), answered in one call, batches of 4; answers of different
    /// lengths (a shorter `max_new_tokens` in turn) leave the batch at different steps.
    text_answers_decoded_together_equal_the_reference,
    text_answers_decoded_together_equal_the_reference_with
);

fn text_answers_decoded_together_equal_the_reference_with(decoder: Decoder) {
    let mut model = load_fixture(decoder);
    let max_new = golden()["meta"]["max_new_tokens"].as_u64().unwrap() as u32;
    let stops: Vec<u32> = serde_json::from_value(golden()["meta"]["stop_ids"].clone()).unwrap();
    let cases = cases();
    let frames: Vec<Frame> = cases.iter().map(frame_of).collect();
    let requests = text_requests(&cases, |index| max_new - (index % 3) as u32);
    let answers = model.answer_jobs(&jobs(&frames, &requests));
    assert_eq!(answers.len(), cases.len());
    let mut left_early = 0;
    for ((case, requests), answers) in cases.iter().zip(&requests).zip(answers) {
        let text = answers[0]
            .as_ref()
            .unwrap_or_else(|error| panic!("{}: {error}", label(case)));
        let wanted = requests[0].max_new_tokens as usize;
        let (expected, kept) = reference_text(case, wanted, &stops);
        left_early += usize::from(expected.len() < max_new as usize);
        assert_eq!(text.tokens, expected, "{}", label(case));
        let confidence = geometric_mean(&kept);
        assert!(
            (text.confidence - confidence).abs() < 1e-4,
            "{}: {} vs {confidence}",
            label(case),
            text.confidence
        );
    }
    assert!(left_early > 0, "no answer left its batch early");
}

/// The fp16 variant (half-precision vision encoder, Lookout's fp16 decoder: its cache in half precision,
/// parked, copied into batch rows and stepped in place) on every golden text case, alone and decoded
/// together: the greedy tokens are transformers' (fp32), the confidences within FP16_CONFIDENCE.
#[test]
fn the_fp16_variant_answers_as_transformers_alone_and_together() {
    // Measured on 2026-12-06: tokens all equal, confidences within 5.6e-8.
    const FP16_CONFIDENCE: f64 = 1e-6;
    let mut model = load_variant(Decoder::Lookout, "_fp16");
    assert!(
        model.model().ends_with("_lookout_fp16"),
        "{}",
        model.model()
    );
    let max_new = golden()["meta"]["max_new_tokens"].as_u64().unwrap() as u32;
    let stops: Vec<u32> = serde_json::from_value(golden()["meta"]["stop_ids"].clone()).unwrap();
    let cases = cases();
    let frames: Vec<Frame> = cases.iter().map(frame_of).collect();
    let requests = text_requests(&cases, |_| max_new);
    let jobs = jobs(&frames, &requests);
    let together = model.answer_jobs(&jobs);
    let mut worst = 0f64;
    for ((case, (frame, requests)), together) in cases.iter().zip(&jobs).zip(together) {
        let alone = model.answer(frame, requests).remove(0);
        let (expected, kept) = reference_text(case, usize::MAX, &stops);
        let confidence = geometric_mean(&kept);
        for (how, answer) in [
            ("alone", alone),
            ("together", together.into_iter().next().unwrap()),
        ] {
            let answer = answer.unwrap_or_else(|error| panic!("{} {how}: {error}", label(case)));
            assert_eq!(answer.tokens, expected, "{} {how}", label(case));
            worst = worst.max((answer.confidence - confidence).abs());
        }
    }
    println!("fp16: confidences within {worst:.2e} of transformers'");
    assert!(worst < FP16_CONFIDENCE, "{worst}");
}

with_each_decoder!(
    /// The vision worker takes the jobs of several cameras that are waiting together and answers them in one
    /// call: every request must get its own answer, under its own camera and task, equal to the answer
    /// the same model gives the job alone.
    waiting_jobs_of_several_cameras_are_answered_together_as_each_alone,
    waiting_jobs_are_answered_together_as_each_alone_with
);

fn waiting_jobs_are_answered_together_as_each_alone_with(decoder: Decoder) {
    let cases = cases();
    let jobs = || -> Vec<Job> {
        cases
            .iter()
            .take(6)
            .enumerate()
            .map(|(index, case)| {
                let frame = Frame {
                    camera: Arc::from(format!("cam{index}")),
                    ..frame_of(case)
                };
                let split = case["split"].as_bool().unwrap();
                let question = case["question"].as_str().unwrap();
                let mut text = request(question, AnswerKind::Text, split, 4 + index as u32);
                text.origin = Origin::Task(Arc::from(format!("describe{index}")));
                let mut yes_no = request("Is anything here?", AnswerKind::YesNo, split, 1);
                yes_no.origin = Origin::Task(Arc::from(format!("check{index}")));
                Job {
                    frame: Arc::new(frame),
                    requests: vec![text, yes_no],
                }
            })
            .collect()
    };
    let mut alone = load_fixture(decoder);
    let expected: Vec<Vec<LocalAnswer>> = jobs()
        .iter()
        .map(|job| {
            alone
                .answer(&job.frame, &job.requests)
                .into_iter()
                .map(Result::unwrap)
                .collect()
        })
        .collect();
    let stats = Arc::new(Stats::default());
    let queue = JobQueue::new(stats.clone());
    for job in jobs() {
        assert!(matches!(queue.push(job), Pushed::Queued));
    }
    queue.close();
    let (sender, mut receiver) = tokio::sync::mpsc::channel(64);
    let model = Box::new(load_fixture(decoder));
    assert_eq!(model.batch(), 4);
    vision::run_blocking(model, queue, sender, stats, Replacement::default());
    for (job, expected) in jobs().iter().zip(expected) {
        for (request, expected) in job.requests.iter().zip(expected) {
            let output = receiver.try_recv().expect("an output per request");
            let Outcome::Answered(answer) = output.outcome else {
                panic!("{}: not answered", job.frame.camera);
            };
            assert_eq!(answer.camera, job.frame.camera);
            assert!(matches!(&request.origin, Origin::Task(task) if **task == *answer.task));
            assert_eq!(answer.tokens, expected.tokens, "{}", answer.task);
            assert_eq!(answer.answer, expected.text, "{}", answer.task);
            assert!((answer.confidence.unwrap() - expected.confidence).abs() < 1e-6);
        }
    }
    assert!(receiver.try_recv().is_err(), "one output per request");
}

/// Clips (SmolVLM2's video input): for clips of 1, 2, 8 and 64 frames taken at different times, the video
/// prompt's ids must equal the reference's exactly and the greedy tokens must be the reference's, with the
/// same confidence. Golden data: models/fixtures/make_video_golden.py, whose frames are `frame` below.
mod video {
    use image::RgbImage;
    use lookout::message::{Clip, ClipFrame};
    use lookout::vision::preprocess::{clip_frame, preprocess_clip};

    use super::*;

    fn golden() -> Value {
        serde_json::from_str(&std::fs::read_to_string(fixture().join("golden_video.json")).unwrap())
            .unwrap()
    }

    /// Frame `k` of every golden clip: the 512x512 pattern make_video_golden.py computes.
    fn frame(k: u32) -> RgbImage {
        RgbImage::from_fn(512, 512, |x, y| {
            image::Rgb([
                ((x * (k % 7 + 1) + y) % 256) as u8,
                ((y * (k % 5 + 2) + 3 * x) % 256) as u8,
                (((x ^ y) + 40 * k) % 256) as u8,
            ])
        })
    }

    /// The case's clip, each frame resized as a camera's clip buffer keeps it.
    fn clip_of(case: &Value) -> Clip {
        let settings = ModelSpec::read(&fixture()).unwrap().image;
        let times: Vec<f64> = serde_json::from_value(case["times"].clone()).unwrap();
        Clip {
            frames: times
                .iter()
                .zip(0..)
                .map(|(offset_s, k)| ClipFrame {
                    image: Arc::new(clip_frame(&frame(k), &settings, 0)),
                    offset_s: *offset_s,
                })
                .collect(),
            duration_s: case["duration"].as_f64().unwrap(),
        }
    }

    #[test]
    fn clip_frames_are_resized_as_the_reference_resizes_them() {
        let spec = ModelSpec::read(&fixture()).unwrap();
        let cases = golden()["cases"].as_array().unwrap().clone();
        let longest = cases.last().unwrap();
        let clip = clip_of(longest);
        let images: Vec<&RgbImage> = clip.frames.iter().map(|frame| &*frame.image).collect();
        let pixels = preprocess_clip(&images, &spec.image, 0, Vec::new());
        assert_eq!(pixels.images, 64);
        let plane = 512 * 512;
        let expected: Vec<[f64; 3]> =
            serde_json::from_value(longest["channel_means"].clone()).unwrap();
        for (index, (square, means)) in pixels.values.chunks(3 * plane).zip(&expected).enumerate() {
            for (channel, mean) in means.iter().enumerate() {
                let values = &square[channel * plane..(channel + 1) * plane];
                let ours = values.iter().map(|v| f64::from(*v)).sum::<f64>() / plane as f64;
                assert!(
                    (ours - mean).abs() <= MAX_MEAN_DIFF,
                    "frame {index} channel {channel}: {ours} vs {mean}"
                );
            }
        }
    }

    fn label(case: &Value) -> String {
        format!("{} frames", case["times"].as_array().unwrap().len())
    }

    #[test]
    fn video_prompt_ids_equal_the_reference_exactly() {
        let (_, prompter) = fixture_prompter();
        let cases = golden()["cases"].as_array().unwrap().clone();
        assert_eq!(
            cases.iter().map(label).collect::<Vec<_>>(),
            ["1 frames", "2 frames", "8 frames", "64 frames"]
        );
        for case in cases {
            let clip = clip_of(&case);
            let offsets: Vec<f64> = clip.frames.iter().map(|frame| frame.offset_s).collect();
            let ids = prompter
                .video_ids(
                    case["question"].as_str().unwrap(),
                    &offsets,
                    clip.duration_s,
                )
                .unwrap();
            let expected: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
            assert_eq!(
                ids,
                expected,
                "{}: {:?}\nvs the reference's\n{:?}",
                label(&case),
                prompter.video_text(
                    case["question"].as_str().unwrap(),
                    &offsets,
                    clip.duration_s
                ),
                case["prompt"]
            );
        }
    }

    with_each_decoder!(
        greedy_tokens_about_a_clip_equal_transformers,
        greedy_tokens_about_a_clip_equal_transformers_with
    );

    fn greedy_tokens_about_a_clip_equal_transformers_with(decoder: Decoder) {
        let mut model = load_fixture(decoder);
        let max_new = golden()["meta"]["max_new_tokens"].as_u64().unwrap() as u32;
        let stops: Vec<u32> = serde_json::from_value(golden()["meta"]["stop_ids"].clone()).unwrap();
        for case in golden()["cases"].as_array().unwrap() {
            let request = request(
                case["question"].as_str().unwrap(),
                AnswerKind::Text,
                false,
                max_new,
            );
            let answer = model
                .answer_clip(&clip_of(case), &[request])
                .pop()
                .unwrap()
                .unwrap_or_else(|error| panic!("{}: {error}", label(case)));
            let (expected, kept) = reference_text(case, usize::MAX, &stops);
            assert_eq!(answer.tokens, expected, "{}", label(case));
            // Confidence is the geometric mean of the chosen tokens' probabilities, stop token excluded.
            let confidence = geometric_mean(&kept);
            assert!(
                (answer.confidence - confidence).abs() < 1e-4,
                "{}: {} vs {confidence}",
                label(case),
                answer.confidence
            );
        }
    }

    #[test]
    fn a_clip_of_no_frames_or_too_many_is_refused_with_the_limit() {
        let mut model = load_fixture(Decoder::Official);
        let request = request("What happened?", AnswerKind::YesNo, false, 4);
        let small = Arc::new(RgbImage::new(8, 8));
        for count in [0, 65] {
            let clip = Clip {
                frames: (0..count)
                    .map(|k| ClipFrame {
                        image: small.clone(),
                        offset_s: f64::from(k),
                    })
                    .collect(),
                duration_s: f64::from(count),
            };
            let error = model
                .answer_clip(&clip, std::slice::from_ref(&request))
                .pop()
                .unwrap()
                .unwrap_err();
            assert!(
                error.to_string().contains("1 to 64 frames"),
                "{count}: {error}"
            );
        }
    }
}
