//! The management command groups of the `postgate` binary, one module each.
//! Each module declares its clap subcommands and a `run` that loads the
//! configuration, opens the store and prints the result.

pub mod dkim;
pub mod limits;
pub mod queue;
pub mod sender;
pub mod upstream;
pub mod user;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgate::config::Config;

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

/// Opens the store; migrates it first when `store.migrate_on_start` is set
/// (the default), so a fresh SQLite file is usable at once.
pub async fn open_store(config: &Config) -> Result<Arc<dyn postgate::store::Store>, Failure> {
    let (url, options) = (config.store.url.expose(), config.store.options());
    if config.store.migrate_on_start {
        Ok(postgate::store::open_and_migrate(url, &options).await?)
    } else {
        Ok(postgate::store::open(url, &options).await?)
    }
}
