//! Integration tests: one binary (one link step) with a module per area.
//! Real stores (SQLite files and a real PostgreSQL), real TLS, real clients.

mod cli_accounts;
mod cli_files;
mod cli_ops;
mod common;
mod delivery_crash;
mod delivery_dsn;
pub mod delivery_flow;
mod delivery_isolation;
mod delivery_metrics;
mod delivery_nodes;
mod delivery_queue;
mod delivery_routing;
mod delivery_upstream;
mod dkim_sign;
mod dkim_store;
mod dkim_verify;
mod docs_providers;
mod docs_providers_oauth;
mod e2e_metrics;
mod e2e_process;
mod events_store;
mod limits_auth_cache;
mod limits_store;
mod ops_deploy;
mod ops_http;
mod queue_load;
mod queue_outcomes;
mod security_limits;
mod smtp_auth;
mod smtp_clients;
#[path = "common/smtp.rs"]
mod smtp_harness;
mod smtp_security;
mod smtp_trusted;
mod store_accounts;
mod store_api;
mod store_sqlite_wal;
#[path = "common/token.rs"]
mod token_server;
mod upstream_oauth;
mod upstream_oauth_delivery;
#[path = "common/upstream.rs"]
mod upstream_server;
