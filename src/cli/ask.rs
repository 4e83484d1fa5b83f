//! `lookout ask`: one question about one image, or about a clip of images, answered by the local model
//! and printed as text or JSON. Usage mistakes exit 64 before any file is read or the model loaded;
//! a file that is not an image exits 65.

use std::path::PathBuf;

use lookout::config::ConfigOrigin;

use lookout::env::Env;

use lookout::message::{self, AnswerKind, MAX_CLIP_FRAMES, Request};
use lookout::service;
use lookout::source::picture::{self, Picture};
use lookout::vision::{self, AnalyseError, Analyser, LocalAnswer, PromptBounds};

use super::{Exit, Failure, Outcome, with_variant};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "FILE", required_unless_present = "video_frames")]
    image: Option<PathBuf>,
    /// Take the paths before the question as one clip, in order: image files, or folders whose PNG
    /// and JPEG files are taken in name order (at most 64 frames).
    #[arg(long, conflicts_with_all = ["image", "split"])]
    video_frames: bool,
    /// Seconds between the clip's frames; the prompt gives each frame's time (SmolVLM2 samples
    /// videos at one frame per second).
    #[arg(long, default_value_t = 1.0, requires = "video_frames")]
    frame_interval: f64,
    /// A model folder (default: vision.model_dir of the config, or LOOKOUT_MODEL_DIR).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The model variant (default: vision.variant, `auto`: the fastest the folder holds).
    #[arg(long)]
    variant: Option<String>,
    /// text, yes_no, or one_of:label,label,...
    #[arg(long, default_value = "text", value_parser = str::parse::<AnswerKind>)]
    kind: AnswerKind,
    /// Cut the image into tiles (slower, more detail).
    #[arg(long, overrides_with = "no_split")]
    split: bool,
    #[arg(long = "no-split")]
    no_split: bool,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The question; with --video-frames, the clip's frames come first.
    #[arg(required = true, value_name = "[FRAMES...] QUESTION")]
    inputs: Vec<String>,
}

/// What `lookout ask` looks at, before any file is read.
enum Input {
    Image(PathBuf),
    /// Frame files or folders of them, `interval_s` seconds apart.
    Clip {
        paths: Vec<PathBuf>,
        interval_s: f64,
    },
}

pub fn run(args: Args, env: Env) -> Outcome {
    let env = with_variant(env, args.variant.as_deref());
    let mut inputs = args.inputs;
    let question = inputs.pop().unwrap_or_default();
    let input = match (args.image, args.video_frames) {
        (Some(image), _) if inputs.is_empty() => Input::Image(image),
        (None, true) => Input::Clip {
            paths: inputs.into_iter().map(PathBuf::from).collect(),
            interval_s: args.frame_interval,
        },
        _ => {
            return Err(Failure::new(
                Exit::Usage,
                "give one question after --image FILE, or frames and then the question after --video-frames",
            ));
        }
    };
    let request = Request::asked_once(question, args.kind, args.split, args.max_new_tokens);
    let mut config = ConfigOrigin::choose(args.config, &env)
        .load(&env)
        .map_err(|error| Failure::new(Exit::Usage, error))?;
    message::check_question(&request.question)
        .and_then(|()| request.kind.check())
        .map_err(|problem| Failure::new(Exit::Usage, problem))?;
    let picture = read(&input)?;
    if let Some(model) = args.model {
        config.vision.model_dir = model;
    }
    service::init_logging(&env);
    let mut analyser = vision::load(&config.vision, PromptBounds::of_request(&request))
        .map_err(|error| Failure::new(Exit::Unavailable, error))?;
    let answer = match answer(&picture, analyser.as_mut(), &request) {
        Some(Ok(answer)) => answer,
        Some(Err(error)) => return Err(Failure::new(Exit::Failed, error)),
        None => return Err(Failure::reported(Exit::Failed)),
    };
    if args.json {
        print_json(&answer, analyser.as_ref(), &picture);
    } else {
        print_text(&answer);
    }
    Ok(())
}

/// The model's answer to `request` about `picture` (`None` if the analyser gave none).
fn answer(
    picture: &Picture,
    analyser: &mut dyn Analyser,
    request: &Request,
) -> Option<Result<LocalAnswer, AnalyseError>> {
    let requests = std::slice::from_ref(request);
    match picture {
        Picture::Frame(frame) => analyser.answer(frame, requests).pop(),
        Picture::Clip(clip, _) => analyser.answer_clip(clip, requests).pop(),
    }
}

/// Reads what `ask` looks at. Usage errors (a clip's size, its interval) come before reading files.
fn read(input: &Input) -> Result<Picture, Failure> {
    let unreadable = |error| Failure::new(Exit::Data, error);
    match input {
        Input::Image(path) => Picture::image(path).map_err(unreadable),
        Input::Clip { paths, interval_s } => {
            if !(interval_s.is_finite() && *interval_s > 0.0) {
                return Err(Failure::new(
                    Exit::Usage,
                    format!(
                        "--frame-interval must be a positive number of seconds, not {interval_s}"
                    ),
                ));
            }
            let files = picture::clip_files(paths).map_err(unreadable)?;
            if files.is_empty() || files.len() > MAX_CLIP_FRAMES {
                return Err(Failure::new(
                    Exit::Usage,
                    format!(
                        "a clip has 1 to {} frames, given before the question; these paths hold {}",
                        MAX_CLIP_FRAMES,
                        files.len()
                    ),
                ));
            }
            Picture::clip(files, *interval_s).map_err(unreadable)
        }
    }
}

/// `--json`: the answer with its confidence, tokens, timings, model and where it ran, and what it is
/// about (`image`: its size, or `clip`: its duration and each frame's file, time and size).
fn print_json(answer: &LocalAnswer, analyser: &dyn Analyser, picture: &Picture) {
    let mut printed = serde_json::json!({
        "answer": answer.text,
        "confidence": answer.confidence,
        "confidence_min": answer.min_probability,
        "tokens": answer.tokens,
        "timings_ms": answer.timings,
        "model": analyser.model(),
        "runs_on": analyser.runs_on(),
    });
    match picture {
        Picture::Frame(frame) => {
            printed["image"] =
                serde_json::json!({ "width": frame.image.width(), "height": frame.image.height() });
        }
        Picture::Clip(clip, files) => {
            let frames: Vec<serde_json::Value> = clip
                .frames
                .iter()
                .zip(files)
                .map(|(frame, file)| {
                    serde_json::json!({
                        "file": file,
                        "time_s": frame.offset_s,
                        "width": frame.image.width(),
                        "height": frame.image.height(),
                    })
                })
                .collect();
            printed["clip"] =
                serde_json::json!({ "duration_s": clip.duration_s, "frames": frames });
        }
    }
    println!("{printed}");
}

/// The answer, its confidence and its timings, a line each.
fn print_text(answer: &LocalAnswer) {
    let timings = &answer.timings;
    println!("{}", answer.text);
    match answer.min_probability {
        Some(min) => println!(
            "confidence {:.3} (lowest token {min:.3})",
            answer.confidence
        ),
        None => println!("confidence {:.3}", answer.confidence),
    }
    println!(
        "timings: preprocess {:.1} ms, vision {:.1} ms, prefill {:.1} ms, decode {:.1} ms ({} tokens)",
        timings.preprocess,
        timings.vision,
        timings.prefill,
        timings.decode,
        answer.tokens.len()
    );
}
