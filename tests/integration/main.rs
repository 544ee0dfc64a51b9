//! Integration tests: one binary (one link step) with a module per area.
//! Real stores (SQLite files and a real PostgreSQL), real TLS, real clients.

mod cli_accounts;
mod common;
pub mod delivery_flow;
mod delivery_nodes;
mod delivery_queue;
mod delivery_upstream;
mod store_accounts;
#[path = "common/upstream.rs"]
mod upstream_server;
