//! `postgate sender allow|revoke|list`: sender permissions.

use std::path::Path;

use clap::Subcommand;

use super::{load_config, open_store, Failure};
use postgate::accounts;

#[derive(Subcommand)]
pub enum SenderCommand {
    /// Allow NAME to send as PATTERN (`user@domain` or `@domain`).
    Allow { name: String, pattern: String },
    /// Remove a permission.
    Revoke { name: String, pattern: String },
    /// List the permissions of NAME.
    List { name: String },
}

/// Runs one `sender` command.
pub async fn run(config_path: Option<&Path>, cmd: &SenderCommand) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let store = open_store(&config).await?;
    match cmd {
        SenderCommand::Allow { name, pattern } => {
            accounts::sender_allow(&*store, name, pattern).await?;
        }
        SenderCommand::Revoke { name, pattern } => {
            accounts::sender_revoke(&*store, name, pattern).await?
        }
        SenderCommand::List { name } => {
            for p in store.sender_list(name).await? {
                println!("{p}");
            }
        }
    }
    Ok(())
}
