//! The `lookout` command: parse, load and validate the config, then hand over to the library.
//! Exit codes: 0 done, 1 failed while running, 64 bad config or usage, 65 bad input data (an image that
//! does not decode), 66 nothing to read (no dataset folder, or no row an export's filter matches: a
//! script can tell "nothing yet" from a failure), 69 no usable model or runtime, 73 cannot create the
//! output (an export's destination is taken).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use lookout::config::{self, ConfigOrigin, Env, remote};
use lookout::dataset::{self, DatasetError};
use lookout::gate::{self, AnswerKind, Origin, Request};
use lookout::models::{self, DEFAULT_MODEL, fetch, manifest};
use lookout::service;
use lookout::source::{self, Frame};
use lookout::vision;

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 64;
const EXIT_DATA: u8 = 65;
const EXIT_NO_INPUT: u8 = 66;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_CANT_CREATE: u8 = 73;

#[derive(Parser)]
#[command(
    name = "lookout",
    version,
    about = "Watches cameras, asks a local vision model about them, publishes the answers over MQTT."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (without a config file: the embedded default, or LOOKOUT_CONFIG).
    Run {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The model variant (default: vision.variant, `auto`); kept across reloads.
        #[arg(long)]
        variant: Option<String>,
    },
    /// Answer one question about one image, or about a clip of images, with the local model, with its
    /// confidence and timings.
    Ask {
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
    },
    /// Time each stage of an answer on this box (median of several runs).
    Bench {
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
    },
    /// Download or check official SmolVLM2 exports.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Check or print configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// The escalations the cloud answered, kept as a fine-tuning dataset (`[dataset]` in the config).
    Dataset {
        #[command(subcommand)]
        action: DatasetAction,
    },
}

#[derive(Subcommand)]
enum DatasetAction {
    /// What the dataset folder holds: rows, images, bytes, time span, rows per task and camera.
    Stats {
        #[command(flatten)]
        folder: DatasetFolder,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy the dataset, or the rows you choose, to a new folder that `datasets` loads as an
    /// imagefolder; consistent even while the daemon is saving rows.
    Export {
        /// The new folder (it must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Only rows captured at or after this: a time (2026-11-01T08:00:00Z), a date (2026-11-01,
        /// UTC) or an age (36h, 7d).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<SystemTime>,
        /// Only rows of this task.
        #[arg(long, value_name = "NAME")]
        task: Option<String>,
        #[command(flatten)]
        folder: DatasetFolder,
    },
}

/// Which dataset folder: `--dir`, else the config's `dataset.dir` (default `<state_dir>/dataset`).
#[derive(clap::Args)]
struct DatasetFolder {
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Download a model from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN), resuming and verifying each file.
    Fetch {
        #[arg(default_value = DEFAULT_MODEL)]
        name: String,
        /// fp32, fp16, int8 (the config's default), uint8, quantized, q4, q4f16 or bnb4.
        #[arg(long, default_value = "int8")]
        variant: String,
        #[arg(long, default_value = "main")]
        revision: String,
        /// Where to put it (default: models/<name without the owner>).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Check a fetched model's files against the checksums recorded when it was fetched.
    Verify {
        #[arg(
            value_name = "DIR",
            default_value = "models/SmolVLM2-256M-Video-Instruct"
        )]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a config file and list every problem (exit 64 when there is any).
    Check { file: PathBuf },
    /// Print the embedded default configuration, documented field by field.
    Example,
    /// Print the effective configuration (the file, the remote layer pushed over MQTT, environment
    /// overrides), one field per line with where its value comes from; secrets redacted.
    Show {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Make an ed25519 key pair for signing config pushes: the secret key goes to FILE (mode 0600),
    /// the public key is printed for the boxes' `[remote] public_key`.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a config (TOML, or JSON when the file ends in .json) as a push for `config/desired`,
    /// printed as one line of JSON.
    Sign {
        /// The secret key file from `config keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Must be higher than the version the boxes run.
        #[arg(long)]
        version: u64,
        /// A JSON merge patch over the boxes' current remote layer, not a whole new layer.
        #[arg(long)]
        patch: bool,
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut env = Env::from_process();
    // `--variant` overrides vision.variant as LOOKOUT_VARIANT does, so that it is validated with the
    // config and a reload keeps it.
    if let Command::Run {
        variant: Some(variant),
        ..
    }
    | Command::Ask {
        variant: Some(variant),
        ..
    }
    | Command::Bench {
        variant: Some(variant),
        ..
    } = &cli.command
    {
        env = env.with("LOOKOUT_VARIANT", variant);
    }
    match cli.command {
        Command::Config {
            action: ConfigAction::Example,
        } => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => match ConfigOrigin::File(file.clone()).load(&env) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Config {
            action: ConfigAction::Show { config },
        } => show_config(&ConfigOrigin::choose(config, &env), &env),
        Command::Config {
            action: ConfigAction::Keygen { out },
        } => keygen(&out),
        Command::Config {
            action:
                ConfigAction::Sign {
                    key,
                    version,
                    patch,
                    file,
                },
        } => sign(&key, version, patch, &file),
        Command::Run { config, .. } => run(ConfigOrigin::choose(config, &env), env),
        Command::Dataset {
            action: DatasetAction::Stats { folder, json },
        } => match dataset_dir(folder, &env) {
            Ok(dir) => dataset_stats(&dir, json),
            Err(code) => code,
        },
        Command::Dataset {
            action:
                DatasetAction::Export {
                    to,
                    since,
                    task,
                    folder,
                },
        } => match dataset_dir(folder, &env) {
            Ok(dir) => dataset_export(&dir, &to, &dataset::Filter { since, task }),
            Err(code) => code,
        },
        Command::Bench {
            model,
            variant: _,
            image,
            split,
            runs,
            max_new_tokens,
            threads,
            question,
            json,
            config,
        } => {
            let mut loaded = match ConfigOrigin::choose(config, &env).load(&env) {
                Ok(loaded) => loaded,
                Err(error) => {
                    eprintln!("lookout: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let vision = &mut loaded.vision;
            if let Some(model) = model {
                vision.model_dir = model;
            }
            if let Some(threads) = threads {
                vision.threads = threads;
            }
            bench(
                &loaded.vision,
                image.as_deref(),
                &question,
                split,
                runs,
                max_new_tokens,
                json,
            )
        }
        Command::Models {
            action:
                ModelsAction::Fetch {
                    name,
                    variant,
                    revision,
                    dir,
                },
        } => fetch_model(&env, name, &variant, revision, dir),
        Command::Models {
            action: ModelsAction::Verify { dir },
        } => match manifest::verify(&dir) {
            Ok(problems) if problems.is_empty() => {
                println!("{}: every file matches its checksum", dir.display());
                ExitCode::SUCCESS
            }
            Ok(problems) => {
                for problem in problems {
                    eprintln!("lookout: {problem}");
                }
                ExitCode::from(EXIT_FAILED)
            }
            Err(error) => {
                eprintln!("lookout: {error}");
                ExitCode::from(EXIT_FAILED)
            }
        },
        Command::Ask {
            image,
            video_frames,
            frame_interval,
            model,
            variant: _,
            kind,
            split,
            no_split: _,
            max_new_tokens,
            json,
            config,
            mut inputs,
        } => {
            let question = inputs.pop().unwrap_or_default();
            let input = match (image, video_frames) {
                (Some(image), _) if inputs.is_empty() => AskInput::Image(image),
                (None, true) => AskInput::Clip {
                    paths: inputs.into_iter().map(PathBuf::from).collect(),
                    interval_s: frame_interval,
                },
                _ => {
                    eprintln!(
                        "lookout: give one question after --image FILE, or frames and then the question after --video-frames"
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let request = Request {
                origin: Origin::Ask {
                    id: "cli".to_owned(),
                    task: None,
                },
                question,
                kind,
                split,
                max_new_tokens,
                permit: None,
                clip: None,
            };
            ask(
                ConfigOrigin::choose(config, &env),
                &env,
                model,
                &input,
                request,
                json,
            )
        }
    }
}

/// The bytes of the decoder graph of the configured variant (its weights, external data included).
fn decoder_weight_bytes(vision: &vision::VisionConfig) -> u64 {
    let suffix = vision
        .resolve_variant()
        .ok()
        .and_then(vision::variant_suffix)
        .unwrap_or_default();
    let graph = vision
        .model_dir
        .join("onnx")
        .join(format!("decoder_model_merged{suffix}.onnx"));
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
    size(&graph) + size(&graph.with_extension("onnx_data"))
}

/// `lookout bench`: loads the model, answers repeatedly, prints the per-stage medians.
fn bench(
    vision: &vision::VisionConfig,
    image: Option<&Path>,
    question: &str,
    split: bool,
    runs: usize,
    max_new_tokens: u32,
    json: bool,
) -> ExitCode {
    let pixels = match image {
        Some(path) => match std::fs::read(path)
            .map_err(|error| error.to_string())
            .and_then(|bytes| source::decode::decode(&bytes).map_err(|error| error.to_string()))
        {
            Ok(pixels) => pixels,
            Err(error) => {
                eprintln!("lookout: {}: {error}", path.display());
                return ExitCode::from(EXIT_DATA);
            }
        },
        None => image::RgbImage::from_fn(640, 480, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
        }),
    };
    let started = std::time::Instant::now();
    let mut analyser = match vision::load(vision) {
        Ok(analyser) => analyser,
        Err(error) => {
            eprintln!("lookout: {error}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let frame = vision::bench::frame(pixels);
    let setup = vision::bench::Setup {
        load_ms,
        image: vision::model::ModelSpec::read(&vision.model_dir)
            .map_or(vision::preprocess::ImageSettings::SMOLVLM2, |spec| {
                spec.image
            }),
        decoder_weight_bytes: decoder_weight_bytes(vision),
        threads: vision.threads,
    };
    match vision::bench::run(
        analyser.as_mut(),
        &setup,
        &frame,
        question,
        split,
        max_new_tokens,
        runs,
    ) {
        Ok(report) if json => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("reports serialize")
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!(
                "model {} on a {}x{} frame, split {}, {} runs (medians):",
                report.model, report.width, report.height, report.split, report.runs
            );
            println!("  load           {:>9.1} ms", report.load_ms);
            println!("  preprocess     {:>9.1} ms", report.preprocess_ms);
            println!(
                "                 {:>9.1} ms alone, {} in a row ({} resampling)",
                report.preprocess_alone_ms,
                vision::bench::PREPROCESS_ALONE_RUNS,
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
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("lookout: {error}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `lookout models fetch`: every file of the variant, with progress on stderr.
fn fetch_model(
    env: &Env,
    name: String,
    variant: &str,
    revision: String,
    dir: Option<PathBuf>,
) -> ExitCode {
    let Some(suffix) = vision::variant_suffix(variant) else {
        eprintln!(
            "lookout: unknown variant {variant:?}; expected one of {}",
            vision::VARIANTS.join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let dir = dir.unwrap_or_else(|| models::default_dir(&name));
    match download(env, name, &suffix, revision, &dir) {
        Ok(files) => {
            println!("{files} files in {}, checksums verified", dir.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("lookout: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// The Hub `models fetch` and `run` download from: HF_ENDPOINT, else huggingface.co.
fn hub_endpoint(env: &Env) -> &str {
    env.get("HF_ENDPOINT").unwrap_or("https://huggingface.co")
}

/// Downloads every file of one variant (graph suffix `suffix`) of `repo` into `dir`, resuming and
/// verifying each, with progress on stderr; the number of files.
fn download(
    env: &Env,
    repo: String,
    suffix: &str,
    revision: String,
    dir: &Path,
) -> anyhow::Result<usize> {
    let fetch = fetch::Fetch {
        endpoint: hub_endpoint(env).to_owned(),
        repo,
        revision,
        token: env.get("HF_TOKEN").map(str::to_owned),
    };
    let files = fetch::variant_files(suffix);
    let mut shown = (String::new(), u64::MAX);
    let mut progress = |path: &str, done: u64, total: Option<u64>| {
        let percent = total
            .filter(|total| *total > 0)
            .map_or(0, |total| done * 100 / total);
        if (path, percent) != (shown.0.as_str(), shown.1) {
            eprint!(
                "\r{path}: {percent:>3}% of {:.1} MB",
                total.unwrap_or(done) as f64 / 1e6
            );
            if total.is_some_and(|total| done >= total) {
                eprintln!();
            }
            shown = (path.to_owned(), percent);
        }
    };
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|error| anyhow::anyhow!("cannot start the async runtime: {error}"))?;
    let fetched = runtime.block_on(fetch.run(&files, dir, &mut progress));
    if fetched.is_err() && !shown.0.is_empty() {
        // Ends the progress line the failure interrupted.
        eprintln!();
    }
    Ok(fetched?.len())
}

/// `lookout run` with the default model configured and its folder missing (or holding no complete
/// variant, as after an interrupted fetch): fetches it as `models fetch` does, then the daemon runs.
/// Not under a service manager (systemd sets INVOCATION_ID): a box there must not download 350 MB
/// unasked, or retry it at every restart, so it says how to fetch and stops. Offline, it says what is
/// missing and how to run without it. Either way the exit is 69, which the unit does not restart.
fn fetch_missing_default_model(vision: &vision::VisionConfig, env: &Env) -> Result<(), ExitCode> {
    let Some(variant) = models::default_variant_to_fetch(vision) else {
        return Ok(());
    };
    let dir = &vision.model_dir;
    let shown = std::env::current_dir().map_or_else(|_| dir.clone(), |cwd| cwd.join(dir));
    if env.get("INVOCATION_ID").is_some() {
        eprintln!(
            "lookout: the model is missing: {} holds no SmolVLM2 export. Started by a service manager, \
             Lookout does not download it by itself (about 350 MB): fetch it once as the service's user, \
             `sudo -u lookout lookout models fetch --variant {variant} --dir {}` (or `deploy/install.sh \
             --with-model`), then start the service again.",
            shown.display(),
            shown.display()
        );
        return Err(ExitCode::from(EXIT_UNAVAILABLE));
    }
    tracing::info!(dir = %shown.display(), variant = %variant, hub = hub_endpoint(env), "The model folder is missing; fetching the default model first.");
    let suffix = vision::variant_suffix(variant).unwrap_or_default();
    match download(
        env,
        DEFAULT_MODEL.to_owned(),
        &suffix,
        "main".to_owned(),
        dir,
    ) {
        Ok(files) => {
            tracing::info!(dir = %shown.display(), files, "Model fetched, checksums verified.");
            Ok(())
        }
        Err(error) => {
            eprintln!(
                "lookout: the model is missing: {} holds no SmolVLM2 export, and fetching it from the \
                 Hugging Face Hub ({}) failed: {error:#}. `lookout models fetch` needs the Hub (about 350 MB); \
                 run `lookout run` again where it is reachable (the download resumes), or copy a fetched \
                 folder there. To try Lookout without it, run on the small test model in the source tree: \
                 `LOOKOUT_MODEL_DIR=models/fixtures/smolvlm-micro lookout run` (its answers are noise, by \
                 construction).",
                shown.display(),
                hub_endpoint(env)
            );
            Err(ExitCode::from(EXIT_UNAVAILABLE))
        }
    }
}

/// What `lookout ask` looks at.
enum AskInput {
    Image(PathBuf),
    /// Frame files or folders of them, `interval_s` seconds apart.
    Clip {
        paths: Vec<PathBuf>,
        interval_s: f64,
    },
}

/// What `lookout ask` decoded: one frame, or a clip and the file of each of its frames.
enum Visual {
    Frame(Frame),
    Clip(vision::Clip, Vec<PathBuf>),
}

/// Reads an image file; the error names the file.
fn read_image(path: &Path) -> Result<image::RgbImage, String> {
    std::fs::read(path)
        .map_err(|error| error.to_string())
        .and_then(|bytes| source::decode::decode(&bytes).map_err(|error| error.to_string()))
        .map_err(|error| format!("{}: {error}", path.display()))
}

/// The frame files of a clip: files as given, folders as their PNG and JPEG files in name order.
fn clip_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries =
            std::fs::read_dir(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let mut images: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|file| {
                file.is_file()
                    && file
                        .extension()
                        .and_then(|ext| ext.to_str())
                        .is_some_and(|ext| {
                            ["png", "jpg", "jpeg"].contains(&ext.to_ascii_lowercase().as_str())
                        })
            })
            .collect();
        if images.is_empty() {
            return Err(format!(
                "{}: no PNG or JPEG files in this folder",
                path.display()
            ));
        }
        images.sort();
        files.extend(images);
    }
    Ok(files)
}

/// Decodes what `ask` looks at. Usage errors (a clip's size, its interval) come before reading files.
fn read_visual(input: &AskInput) -> Result<Visual, (u8, String)> {
    match input {
        AskInput::Image(path) => {
            let image = read_image(path).map_err(|error| (EXIT_DATA, error))?;
            Ok(Visual::Frame(Frame {
                camera: Arc::from("cli"),
                seq: 1,
                captured_at: SystemTime::now(),
                capture_time: Duration::ZERO,
                image,
            }))
        }
        AskInput::Clip { paths, interval_s } => {
            if !(interval_s.is_finite() && *interval_s > 0.0) {
                return Err((
                    EXIT_CONFIG,
                    format!(
                        "--frame-interval must be a positive number of seconds, not {interval_s}"
                    ),
                ));
            }
            let files = clip_files(paths).map_err(|error| (EXIT_DATA, error))?;
            if files.is_empty() || files.len() > vision::MAX_CLIP_FRAMES {
                return Err((
                    EXIT_CONFIG,
                    format!(
                        "a clip has 1 to {} frames, given before the question; these paths hold {}",
                        vision::MAX_CLIP_FRAMES,
                        files.len()
                    ),
                ));
            }
            let frames = files
                .iter()
                .enumerate()
                .map(|(index, file)| {
                    read_image(file).map(|image| vision::ClipFrame {
                        image: Arc::new(image),
                        offset_s: index as f64 * interval_s,
                    })
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|error| (EXIT_DATA, error))?;
            let duration_s = frames.len() as f64 * interval_s;
            Ok(Visual::Clip(vision::Clip { frames, duration_s }, files))
        }
    }
}

/// `lookout ask`: one answer, printed as text or JSON.
fn ask(
    origin: ConfigOrigin,
    env: &Env,
    model: Option<PathBuf>,
    input: &AskInput,
    request: Request,
    json: bool,
) -> ExitCode {
    let mut config = match origin.load(env) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lookout: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(problem) =
        gate::check_question(&request.question).and_then(|()| request.kind.check())
    {
        eprintln!("lookout: {problem}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let visual = match read_visual(input) {
        Ok(visual) => visual,
        Err((code, error)) => {
            eprintln!("lookout: {error}");
            return ExitCode::from(code);
        }
    };
    if let Some(model) = model {
        config.vision.model_dir = model;
    }
    service::init_logging(env);
    let mut analyser = match vision::load(&config.vision) {
        Ok(analyser) => analyser,
        Err(error) => {
            eprintln!("lookout: {error}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let requests = std::slice::from_ref(&request);
    // The answer, and what it is about for --json ("image" or "clip").
    let (result, (subject, looked_at)) = match &visual {
        Visual::Frame(frame) => (
            analyser.answer(frame, requests).pop(),
            (
                "image",
                serde_json::json!({ "width": frame.image.width(), "height": frame.image.height() }),
            ),
        ),
        Visual::Clip(clip, files) => {
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
            (
                analyser.answer_clip(clip, requests).pop(),
                (
                    "clip",
                    serde_json::json!({ "duration_s": clip.duration_s, "frames": frames }),
                ),
            )
        }
    };
    match result {
        Some(Ok(answer)) if json => {
            let mut printed = serde_json::json!({
                "answer": answer.text,
                "confidence": answer.confidence,
                "confidence_min": answer.min_probability,
                "tokens": answer.tokens,
                "timings_ms": answer.timings,
                "model": analyser.model(),
            });
            printed[subject] = looked_at;
            println!("{printed}");
            ExitCode::SUCCESS
        }
        Some(Ok(answer)) => {
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
            ExitCode::SUCCESS
        }
        Some(Err(error)) => {
            eprintln!("lookout: {error}");
            ExitCode::from(EXIT_FAILED)
        }
        None => ExitCode::from(EXIT_FAILED),
    }
}

/// `--since`: a time, a date (midnight UTC) or an age.
fn parse_since(text: &str) -> Result<SystemTime, String> {
    let expected =
        "expected a time (2026-11-01T08:00:00Z), a date (2026-11-01) or an age (36h, 7d)";
    if text.starts_with(|c: char| c.is_ascii_digit())
        && let Ok(age) = humantime::parse_duration(text)
    {
        return SystemTime::now()
            .checked_sub(age)
            .ok_or_else(|| expected.to_owned());
    }
    let time = if text.len() == "2026-11-01".len() {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    humantime::parse_rfc3339_weak(&time).map_err(|_| expected.to_owned())
}

/// The dataset folder a `lookout dataset` command works on.
fn dataset_dir(folder: DatasetFolder, env: &Env) -> Result<PathBuf, ExitCode> {
    if let Some(dir) = folder.dir {
        return Ok(dir);
    }
    match ConfigOrigin::choose(folder.config, env).load_effective(env) {
        Ok((config, _)) => Ok(config.dataset_settings().dir),
        Err(error) => {
            eprintln!("lookout: {error}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// The exit code for a dataset error.
fn dataset_failure(error: &DatasetError) -> ExitCode {
    eprintln!("lookout: {error}");
    ExitCode::from(match error {
        DatasetError::NotADataset { .. } | DatasetError::NothingToExport { .. } => EXIT_NO_INPUT,
        DatasetError::DestinationTaken { .. } => EXIT_CANT_CREATE,
        DatasetError::Io { .. } | DatasetError::InUse { .. } => EXIT_FAILED,
    })
}

/// `lookout dataset stats`.
fn dataset_stats(dir: &Path, json: bool) -> ExitCode {
    let summary = match dataset::summary(dir) {
        Ok(summary) => summary,
        Err(error) => return dataset_failure(&error),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("summaries serialize")
        );
        return ExitCode::SUCCESS;
    }
    let counts = |counts: &std::collections::BTreeMap<String, usize>| {
        let listed: Vec<String> = counts
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        listed.join(", ")
    };
    println!(
        "{}: {} rows, {} images, {:.1} MB",
        summary.dir.display(),
        summary.rows,
        summary.images,
        summary.bytes as f64 / 1e6
    );
    if let (Some(oldest), Some(newest)) = (&summary.oldest, &summary.newest) {
        println!("  captured from {oldest} to {newest}");
        println!("  rows by task: {}", counts(&summary.by_task));
        println!("  rows by camera: {}", counts(&summary.by_camera));
    }
    if summary.unreadable_lines > 0 {
        println!(
            "  {} damaged line(s) in metadata.jsonl: the daemon sets them aside at its next start",
            summary.unreadable_lines
        );
    }
    ExitCode::SUCCESS
}

/// `lookout dataset export`.
fn dataset_export(dir: &Path, to: &Path, filter: &dataset::Filter) -> ExitCode {
    match dataset::export(dir, to, filter) {
        Ok(report) => {
            println!(
                "{}: {} rows, {} images, {:.1} MB (load it with datasets.load_dataset(\"imagefolder\", data_dir=...))",
                report.to.display(),
                report.rows,
                report.images,
                report.bytes as f64 / 1e6
            );
            ExitCode::SUCCESS
        }
        Err(error) => dataset_failure(&error),
    }
}

fn show_config(origin: &ConfigOrigin, env: &Env) -> ExitCode {
    let (_, layers) = match origin.load_effective(env) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("lookout: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!("# remote layer version {}", layers.remote.version);
    for field in config::field_origins(&layers, env) {
        println!("{} = {}  # {}", field.path, field.value, field.origin);
    }
    println!("# every other field: the built-in default (`lookout config example`)");
    ExitCode::SUCCESS
}

fn keygen(out: &Path) -> ExitCode {
    use std::io::Write;
    let (secret, public) = remote::generate_key();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut file| file.write_all(format!("{secret}\n").as_bytes()));
    if let Err(error) = written {
        eprintln!("lookout: cannot write {}: {error}", out.display());
        return ExitCode::from(EXIT_FAILED);
    }
    println!(
        "# the secret key is in {}; give each box this line:",
        out.display()
    );
    println!("[remote]\npublic_key = \"{public}\"");
    ExitCode::SUCCESS
}

fn sign(key: &Path, version: u64, patch: bool, file: &Path) -> ExitCode {
    let key = match remote::read_signing_key(key) {
        Ok(key) => key,
        Err(error) => {
            eprintln!("lookout: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("lookout: cannot read {}: {error}", file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let document = if file
        .extension()
        .is_some_and(|extension| extension == "json")
    {
        serde_json::from_str(&text).map_err(|error| error.to_string())
    } else {
        config::local_json(&text).map_err(|error| error.to_string())
    };
    let Ok(serde_json::Value::Object(config)) = document.as_ref() else {
        let problem = document
            .err()
            .unwrap_or_else(|| "not a JSON object".to_owned());
        eprintln!("lookout: {}: {problem}", file.display());
        return ExitCode::from(EXIT_CONFIG);
    };
    let kind = if patch {
        remote::PushKind::MergePatch
    } else {
        remote::PushKind::Full
    };
    println!(
        "{}",
        remote::signed_push(&key, version, kind, config.clone())
    );
    ExitCode::SUCCESS
}

fn run(origin: ConfigOrigin, env: Env) -> ExitCode {
    service::init_logging(&env);
    // Everything is checked before any device, socket or model is opened.
    let (config, layers) = match origin.load_effective(&env) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("lookout: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(code) = fetch_missing_default_model(&config.vision, &env) {
        return code;
    }
    // Until READY=1, `systemctl status` says what start-up is doing.
    service::notify::Notifier::from_env(&env).status("Loading the model");
    let analyser = match vision::load(&config.vision) {
        Ok(analyser) => analyser,
        Err(error) => {
            eprintln!("lookout: {error}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lookout: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(service::run_until_signalled(
        origin,
        env,
        (config, layers),
        analyser,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let error = format!("{:#}", anyhow::Error::from(error));
            eprintln!("lookout: {}", lookout::errors::redact(&error));
            ExitCode::from(EXIT_FAILED)
        }
    }
}
