//! A secret configuration value (database URL, upstream passwords, tokens).
//!
//! Given inline, or as `{ env = "VAR" }` or `{ file = "/run/secrets/x" }`;
//! resolved at load and never printed (`check-config` shows where it came
//! from). A module of its own so that every config section can hold one
//! without importing the top-level config.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

thread_local! {
    /// Set while [`without_files`] runs: secrets from files are then not
    /// read.
    static SKIP_FILES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A secret value: inline, from an environment variable, or from a file.
/// `Debug`, `Display` and `Serialize` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SecretSource {
    Inline,
    Env(String),
    File(PathBuf),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretSpec {
    Inline(String),
    Env { env: String },
    File { file: PathBuf },
}

impl Secret {
    /// A secret given directly (tests, defaults).
    pub fn inline(value: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            source: SecretSource::Inline,
        }
    }

    /// The secret itself. Call only where it is used; never log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// True for a secret from a file that was not read
    /// ([`crate::config::Config::load_without_files`]): its value is unknown.
    pub fn is_unread(&self) -> bool {
        self.value.is_empty() && matches!(self.source, SecretSource::File(_))
    }

    fn describe(&self) -> String {
        match &self.source {
            SecretSource::Inline => "<redacted>".into(),
            SecretSource::Env(v) => format!("<redacted: from env {v}>"),
            SecretSource::File(p) => format!("<redacted: from file {}>", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match SecretSpec::deserialize(d).map_err(|_| {
            D::Error::custom("expected a string, { env = \"VAR\" } or { file = \"PATH\" }")
        })? {
            SecretSpec::Inline(value) => Ok(Secret {
                value,
                source: SecretSource::Inline,
            }),
            SecretSpec::Env { env } => match std::env::var(&env) {
                Ok(value) if !value.is_empty() => Ok(Secret {
                    value,
                    source: SecretSource::Env(env),
                }),
                _ => Err(D::Error::custom(format!(
                    "environment variable {env} is not set or empty"
                ))),
            },
            // `check-config --no-files`: the file is on the target host only.
            SecretSpec::File { file } if SKIP_FILES.get() => Ok(Secret {
                value: String::new(),
                source: SecretSource::File(file),
            }),
            SecretSpec::File { file } => match std::fs::read_to_string(&file) {
                Ok(text) if !text.trim().is_empty() => Ok(Secret {
                    value: text.trim_end_matches(['\r', '\n']).to_string(),
                    source: SecretSource::File(file),
                }),
                Ok(_) => Err(D::Error::custom(format!(
                    "secret file {} is empty",
                    file.display()
                ))),
                Err(e) => Err(D::Error::custom(format!(
                    "cannot read secret file {}: {e}",
                    file.display()
                ))),
            },
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.describe())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Runs `f` (a config parse) with secrets given as `{ file = ... }` left
/// unread: `check-config --no-files`, where the files exist only on the
/// target host.
pub(crate) fn without_files<T>(f: impl FnOnce() -> T) -> T {
    SKIP_FILES.set(true);
    let result = f();
    SKIP_FILES.set(false);
    result
}
