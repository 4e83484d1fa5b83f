//! `lookout config`: check a config file, print the embedded default or the effective configuration,
//! and make and use the key pair that signs config pushes.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use lookout::config::{self, ConfigOrigin, remote};
use lookout::env::Env;

use super::{Exit, Failure, Outcome};

#[derive(Subcommand)]
pub enum Action {
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

pub fn run(action: Action, env: &Env) -> Outcome {
    match action {
        Action::Check { file } => check(&file, env),
        Action::Example => {
            print!("{}", config::DEFAULT_TOML);
            Ok(())
        }
        Action::Show { config } => show(&ConfigOrigin::choose(config, env), env),
        Action::Keygen { out } => keygen(&out),
        Action::Sign {
            key,
            version,
            patch,
            file,
        } => sign(&key, version, patch, &file),
    }
}

/// `lookout config check`: the file's name, then OK or every problem.
fn check(file: &Path, env: &Env) -> Outcome {
    match ConfigOrigin::File(file.to_owned()).load(env) {
        Ok(_) => {
            println!("{}: OK", file.display());
            Ok(())
        }
        Err(error) => {
            eprintln!("{}: {error}", file.display());
            Err(Failure::reported(Exit::Usage))
        }
    }
}

/// `lookout config show`.
fn show(origin: &ConfigOrigin, env: &Env) -> Outcome {
    let (_, layers) = origin
        .load_effective(env)
        .map_err(|error| Failure::new(Exit::Usage, error))?;
    println!("# remote layer version {}", layers.remote.version);
    for field in config::field_origins(&layers, env) {
        println!("{} = {}  # {}", field.path, field.value, field.origin);
    }
    println!("# every other field: the built-in default (`lookout config example`)");
    Ok(())
}

/// `lookout config keygen`: the secret key goes to a new file only its owner reads.
fn keygen(out: &Path) -> Outcome {
    use std::io::Write;
    let (secret, public) = remote::generate_key();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut file| file.write_all(format!("{secret}\n").as_bytes()))
        .map_err(|error| {
            Failure::new(
                Exit::Failed,
                format!("cannot write {}: {error}", out.display()),
            )
        })?;
    println!(
        "# the secret key is in {}; give each box this line:",
        out.display()
    );
    println!("[remote]\npublic_key = \"{public}\"");
    Ok(())
}

/// `lookout config sign`.
fn sign(key: &Path, version: u64, patch: bool, file: &Path) -> Outcome {
    let key = remote::read_signing_key(key).map_err(|error| Failure::new(Exit::Usage, error))?;
    let text = std::fs::read_to_string(file).map_err(|error| {
        Failure::new(
            Exit::Usage,
            format!("cannot read {}: {error}", file.display()),
        )
    })?;
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
        return Err(Failure::new(
            Exit::Usage,
            format!("{}: {problem}", file.display()),
        ));
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
    Ok(())
}
