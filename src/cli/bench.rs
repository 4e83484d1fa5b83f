//! `lookout bench`: loads the model, has `vision::bench` time each stage of an answer, and prints the
//! medians as a table or JSON.

use std::path::PathBuf;

use lookout::config::ConfigOrigin;

use lookout::env::Env;
use lookout::source::picture;
use lookout::vision::bench::{self, Report, Setup};
use lookout::vision::{self, PromptBounds};

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
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: u32,
    /// Threads per model run (0: one per core).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "Can you describe this image?")]
    question: String,
    #[arg(long)]
    json: bool,
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
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
    let pixels = match &args.image {
        Some(path) => picture::read_image(path).map_err(|error| Failure::new(Exit::Data, error))?,
        None => bench::synthetic_image(),
    };
    let prompts = PromptBounds {
        split: args.split,
        clip_frames: 0,
        question_chars: args.question.chars().count(),
        max_new_tokens: args.max_new_tokens,
    };
    let started = std::time::Instant::now();
    let mut analyser =
        vision::load(vision, prompts).map_err(|error| Failure::new(Exit::Unavailable, error))?;
    let setup = Setup::new(vision, started.elapsed().as_secs_f64() * 1000.0);
    let report = bench::run(
        analyser.as_mut(),
        &setup,
        &bench::frame(pixels),
        &args.question,
        args.split,
        args.max_new_tokens,
        args.runs,
    )
    .map_err(|error| Failure::new(Exit::Failed, error))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("reports serialize")
        );
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The report as a table of medians, one stage a line.
fn print_table(report: &Report) {
    println!(
        "model {} on a {}x{} frame, split {}, {} runs (medians):",
        report.model, report.width, report.height, report.split, report.runs
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
        "  bandwidth      {:>9.1} GB/s read; decode at {:.0}% of its bound ({:.0} MB of weights per token)",
        report.memory_read_gb_per_s,
        report.decode_bandwidth_fraction * 100.0,
        report.decoder_weight_bytes as f64 / 1e6
    );
    println!(
        "  3 yes/no       {:>9.2} x the time of one (same frame, one job)",
        report.three_yes_no_ratio
    );
    println!(
        "  3 text (32)    {:>9.2} x the time of one (same frame, one job)",
        report.three_text_ratio
    );
    println!(
        "  2 cameras      {:>9.2} x the time of answering them in turn (a text question each)",
        report.two_cameras_ratio
    );
    println!("  peak RSS       {:>9.1} MB", report.peak_rss_mb);
}
