//! postgate: an authenticated SMTP submission relay ("smarthost gateway").
//!
//! Module map (see DESIGN.md for the message path):
//! - [`config`]: the TOML configuration, validated once at start;
//! - [`store`]: all state, behind the `Store` trait (PostgreSQL, SQLite);
//! - [`password`]: password hashing and verification (argon2id, imports);
//! - [`policy`]: sender permissions (PURE).

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod auth_cache;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod events;
pub mod fixups;
pub mod http;
pub mod intake;
pub mod journal;
pub mod limits;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod password;
pub mod policy;
pub mod quickstart;
pub mod run;
pub mod secret;
pub mod smtp;
pub mod store;
pub mod submission;
pub mod time;
pub mod tls;

/// The CPUs this process may use (2 when that is unknown): how many
/// CPU-bound jobs run at once on the blocking pool (password hashing, RSA
/// signing), so they never crowd out the async threads.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
