//! Integration tests: one binary (one link step) with a module per area.
//! Real stores (SQLite files and a real PostgreSQL), real TLS, real clients.

mod cli_accounts;
mod common;
mod limits_auth_cache;
mod limits_store;
mod store_accounts;
