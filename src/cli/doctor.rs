//! `lookout doctor`: what this box offers the model. The runtime library and its build, the devices
//! it sees and the provider of each, which accelerator providers it has, and whether the systemd
//! unit's sandbox lets the box's accelerator nodes through, with the lines to add when it does not.
//! It loads no model: it answers "can this box use its GPU or NPU, and if not, why".

use std::path::{Path, PathBuf};

use clap::Parser;
use lookout::config::ConfigOrigin;
use lookout::env::Env;
use lookout::service::devices::{accelerator_nodes, installed_unit, missing_device_allows};
use lookout::vision::runtime;

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
    // The versioned file the library's path links to names its version; the build string its commit.
    let file = std::fs::canonicalize(&library).unwrap_or_else(|_| library.clone());
    println!("runtime: {} ({})", library.display(), file.display());
    println!(
        "build: {}",
        ort::info().trim_start_matches("ORT Build Info: ")
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
