//! The subcommands of `lookout`, one file each. Each one reads its arguments, calls the library and
//! says what happened; the work itself (loading configs, answering, measuring, fetching) is the
//! library's, where the tests reach it too. A subcommand that fails returns a `Failure`, which `main`
//! prints and turns into the exit code.

pub mod ask;
pub mod bench;
pub mod config;
pub mod dataset;
pub mod doctor;
pub mod models;
pub mod run;

use std::fmt::Display;

use lookout::env::Env;

/// The exit codes besides 0, as sysexits.h numbers them.
#[derive(Debug, Clone, Copy)]
pub enum Exit {
    /// Failed while running.
    Failed = 1,
    /// Bad config or usage.
    Usage = 64,
    /// Bad input data (an image that does not decode).
    Data = 65,
    /// Nothing to read.
    NoInput = 66,
    /// No usable model or runtime.
    Unavailable = 69,
    /// Cannot create the output.
    CantCreate = 73,
}

/// How a subcommand failed: its exit code, and what to print after `lookout: ` (nothing when the
/// subcommand has said it in its own words).
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: Option<String>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Display) -> Failure {
        Failure {
            exit,
            message: Some(message.to_string()),
        }
    }

    /// A failure the subcommand has already reported.
    pub fn reported(exit: Exit) -> Failure {
        Failure {
            exit,
            message: None,
        }
    }
}

/// What a subcommand returns.
pub type Outcome = Result<(), Failure>;

/// `--variant` overrides vision.variant as LOOKOUT_VARIANT does, so that it is validated with the
/// config and a reload keeps it.
pub fn with_variant(env: Env, variant: Option<&str>) -> Env {
    match variant {
        Some(variant) => env.with("LOOKOUT_VARIANT", variant),
        None => env,
    }
}
