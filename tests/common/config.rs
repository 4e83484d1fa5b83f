//! Daemon configs as TOML text, built section by section in the order written, so each test says only
//! what is particular to it. The builder writes exactly the keys a test asks for and no others: several
//! tests leave out keys such as `shutdown_timeout_secs` or `keep_alive_secs` on purpose, and a default
//! slipped in here would change what they test. Deliberately broken configs stay hand-written.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lookout::models::build::{Precision, build};

/// The committed SmolVLM2 fixture model (its default variant, int8).
pub fn smolvlm_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/smolvlm-micro")
}

/// The committed fixture model with Lookout's own decoders (fp32, fp16, int8, int4) built from its checkpoint
/// by `lookout::models::build`, the way `lookout models build` builds them: a copy in this test
/// process's own folder under the target directory (the committed folder stays as committed), built
/// once per process.
pub fn smolvlm_built_fixture() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let own = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("smolvlm-built-{}", std::process::id()));
            remove_copies_of_ended_processes(&own);
            // The folder keeps the fixture's name, which answers carry as their model's.
            let dir = own.join("smolvlm-micro");
            copy_dir(&smolvlm_fixture(), &dir);
            for precision in Precision::ALL {
                build(&dir, precision).unwrap_or_else(|error| panic!("{error}"));
            }
            dir
        })
        .clone()
}

/// Removes the built fixtures of test processes that have ended (and any stale one of this process id).
fn remove_copies_of_ended_processes(own: &Path) {
    let Some(parent) = own.parent() else { return };
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("smolvlm-built-") else {
            continue;
        };
        if entry.path() == own || !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A config under construction; `Display` gives its TOML. `Toml::default()` starts with nothing, for
/// tasks a test adds to a header of its own.
#[derive(Clone, Default)]
pub struct Toml {
    text: String,
}

impl Toml {
    /// Starts with `[device]` and its id.
    pub fn device(id: &str) -> Toml {
        Toml {
            text: String::new(),
        }
        .section("device")
        .key("id", format!("\"{id}\""))
    }

    /// Opens a `[header]` table; `header` may be `[name]` written as `name`, or an array `[[name]]`.
    pub fn section(mut self, header: &str) -> Toml {
        if header.starts_with('[') {
            self.text.push_str(&format!("{header}\n"));
        } else {
            self.text.push_str(&format!("[{header}]\n"));
        }
        self
    }

    /// One `key = value` line in the table opened last; `value` is TOML as written.
    pub fn key(mut self, key: &str, value: impl fmt::Display) -> Toml {
        self.text.push_str(&format!("{key} = {value}\n"));
        self
    }

    /// One `key = "text"` line.
    pub fn string(self, key: &str, text: impl fmt::Display) -> Toml {
        self.key(key, format!("\"{text}\""))
    }

    /// Any TOML as written, for sections no helper covers.
    pub fn raw(mut self, toml: &str) -> Toml {
        self.text.push_str(toml);
        if !toml.ends_with('\n') {
            self.text.push('\n');
        }
        self
    }

    /// `[mqtt]` on an external broker.
    pub fn mqtt(self, url: &str) -> Toml {
        self.section("mqtt").string("url", url)
    }

    /// `[mqtt]` served by the daemon's own embedded broker on a loopback port.
    pub fn embedded_mqtt(self, port: u16) -> Toml {
        self.section("mqtt")
            .string("embedded_listen", format!("127.0.0.1:{port}"))
    }

    /// `[vision]` on the fixture model with Lookout's own decoders (the default path) and one thread.
    pub fn smolvlm(self) -> Toml {
        self.section("vision")
            .string("model_dir", smolvlm_built_fixture().display())
            .key("threads", 1)
    }

    /// A synthetic camera of `width` x `height` at `fps`.
    pub fn camera(self, id: &str, width: u32, height: u32, fps: f64) -> Toml {
        self.section("[[cameras]]").string("id", id).key(
            "source",
            format!(
                "{{ kind = \"synthetic\", width = {width}, height = {height}, fps = {fps:?} }}"
            ),
        )
    }

    /// A task's id, camera and question; its kind, trigger and the rest follow as keys.
    pub fn task(self, id: &str, camera: &str, question: &str) -> Toml {
        self.section("[[tasks]]")
            .string("id", id)
            .string("camera", camera)
            .string("question", question)
    }

    /// `kind = "..."` of the task opened last.
    pub fn kind(self, kind: &str) -> Toml {
        self.string("kind", kind)
    }

    /// The task opened last runs every `secs` seconds.
    pub fn interval(self, secs: f64) -> Toml {
        self.key(
            "trigger",
            format!("{{ kind = \"interval\", secs = {secs:?} }}"),
        )
    }

    /// The task opened last runs only when asked.
    pub fn on_demand(self) -> Toml {
        self.key("trigger", "{ kind = \"on_demand\" }")
    }

    /// The task opened last looks at a clip of `frames` frames over `seconds`.
    pub fn clip(self, seconds: f64, frames: u32) -> Toml {
        self.key(
            "clip",
            format!("{{ seconds = {seconds:?}, frames = {frames} }}"),
        )
    }
}

impl fmt::Display for Toml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
