//! The `lookout` command: parse, load and validate the config, then hand over to the library.
//! Exit codes: 0 done, 1 failed while running, 64 bad config or usage, 69 no usable model.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lookout::config::{self, ConfigOrigin, Env};
use lookout::{service, vision};

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;

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
    },
    /// Check or print configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a config file and list every problem (exit 64 when there is any).
    Check { file: PathBuf },
    /// Print the embedded default configuration, documented field by field.
    Example,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
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
        Command::Run { config } => run(ConfigOrigin::choose(config, &env), env),
    }
}

fn run(origin: ConfigOrigin, env: Env) -> ExitCode {
    service::init_logging(&env);
    // Everything is checked before any device, socket or model is opened.
    let config = match origin.load(&env) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lookout: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
    match runtime.block_on(service::run_until_signalled(origin, env, config, analyser)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lookout: {:#}", anyhow::Error::from(error));
            ExitCode::from(EXIT_FAILED)
        }
    }
}
