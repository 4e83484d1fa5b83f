//! The process environment as a value: the daemon reads it once in `main`, tests build their own, so no
//! test has to mutate the real (process-global, thread-unsafe) environment.

use std::collections::BTreeMap;

/// A snapshot of environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The variables of this process (non-UTF-8 ones are skipped: none of ours can be).
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(key, value)| {
                    Some((key.into_string().ok()?, value.into_string().ok()?))
                })
                .collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
        }
    }

    /// The same environment with `key` set (a command-line option that overrides a field, such as
    /// `--variant`, goes through here, so that a reload keeps it).
    pub fn with(mut self, key: &str, value: &str) -> Env {
        self.vars.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}
