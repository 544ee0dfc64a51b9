//! The management command groups of the `postgate` binary, one module each.
//! Each module declares its clap subcommands and a `run` that loads the
//! configuration, opens the store and prints the result.
//!
//! Output conventions (issue #14): every `list`/`show` takes `--json` and
//! then prints exactly one JSON document on stdout; times are RFC 3339 UTC
//! in tables and JSON alike; errors go to stderr only, so nothing is printed
//! before the data has been read.

pub mod dkim;
pub mod limits;
pub mod queue;
pub mod sender;
pub mod upstream;
pub mod user;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgate::config::Config;
use serde_json::Value;

/// A failure to report: message (printed to stderr) and exit code.
pub struct Failure(pub String, pub u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string(), 1)
    }
}

/// Loads `path`, else `./postgate.toml` when present, else the built-in
/// defaults. A config error exits 2.
pub fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None if Path::new("postgate.toml").exists() => PathBuf::from("postgate.toml"),
        None => return Ok(Config::default()),
    };
    Config::load(&path).map_err(|e| Failure(e.to_string(), 2))
}

/// Where the configuration came from, for messages.
fn config_origin(path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("store.url of {}", p.display()),
        None if Path::new("postgate.toml").exists() => "store.url of ./postgate.toml".into(),
        None => "the built-in default (no -c given and no ./postgate.toml here)".into(),
    }
}

/// Opens an existing store for a management command: never creates one
/// (only `serve`, `dev` and `migrate` do), and names the store it looked
/// for when there is none. Applies pending migrations to an existing store
/// when `store.migrate_on_start` is set (the default).
pub async fn open_store(
    config: &Config,
    config_path: Option<&Path>,
) -> Result<Arc<dyn postgate::store::Store>, Failure> {
    let (url, options) = (config.store.url.expose(), config.store.options());
    if !postgate::store::exists(url, &options).await? {
        let what = match postgate::store::sqlite_path(url) {
            Some(path) => format!("SQLite file {path} does not exist"),
            None => "the database has no postgate schema".into(),
        };
        return Err(Failure(
            format!(
                "no postgate store at {} ({what}; from {}): management commands never create one; create it with `postgate migrate` (or run `serve`), or pass -c CONFIG",
                postgate::store::redact_url(url),
                config_origin(config_path)
            ),
            1,
        ));
    }
    if config.store.migrate_on_start {
        Ok(postgate::store::open_and_migrate(url, &options).await?)
    } else {
        Ok(postgate::store::open(url, &options).await?)
    }
}

/// RFC 3339 UTC (`2026-12-06T13:14:31Z`) of a Unix-ms time.
pub fn time(ms: i64) -> String {
    postgate::time::rfc3339(ms)
}

/// [`time`] of an optional time, as JSON (`null` when absent).
pub fn json_time(ms: Option<i64>) -> Value {
    ms.map(|m| Value::String(time(m))).unwrap_or(Value::Null)
}

/// Prints `value` as one pretty JSON document on stdout.
pub fn print_json(value: &Value) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// "yes" or "no", for tables.
pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
