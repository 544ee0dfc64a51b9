//! `postgate sender allow|revoke|list`: sender permissions.

use std::path::Path;

use clap::Subcommand;
use serde_json::json;

use super::{load_config, open_store, print_json, Failure};
use postgate::accounts;

#[derive(Subcommand)]
pub enum SenderCommand {
    /// Allow NAME to send as PATTERN (`user@domain` or `@domain`).
    Allow {
        /// Username.
        name: String,
        /// `user@domain` (that address) or `@domain` (any address at domain).
        pattern: String,
    },
    /// Remove a permission.
    Revoke {
        /// Username.
        name: String,
        /// The pattern as listed by `sender list`.
        pattern: String,
    },
    /// List the permissions of NAME.
    List {
        /// Username.
        name: String,
        /// Print one JSON document instead of one pattern per line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `sender` command.
pub async fn run(config_path: Option<&Path>, cmd: &SenderCommand) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let store = open_store(&config, config_path).await?;
    match cmd {
        SenderCommand::Allow { name, pattern } => {
            accounts::sender_allow(&*store, name, pattern).await?;
        }
        SenderCommand::Revoke { name, pattern } => {
            accounts::sender_revoke(&*store, name, pattern).await?
        }
        SenderCommand::List { name, json } => {
            let patterns = store.sender_list(name).await?;
            if *json {
                return print_json(
                    &json!({ "username": name.trim().to_lowercase(), "senders": patterns }),
                );
            }
            for p in patterns {
                println!("{p}");
            }
        }
    }
    Ok(())
}
