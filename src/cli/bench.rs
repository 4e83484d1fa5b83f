//! `lookout bench`: loads the model, has `vision::bench` time each stage of an answer, and prints the
//! medians as a table or JSON.

use std::path::PathBuf;

use lookout::config::ConfigOrigin;

use lookout::env::Env;
use lookout::message::MAX_CLIP_FRAMES;
use lookout::source::picture;
use lookout::vision::bench::{self, Case, Report, Setup};
use lookout::vision::{self, DeviceChoice, Graphs, PromptBounds};

use super::{Exit, Failure, Outcome, with_variant};

#[derive(clap::Args)]
pub struct Args {
    /// A model folder (default: vision.model_dir of the config, or LOOKOUT_MODEL_DIR).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    #[arg(long)]
    variant: Option<String>,
    /// The picture (default: a synthetic 640x480 frame).
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    #[arg(long)]
    split: bool,
    /// Answer about a clip of this many copies of the picture, one second apart (SmolVLM2's video
    /// prompt), instead of the picture itself.
    #[arg(long, default_value_t = 0, value_name = "N")]
    clip_frames: usize,
    /// The decoder: `lookout` (built from the checkpoint, when the folder holds one) or `official`
    /// (default: vision.graphs).
    #[arg(long, value_name = "GRAPHS")]
    graphs: Option<String>,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: u32,
    /// Threads per model run (0: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the model runs: auto, cpu, gpu or npu (default: vision.device).
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    #[arg(long, default_value = "Can you describe this image?")]
    question: String,
    #[arg(long)]
    json: bool,
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Also time this variant of the model, its answers alternating with the benched one's in this
    /// process, and report the ratios (default: the benched variant).
    #[arg(long, value_name = "VARIANT")]
    against_variant: Option<String>,
    /// Also time this decoder (`lookout` or `official`) the same way (default: the benched one's).
    #[arg(long, value_name = "GRAPHS")]
    against_graphs: Option<String>,
    /// Also time the model in this folder the same way, e.g. one whose decoder another version of
    /// Lookout built (default: the benched folder).
    #[arg(long, value_name = "DIR")]
    against_model: Option<PathBuf>,
}

/// `--graphs` and `--against-graphs`.
fn graphs(name: &str) -> Result<Graphs, Failure> {
    match name {
        "lookout" => Ok(Graphs::Lookout),
        "official" => Ok(Graphs::Official),
        other => Err(Failure::new(
            Exit::Usage,
            format!("unknown graphs {other:?}; expected lookout or official"),
        )),
    }
}

pub fn run(args: Args, env: Env) -> Outcome {
    let env = with_variant(env, args.variant.as_deref());
    let mut config = ConfigOrigin::choose(args.config, &env)
        .load(&env)
        .map_err(|error| Failure::new(Exit::Usage, error))?;
    let vision = &mut config.vision;
    if let Some(model) = args.model {
        vision.model_dir = model;
    }
    if let Some(threads) = args.threads {
        vision.threads = threads;
    }
    if let Some(device) = &args.device {
        vision.device = match device.as_str() {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "gpu" => DeviceChoice::Gpu,
            "npu" => DeviceChoice::Npu,
            other => {
                return Err(Failure::new(
                    Exit::Usage,
                    format!("unknown device {other:?}; expected auto, cpu, gpu or npu"),
                ));
            }
        };
    }
    if let Some(name) = &args.graphs {
        vision.graphs = graphs(name)?;
    }
    // The setup to compare with, checked before anything is timed.
    let against = if args.against_variant.is_some()
        || args.against_graphs.is_some()
        || args.against_model.is_some()
    {
        let mut other = vision.clone();
        if let Some(model) = args.against_model {
            other.model_dir = model;
        }
        if let Some(variant) = &args.against_variant {
            other.variant = variant.clone();
        }
        if let Some(name) = &args.against_graphs {
            other.graphs = graphs(name)?;
        }
        Some(other)
    } else {
        None
    };
    if args.clip_frames > MAX_CLIP_FRAMES {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "--clip-frames is at most {MAX_CLIP_FRAMES}, not {}",
                args.clip_frames
            ),
        ));
    }
    let pixels = match &args.image {
        Some(path) => picture::read_image(path).map_err(|error| Failure::new(Exit::Data, error))?,
        None => bench::synthetic_image(),
    };
    let prompts = PromptBounds {
        split: args.split,
        clip_frames: args.clip_frames,
        question_chars: args.question.chars().count(),
        max_new_tokens: args.max_new_tokens,
    };
    let (mut analyser, setup) = loaded(vision, prompts)?;
    let frame = bench::frame(pixels);
    let case = Case {
        frame: &frame,
        question: &args.question,
        split: args.split,
        clip_frames: args.clip_frames,
        max_new_tokens: args.max_new_tokens,
        runs: args.runs,
    };
    let mut report = bench::run(analyser.as_mut(), &setup, &case)
        .map_err(|error| Failure::new(Exit::Failed, error))?;
    // Loaded after the run, so that its memory is not in the run's peak. The report is printed
    // even when the comparison fails.
    let compared = against
        .map(|other| compare(analyser.as_mut(), &other, prompts, &case))
        .transpose();
    if let Ok(comparison) = &compared {
        report.against = comparison.clone();
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("reports serialize")
        );
    } else {
        print_table(&report);
    }
    compared.map(|_| ())
}

/// The model `config` describes, loaded, with its setup (the load timed).
fn loaded(
    config: &vision::VisionConfig,
    prompts: PromptBounds,
) -> Result<(Box<dyn vision::Analyser>, Setup), Failure> {
    let started = std::time::Instant::now();
    let analyser =
        vision::load(config, prompts).map_err(|error| Failure::new(Exit::Unavailable, error))?;
    let setup = Setup::new(
        config,
        analyser.as_ref(),
        started.elapsed().as_secs_f64() * 1000.0,
    );
    Ok((analyser, setup))
}

/// `analyser` against the model `other` describes, loaded for it.
fn compare(
    analyser: &mut dyn vision::Analyser,
    other: &vision::VisionConfig,
    prompts: PromptBounds,
    case: &Case,
) -> Result<bench::Comparison, Failure> {
    let (mut other_analyser, setup) = loaded(other, prompts)?;
    bench::compare(analyser, other_analyser.as_mut(), &setup.decoder, case)
        .map_err(|error| Failure::new(Exit::Failed, error))
}

/// The report as a table of medians, one stage a line.
fn print_table(report: &Report) {
    let picture = match report.clip_frames {
        0 => "frame".to_owned(),
        frames => format!("frame as a clip of {frames} frames"),
    };
    println!(
        "model {} ({} decoder, on {}) on a {}x{} {picture}, split {}, {} runs (medians), prompt of {} tokens:",
        report.model,
        report.graphs,
        report.runs_on,
        report.width,
        report.height,
        report.split,
        report.runs,
        report.prompt_tokens
    );
    println!("  load           {:>9.1} ms", report.load_ms);
    println!("  preprocess     {:>9.1} ms", report.preprocess_ms);
    println!(
        "                 {:>9.1} ms alone, {} in a row ({} resampling)",
        report.preprocess_alone_ms,
        bench::PREPROCESS_ALONE_RUNS,
        report.resampling_kernel
    );
    println!("  vision         {:>9.1} ms", report.vision_ms);
    println!("  prefill        {:>9.1} ms", report.prefill_ms);
    println!(
        "  first token    {:>9.1} ms (vision + prefill)",
        report.ttft_ms
    );
    println!(
        "  decode         {:>9.1} tokens/s ({} tokens)",
        report.decode_tokens_per_s, report.tokens
    );
    println!("  whole answer   {:>9.1} ms", report.answer_ms);
    println!(
        "  CPU time       {:>9.1} ms per answer",
        report.cpu_ms_per_answer
    );
    println!(
        "  bandwidth      {:>9.1} GB/s read; decode at {:.0}% of its bound ({:.0} MB a token: {:.0} MB of weights and the cache)",
        report.memory_read_gb_per_s,
        report.decode_bandwidth_fraction * 100.0,
        report.decode_bytes_per_token as f64 / 1e6,
        report.decoder_weight_bytes as f64 / 1e6
    );
    let ratios = [
        (
            "3 yes/no    ",
            report.three_yes_no_ratio,
            "the time of one (same frame, one job)",
        ),
        (
            "3 text (32) ",
            report.three_text_ratio,
            "the time of one (same frame, one job)",
        ),
        (
            "2 cameras   ",
            report.two_cameras_ratio,
            "the time of answering them in turn (a text question each)",
        ),
    ];
    for (name, ratio, against) in ratios {
        if let Some(ratio) = ratio {
            println!("  {name}   {ratio:>9.2} x {against}");
        }
    }
    println!(
        "  peak RSS       {:>9.1} MB answering one question at a time, {:.1} MB with the several-questions runs",
        report.answer_peak_rss_mb, report.peak_rss_mb
    );
    if let Some(against) = &report.against {
        println!(
            "  against {} ({} decoder), {} answers each, alternating in this process: decode {:.2} x, first token {:.2} x, prefill {:.2} x as fast",
            against.model,
            against.graphs,
            against.rounds,
            against.decode_ratio,
            against.ttft_ratio,
            against.prefill_ratio
        );
    }
}
