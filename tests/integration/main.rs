//! Integration tests: one binary (one link step) with a module per area.
//! Real stores (SQLite files and a real PostgreSQL), real TLS, real clients.

mod cli_accounts;
mod common;
mod smtp_auth;
mod smtp_clients;
#[path = "common/smtp.rs"]
mod smtp_harness;
mod smtp_security;
mod store_accounts;
