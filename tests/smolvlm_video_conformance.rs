//! Clips (SmolVLM2's video input) against transformers, the reference: on the committed random-weight
//! fixture, for clips of 1, 2, 8 and 64 frames taken at different times, Lookout's video prompt ids must
//! equal the reference's exactly and its greedy tokens must be the reference's, with the same
//! probabilities. Golden data: models/fixtures/make_video_golden.py, whose frames are the formula below.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use lookout::gate::{AnswerKind, Origin, Request};
use lookout::vision::model::ModelSpec;
use lookout::vision::preprocess::{clip_frame, preprocess_clip};
use lookout::vision::prompt::Prompter;
use lookout::vision::{Analyser, Clip, ClipFrame, LoadOptions, Provider, SmolVlm, runtime};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro")
}

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

/// Channel means may differ this much: the reference resizes 512 -> 2048 -> 512 with torchvision's
/// Lanczos, Lookout with Pillow's fixed-point scheme (see the image conformance test).
const MAX_MEAN_DIFF: f64 = 0.0005;

#[test]
fn clip_frames_are_resized_as_the_reference_resizes_them() {
    let spec = ModelSpec::read(&fixture()).unwrap();
    let cases = golden()["cases"].as_array().unwrap().clone();
    let longest = cases.last().unwrap();
    let clip = clip_of(longest);
    let images: Vec<&RgbImage> = clip.frames.iter().map(|frame| &*frame.image).collect();
    let pixels = preprocess_clip(&images, &spec.image, 0);
    assert_eq!(pixels.images, 64);
    let plane = 512 * 512;
    let expected: Vec<[f64; 3]> = serde_json::from_value(longest["channel_means"].clone()).unwrap();
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

/// The fixture's fp32 graphs (the variant the reference is) on the runtime `cargo test` points
/// ORT_DYLIB_PATH at.
fn load_fixture() -> SmolVlm {
    let library = runtime::resolve_library(
        std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .as_deref(),
    )
    .unwrap();
    SmolVlm::load(&LoadOptions {
        model_dir: fixture(),
        suffix: String::new(),
        library,
        providers: vec![Provider::Cpu],
        threads: 1,
    })
    .unwrap_or_else(|error| panic!("{error}"))
}

fn label(case: &Value) -> String {
    format!("{} frames", case["times"].as_array().unwrap().len())
}

#[test]
fn video_prompt_ids_equal_the_reference_exactly() {
    let spec = ModelSpec::read(&fixture()).unwrap();
    let prompter = Prompter::load(
        &fixture(),
        spec.image_token_id,
        &spec.eos_ids,
        spec.image_seq_len,
    )
    .unwrap();
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

#[test]
fn greedy_tokens_about_a_clip_equal_transformers() {
    let mut model = load_fixture();
    let max_new = golden()["meta"]["max_new_tokens"].as_u64().unwrap() as u32;
    let stops: Vec<u32> = serde_json::from_value(golden()["meta"]["stop_ids"].clone()).unwrap();
    for case in golden()["cases"].as_array().unwrap() {
        let request = Request {
            origin: Origin::Task(Arc::from("t")),
            question: case["question"].as_str().unwrap().to_owned(),
            kind: AnswerKind::Text,
            split: false,
            max_new_tokens: max_new,
            permit: None,
            clip: None,
        };
        let answer = model
            .answer_clip(&clip_of(case), &[request])
            .pop()
            .unwrap()
            .unwrap_or_else(|error| panic!("{}: {error}", label(case)));
        let expected: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        assert_eq!(answer.tokens, expected, "{}", label(case));
        // Confidence is the geometric mean of the chosen tokens' probabilities, stop token excluded.
        let probabilities: Vec<f64> = serde_json::from_value(case["token_probs"].clone()).unwrap();
        let kept: Vec<f64> = expected
            .iter()
            .zip(&probabilities)
            .filter(|(token, _)| !stops.contains(token))
            .map(|(_, p)| *p)
            .collect();
        let geometric_mean = (kept.iter().map(|p| p.ln()).sum::<f64>() / kept.len() as f64).exp();
        assert!(
            (answer.confidence - geometric_mean).abs() < 1e-4,
            "{}: {} vs {geometric_mean}",
            label(case),
            answer.confidence
        );
    }
}

#[test]
fn a_clip_of_no_frames_or_too_many_is_refused_with_the_limit() {
    let mut model = load_fixture();
    let request = Request {
        origin: Origin::Task(Arc::from("t")),
        question: "What happened?".to_owned(),
        kind: AnswerKind::YesNo,
        split: false,
        max_new_tokens: 4,
        permit: None,
        clip: None,
    };
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
