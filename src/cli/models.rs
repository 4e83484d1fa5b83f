//! `lookout models`: fetch an official SmolVLM2 export from the Hub with progress on stderr, and check
//! a fetched folder against its manifest. `lookout run` fetches a missing default model the same way.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use lookout::env::Env;
use lookout::models::build::{CHECKPOINT_FILE, Precision};
use lookout::models::{self, DEFAULT_MODEL, fetch, manifest};
use lookout::vision;

use super::{Exit, Failure, Outcome};

#[derive(Subcommand)]
pub enum Action {
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
        /// Fetch the official graphs only: no checkpoint, and no decoder of Lookout's own built from it.
        #[arg(long)]
        no_build: bool,
    },
    /// Build Lookout's own text decoder from the folder's checkpoint (model.safetensors, config.json)
    /// into its onnx/ folder.
    Build {
        #[arg(
            value_name = "DIR",
            default_value = "models/SmolVLM2-256M-Video-Instruct"
        )]
        dir: PathBuf,
        /// fp32, fp16, int8 or int4 (block-wise, 128 values a block).
        #[arg(long, default_value = "int8")]
        precision: String,
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

pub fn run(action: Action, env: &Env) -> Outcome {
    match action {
        Action::Fetch {
            name,
            variant,
            revision,
            dir,
            no_build,
        } => {
            let suffix = vision::variant_suffix(&variant).ok_or_else(|| {
                Failure::new(
                    Exit::Usage,
                    format!(
                        "unknown variant {variant:?}; expected one of {}",
                        vision::VARIANTS.join(", ")
                    ),
                )
            })?;
            let dir = dir.unwrap_or_else(|| models::default_dir(&name));
            let precision = vision::built_precision(&variant).filter(|_| !no_build);
            let files = download(env, name, &suffix, precision.is_some(), revision, &dir)
                .map_err(|error| Failure::new(Exit::Failed, format!("{error:#}")))?;
            println!("{files} files in {}, checksums verified", dir.display());
            match precision {
                Some(precision) => build(&dir, precision),
                None => Ok(()),
            }
        }
        Action::Build { dir, precision } => build(&dir, &precision),
        Action::Verify { dir } => verify(&dir),
    }
}

/// `lookout models build` (and `models fetch` after its download): one line saying what was written.
pub fn build(dir: &Path, precision: &str) -> Outcome {
    let precision = Precision::parse(precision).ok_or_else(|| {
        let known: Vec<&str> = Precision::ALL.iter().map(|p| p.name()).collect();
        Failure::new(
            Exit::Usage,
            format!(
                "unknown precision {precision:?}; expected one of {}",
                known.join(", ")
            ),
        )
    })?;
    let built = models::build::build(dir, precision)
        .map_err(|error| Failure::new(Exit::Failed, error.to_string()))?;
    println!(
        "{}: {} nodes, {:.1} MB with its weights, built in {:.1} s",
        built.graph.display(),
        built.nodes,
        built.bytes as f64 / 1e6,
        built.seconds
    );
    Ok(())
}

/// `lookout models verify`: every problem on a line of its own.
fn verify(dir: &Path) -> Outcome {
    let problems = manifest::verify(dir).map_err(|error| Failure::new(Exit::Failed, error))?;
    if problems.is_empty() {
        println!("{}: every file matches its checksum", dir.display());
        return Ok(());
    }
    for problem in problems {
        eprintln!("lookout: {problem}");
    }
    Err(Failure::reported(Exit::Failed))
}

/// The Hub `models fetch` and `run` download from: HF_ENDPOINT, else huggingface.co.
pub fn hub_endpoint(env: &Env) -> &str {
    env.get("HF_ENDPOINT").unwrap_or("https://huggingface.co")
}

/// Downloads every file of one variant (graph suffix `suffix`) of `repo` into `dir`, and its checkpoint
/// (`with_checkpoint`, to build Lookout's decoder from), resuming and verifying each, with progress on
/// stderr; the number of files.
pub fn download(
    env: &Env,
    repo: String,
    suffix: &str,
    with_checkpoint: bool,
    revision: String,
    dir: &Path,
) -> anyhow::Result<usize> {
    let fetch = fetch::Fetch {
        endpoint: hub_endpoint(env).to_owned(),
        repo,
        revision,
        token: env.get("HF_TOKEN").map(str::to_owned),
    };
    let mut files = fetch::variant_files(suffix);
    if with_checkpoint {
        files.push(CHECKPOINT_FILE.to_owned());
    }
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
