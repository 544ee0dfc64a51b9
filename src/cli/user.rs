//! `postgate user ...`: users and their credentials.

use std::path::Path;

use clap::{Args, Subcommand};

use super::{load_config, open_store, Failure};
use postgate::accounts::{self, format_ms, DEFAULT_LABEL};

#[derive(Args)]
pub struct PasswordSource {
    /// Read the password from standard input (one line).
    #[arg(long, conflicts_with = "generate")]
    password_stdin: bool,
    /// Generate a random password and print it once.
    #[arg(long)]
    generate: bool,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user with a credential named "default".
    Add {
        name: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Set a new password on a credential (default: "default").
    Passwd {
        name: String,
        #[arg(long, default_value = DEFAULT_LABEL)]
        label: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Disable a user: logins fail as for an unknown user.
    Disable { name: String },
    /// Enable a disabled user.
    Enable { name: String },
    /// Delete a user, its credentials and sender permissions.
    Delete { name: String },
    /// List users.
    List,
    /// Manage a user's named credentials (one per device or application).
    #[command(subcommand)]
    Credential(CredentialCommand),
}

#[derive(Subcommand)]
pub enum CredentialCommand {
    /// Add a credential LABEL to user NAME.
    Add {
        name: String,
        label: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// List the credentials of user NAME.
    List { name: String },
    /// Remove credential LABEL of user NAME.
    Revoke { name: String, label: String },
}

fn read_password(src: &PasswordSource) -> Result<(String, bool), Failure> {
    if src.generate {
        return Ok((postgate::password::generate_password(), true));
    }
    if !src.password_stdin {
        return Err(Failure("give --password-stdin or --generate".into(), 2));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        return Err(Failure("empty password on standard input".into(), 1));
    }
    Ok((pw, false))
}

/// Runs one `user` command.
pub async fn run(config_path: Option<&Path>, cmd: &UserCommand) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let store = open_store(&config).await?;
    let params = config.auth.hash;
    match cmd {
        UserCommand::Add { name, password } => {
            let (pw, generated) = read_password(password)?;
            accounts::user_add(&*store, name, DEFAULT_LABEL, &pw, &params).await?;
            if generated {
                println!("{pw}");
            }
        }
        UserCommand::Passwd {
            name,
            label,
            password,
        } => {
            let (pw, generated) = read_password(password)?;
            accounts::user_passwd(&*store, name, label, &pw, &params).await?;
            if generated {
                println!("{pw}");
            }
        }
        UserCommand::Disable { name } => store.user_set_enabled(name, false).await?,
        UserCommand::Enable { name } => store.user_set_enabled(name, true).await?,
        UserCommand::Delete { name } => store.user_delete(name).await?,
        UserCommand::List => {
            println!(
                "{:<32} {:<8} {:>11} {:>7}  created",
                "username", "enabled", "credentials", "senders"
            );
            for u in accounts::user_list(&*store).await? {
                println!(
                    "{:<32} {:<8} {:>11} {:>7}  {}",
                    u.username,
                    if u.enabled { "yes" } else { "no" },
                    u.credentials,
                    u.senders,
                    format_ms(u.created_at)
                );
            }
        }
        UserCommand::Credential(CredentialCommand::Add {
            name,
            label,
            password,
        }) => {
            let (pw, generated) = read_password(password)?;
            accounts::credential_add(&*store, name, label, &pw, &params).await?;
            if generated {
                println!("{pw}");
            }
        }
        UserCommand::Credential(CredentialCommand::List { name }) => {
            println!(
                "{:<24} {:<8} {:<22} last used",
                "label", "enabled", "created"
            );
            for c in accounts::credential_list(&*store, name).await? {
                println!(
                    "{:<24} {:<8} {:<22} {}",
                    c.label,
                    if c.enabled { "yes" } else { "no" },
                    format_ms(c.created_at),
                    c.last_used_at
                        .map(format_ms)
                        .unwrap_or_else(|| "never".into())
                );
            }
        }
        UserCommand::Credential(CredentialCommand::Revoke { name, label }) => {
            store.credential_revoke(name, label).await?
        }
    }
    Ok(())
}
