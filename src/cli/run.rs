//! `lookout run`: check the whole config before any device, socket or model is opened (exit 64), fetch
//! the default model on a first run, load the model (exit 69), then run the daemon until a signal stops
//! it.

use std::path::{Path, PathBuf};

use lookout::config::ConfigOrigin;

use lookout::env::Env;
use lookout::models::{self, DEFAULT_MODEL};
use lookout::vision::PromptBounds;
use lookout::{app, errors, service, vision};

use super::models::{build, download, hub_endpoint};
use super::{Exit, Failure, Outcome, with_variant};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The model variant (default: vision.variant, `auto`); kept across reloads.
    #[arg(long)]
    variant: Option<String>,
}

pub fn run(args: Args, env: Env) -> Outcome {
    let env = with_variant(env, args.variant.as_deref());
    let origin = ConfigOrigin::choose(args.config, &env);
    service::init_logging(&env);
    // Everything is checked before any device, socket or model is opened.
    let (config, layers) = origin
        .load_effective(&env)
        .map_err(|error| Failure::new(Exit::Usage, error))?;
    if let Some(variant) = models::default_variant_to_fetch(&config.vision) {
        fetch_default_model(&config.vision.model_dir, variant, &env)?;
    }
    // Until READY=1, `systemctl status` says what start-up is doing.
    service::notify::Notifier::from_env(&env).status("Loading the model");
    let analyser = vision::load(&config.vision, PromptBounds::of(&config.tasks))
        .map_err(|error| Failure::new(Exit::Unavailable, error))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|error| {
        Failure::new(
            Exit::Failed,
            format!("cannot start the async runtime: {error}"),
        )
    })?;
    let ran = runtime.block_on(app::run_until_signalled(
        origin,
        env,
        (config, layers),
        analyser,
    ));
    // Said here, while the runtime lives: dropping it waits for blocking work still running (a model
    // run on a hung accelerator), and the reason must not wait with it.
    ran.map_err(|error| {
        let error = format!("{:#}", anyhow::Error::from(error));
        eprintln!("lookout: {}", errors::redact(&error));
        Failure::reported(Exit::Failed)
    })
}

/// A first `lookout run` with the default model's folder missing (or holding no complete variant, as
/// after an interrupted fetch): fetches it as `models fetch` does, then the daemon runs. Not under a
/// service manager (systemd sets INVOCATION_ID): a box there must not download 850 MB unasked, or
/// retry it at every restart, so it says how to fetch and stops. Offline, it says what is missing and
/// how to run without it. Either way the exit is 69, which the unit does not restart.
fn fetch_default_model(dir: &Path, variant: &str, env: &Env) -> Outcome {
    let shown = std::env::current_dir().map_or_else(|_| dir.to_owned(), |cwd| cwd.join(dir));
    if env.get("INVOCATION_ID").is_some() {
        return Err(Failure::new(
            Exit::Unavailable,
            format!(
                "the model is missing: {} holds no SmolVLM2 export. Started by a service manager, \
                 Lookout does not download it by itself (about 850 MB): fetch it once as the service's user, \
                 `sudo -u lookout lookout models fetch --variant {variant} --dir {}` (or `deploy/install.sh \
                 --with-model`), then start the service again.",
                shown.display(),
                shown.display()
            ),
        ));
    }
    tracing::info!(dir = %shown.display(), variant = %variant, hub = hub_endpoint(env), "The model folder is missing; fetching the default model first.");
    let suffix = vision::variant_suffix(variant).unwrap_or_default();
    let precision = vision::built_precision(variant);
    match download(
        env,
        DEFAULT_MODEL.to_owned(),
        &suffix,
        precision.is_some(),
        "main".to_owned(),
        dir,
    ) {
        Ok(files) => {
            tracing::info!(dir = %shown.display(), files, "Model fetched, checksums verified.");
            match precision {
                Some(precision) => build(dir, precision),
                None => Ok(()),
            }
        }
        Err(error) => Err(Failure::new(
            Exit::Unavailable,
            format!(
                "the model is missing: {} holds no SmolVLM2 export, and fetching it from the \
                 Hugging Face Hub ({}) failed: {error:#}. `lookout models fetch` needs the Hub (about 850 MB); \
                 run `lookout run` again where it is reachable (the download resumes), or copy a fetched \
                 folder there. To try Lookout without it, run on the small test model in the source tree: \
                 `LOOKOUT_MODEL_DIR=models/fixtures/smolvlm-micro lookout run` (its answers are noise, by \
                 construction).",
                shown.display(),
                hub_endpoint(env)
            ),
        )),
    }
}
