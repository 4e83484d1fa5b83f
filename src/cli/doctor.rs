//! `lookout doctor`: what this box offers the model. The runtime library and its build, the plugin
//! provider libraries registered, the devices it sees and the provider of each, which accelerator
//! providers it has, where the configured model lands (the device `vision.device` chooses, as `lookout
//! run` would choose it, and for each graph its provider and the nodes that fall back to the CPU), and
//! whether the systemd unit's sandbox lets the box's accelerator nodes through, with the lines to add
//! when it does not. It answers "can this box use its GPU or NPU, and if not, why"; a device asked for
//! that cannot be used exits 69, as `lookout run` does.

use std::path::{Path, PathBuf};

use clap::Parser;
use lookout::config::ConfigOrigin;
use lookout::env::Env;
use lookout::service::devices::{installed_unit, missing_device_allows};
use lookout::vision::device::accelerator_nodes;
use lookout::vision::{self, LoadError, PromptBounds, runtime};

use super::{Exit, Failure, Outcome};

#[derive(Debug, Parser)]
pub struct Args {
    /// The config whose vision.runtime_library to load (default: as `lookout run` chooses).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: Args, env: Env) -> Outcome {
    let config = ConfigOrigin::choose(args.config, &env)
        .load(&env)
        .map_err(|error| Failure::new(Exit::Usage, error))?;
    let unavailable = |error: runtime::RuntimeError| Failure::new(Exit::Unavailable, error);
    let library =
        runtime::resolve_library(config.vision.runtime_library.as_deref()).map_err(unavailable)?;
    let environment = runtime::environment(&library).map_err(unavailable)?;
    let plugins = runtime::provider_libraries(&library, &config.vision.provider_libraries);
    runtime::register_provider_libraries(&environment, &plugins).map_err(unavailable)?;
    // The versioned file the library's path links to names its version; the build string its commit.
    let file = std::fs::canonicalize(&library).unwrap_or_else(|_| library.clone());
    println!("runtime: {} ({})", library.display(), file.display());
    println!(
        "build: {}",
        ort::info().trim_start_matches("ORT Build Info: ")
    );
    let plugins: Vec<String> = plugins
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    println!(
        "provider libraries: {}",
        if plugins.is_empty() {
            "none".to_owned()
        } else {
            plugins.join(", ")
        }
    );
    println!("devices it sees:");
    for device in runtime::devices(&environment) {
        println!("  {} ({}): {}", device.kind, device.vendor, device.provider);
    }
    let (present, absent): (Vec<_>, Vec<_>) = runtime::accelerator_providers()
        .into_iter()
        .partition(|(_, available)| *available);
    let names = |providers: Vec<(&str, bool)>| {
        let names: Vec<&str> = providers.into_iter().map(|(name, _)| name).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    println!("accelerator providers in this runtime: {}", names(present));
    println!("not in it: {}", names(absent));
    sandbox(Path::new("/dev"));
    placement(&config)
}

/// Where the configured model lands: the device chosen, and for each graph its provider and how many
/// nodes fall back to the CPU. A model folder that is not there is said; a device that cannot be used
/// fails as `lookout run` does.
fn placement(config: &lookout::config::Config) -> Outcome {
    println!("vision.device: {}", config.vision.device);
    let analyser = match vision::load(&config.vision, PromptBounds::of(&config.tasks)) {
        Ok(analyser) => analyser,
        Err(error @ (LoadError::Device(_) | LoadError::Runtime(_))) => {
            return Err(Failure::new(Exit::Unavailable, error));
        }
        Err(error) => {
            println!("model: not loaded ({error})");
            return Ok(());
        }
    };
    println!("model: {} on {}", analyser.model(), analyser.runs_on());
    for graph in analyser.assignments() {
        println!(
            "  {}: {} nodes on {}, {} fall back to the CPU{}",
            graph.graph,
            graph.nodes,
            graph.provider,
            graph.fell_back.len(),
            graph
                .refusal()
                .map(|why| format!(" ({why})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// What the installed unit's sandbox lets through of the accelerator nodes under `dev`.
fn sandbox(dev: &Path) {
    let nodes = accelerator_nodes(dev);
    if nodes.is_empty() {
        println!("accelerator device nodes: none (no /dev/dri, /dev/accel or /dev/nvidia*)");
        return;
    }
    let listed: Vec<String> = nodes
        .iter()
        .map(|node| node.display().to_string())
        .collect();
    println!("accelerator device nodes: {}", listed.join(", "));
    let Some((unit, text)) = installed_unit(Path::new("/")) else {
        println!("systemd unit: not installed (deploy/install.sh installs it)");
        return;
    };
    let missing = missing_device_allows(&text, dev, &nodes);
    if missing.is_empty() {
        println!("systemd unit {}: lets them through", unit.display());
    } else {
        println!(
            "systemd unit {}: its sandbox hides some; add under [Service] (systemctl edit lookout):",
            unit.display()
        );
        for line in missing {
            println!("  {line}");
        }
    }
}
