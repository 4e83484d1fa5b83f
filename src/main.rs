//! The `lookout` command: parse the command line, hand each subcommand to its file in `cli/`, and turn
//! how it ended into the exit code.
//! Exit codes: 0 done, 1 failed while running, 64 bad config or usage, 65 bad input data (an image that
//! does not decode), 66 nothing to read (no dataset folder, or no row an export's filter matches: a
//! script can tell "nothing yet" from a failure), 69 no usable model or runtime, 73 cannot create the
//! output (an export's destination is taken).

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lookout::env::Env;

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
    Run(cli::run::Args),
    /// Answer one question about one image, or about a clip of images, with the local model, with its
    /// confidence and timings.
    Ask(cli::ask::Args),
    /// Time each stage of an answer on this box (median of several runs).
    Bench(cli::bench::Args),
    /// Download or check official SmolVLM2 exports.
    Models {
        #[command(subcommand)]
        action: cli::models::Action,
    },
    /// Check or print configuration.
    Config {
        #[command(subcommand)]
        action: cli::config::Action,
    },
    /// The escalations the cloud answered, kept as a fine-tuning dataset (`[dataset]` in the config).
    Dataset {
        #[command(subcommand)]
        action: cli::dataset::Action,
    },
    /// What this box offers the model: the runtime library, the devices it sees, its accelerator
    /// providers, and whether the systemd unit lets the accelerators through.
    Doctor(cli::doctor::Args),
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    let env = Env::from_process();
    let outcome = match command {
        Command::Run(args) => cli::run::run(args, env),
        Command::Ask(args) => cli::ask::run(args, env),
        Command::Bench(args) => cli::bench::run(args, env),
        Command::Models { action } => cli::models::run(action, &env),
        Command::Config { action } => cli::config::run(action, &env),
        Command::Dataset { action } => cli::dataset::run(action, &env),
        Command::Doctor(args) => cli::doctor::run(args, env),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Some(message) = failure.message {
                eprintln!("lookout: {message}");
            }
            ExitCode::from(failure.exit as u8)
        }
    }
}
