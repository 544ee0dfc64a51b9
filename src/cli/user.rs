//! `postgate user ...`: users, their credentials and limit overrides.

use std::path::Path;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{json_time, load_config, open_store, print_json, time, yes_no, Failure};
use postgate::accounts::{self, DEFAULT_LABEL};
use postgate::store::{CredentialSummary, LimitOverrides, Store};

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
        /// Username (case-insensitive; usually an e-mail address).
        name: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Set a new password on a credential (default: "default").
    Passwd {
        /// Username.
        name: String,
        /// Which credential (see `user credential list NAME`).
        #[arg(long, default_value = DEFAULT_LABEL)]
        label: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Disable a user: logins fail as for an unknown user.
    Disable {
        /// Username.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// Username.
        name: String,
    },
    /// Delete a user, its credentials and sender permissions.
    Delete {
        /// Username.
        name: String,
    },
    /// List users.
    List {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one user: enabled, credentials, senders, limit overrides, last login.
    Show {
        /// Username.
        name: String,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage a user's named credentials (one per device or application).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Per-user rate-limit overrides (instead of the [limits] defaults).
    #[command(subcommand)]
    Limits(UserLimitsCommand),
}

#[derive(Subcommand)]
pub enum CredentialCommand {
    /// Add a credential LABEL to user NAME.
    Add {
        /// Username.
        name: String,
        /// Credential name: 1 to 64 of A-Z a-z 0-9 . _ -
        label: String,
        #[command(flatten)]
        password: PasswordSource,
        /// Make an API token credential instead (HTTP API `Authorization:
        /// Bearer`; no password): the token is printed once, only its hash kept.
        #[arg(long, conflicts_with_all = ["password_stdin", "generate"])]
        token: bool,
    },
    /// List the credentials of user NAME.
    List {
        /// Username.
        name: String,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove credential LABEL of user NAME.
    Revoke {
        /// Username.
        name: String,
        /// Credential name.
        label: String,
    },
    /// Disable credential LABEL of user NAME: its logins fail, the user's other credentials keep working.
    Disable {
        /// Username.
        name: String,
        /// Credential name.
        label: String,
    },
    /// Enable a disabled credential.
    Enable {
        /// Username.
        name: String,
        /// Credential name.
        label: String,
    },
}

/// The per-user limit overrides, one flag each.
#[derive(Args)]
pub struct LimitValues {
    /// Messages per minute.
    #[arg(long)]
    messages_per_minute: Option<u32>,
    /// Messages per hour.
    #[arg(long)]
    messages_per_hour: Option<u32>,
    /// Messages per day.
    #[arg(long)]
    messages_per_day: Option<u32>,
    /// Recipients per day.
    #[arg(long)]
    recipients_per_day: Option<u32>,
    /// Concurrent SMTP sessions.
    #[arg(long)]
    concurrent_sessions: Option<u32>,
}

#[derive(Subcommand)]
pub enum UserLimitsCommand {
    /// Set overrides of NAME (the flags given; the others stay as they are).
    Set {
        /// Username.
        name: String,
        #[command(flatten)]
        values: LimitValues,
    },
    /// Show the overrides of NAME ("default": the [limits] value applies).
    Show {
        /// Username.
        name: String,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove every override of NAME: the [limits] defaults apply again.
    Clear {
        /// Username.
        name: String,
    },
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

/// The override fields in a stable order, with their JSON/flag names.
fn limit_fields(l: &LimitOverrides) -> [(&'static str, Option<u32>); 5] {
    [
        ("messages_per_minute", l.messages_per_minute),
        ("messages_per_hour", l.messages_per_hour),
        ("messages_per_day", l.messages_per_day),
        ("recipients_per_day", l.recipients_per_day),
        ("concurrent_sessions", l.concurrent_sessions),
    ]
}

fn limits_json(l: &LimitOverrides) -> Value {
    Value::Object(
        limit_fields(l)
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

fn limits_text(l: &LimitOverrides) -> String {
    limit_fields(l)
        .into_iter()
        .map(|(k, v)| {
            format!(
                "  {k:<20} {}\n",
                v.map(|n| n.to_string()).unwrap_or_else(|| "default".into())
            )
        })
        .collect()
}

fn credentials_json(creds: &[CredentialSummary]) -> Value {
    creds
        .iter()
        .map(|c| {
            json!({
                "label": c.label,
                "enabled": c.enabled,
                "created_at": time(c.created_at),
                "last_used_at": json_time(c.last_used_at),
            })
        })
        .collect()
}

fn credentials_table(creds: &[CredentialSummary]) -> String {
    let mut out = format!(
        "{:<24} {:<8} {:<22} last used\n",
        "label", "enabled", "created"
    );
    for c in creds {
        out.push_str(&format!(
            "{:<24} {:<8} {:<22} {}\n",
            c.label,
            yes_no(c.enabled),
            time(c.created_at),
            c.last_used_at.map(time).unwrap_or_else(|| "never".into())
        ));
    }
    out
}

async fn show(store: &dyn Store, name: &str, as_json: bool) -> Result<(), Failure> {
    let user = store.user_get(name).await?;
    let creds = store.credential_list(name).await?;
    let senders = store.sender_list(name).await?;
    let last_login = creds.iter().filter_map(|c| c.last_used_at).max();
    if as_json {
        return print_json(&json!({
            "username": user.username,
            "enabled": user.enabled,
            "created_at": time(user.created_at),
            "updated_at": time(user.updated_at),
            "last_login_at": json_time(last_login),
            "limits": limits_json(&user.limits),
            "credentials": credentials_json(&creds),
            "senders": senders,
        }));
    }
    let mut out = format!(
        "username:    {}\nenabled:     {}\ncreated:     {}\nlast login:  {}\nlimits:\n{}credentials:\n",
        user.username,
        yes_no(user.enabled),
        time(user.created_at),
        last_login.map(time).unwrap_or_else(|| "never".into()),
        limits_text(&user.limits)
    );
    for line in credentials_table(&creds).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str("senders:\n");
    if senders.is_empty() {
        out.push_str("  (none: this user cannot send)\n");
    }
    for s in &senders {
        out.push_str(&format!("  {s}\n"));
    }
    print!("{out}");
    Ok(())
}

async fn limits(store: &dyn Store, cmd: &UserLimitsCommand) -> Result<(), Failure> {
    match cmd {
        UserLimitsCommand::Set { name, values } => {
            let mut l = store.user_get(name).await?.limits;
            let given = [
                (&mut l.messages_per_minute, values.messages_per_minute),
                (&mut l.messages_per_hour, values.messages_per_hour),
                (&mut l.messages_per_day, values.messages_per_day),
                (&mut l.recipients_per_day, values.recipients_per_day),
                (&mut l.concurrent_sessions, values.concurrent_sessions),
            ];
            let mut any = false;
            for (field, value) in given {
                if value.is_some() {
                    *field = value;
                    any = true;
                }
            }
            if !any {
                return Err(Failure(
                    "give at least one of --messages-per-minute, --messages-per-hour, --messages-per-day, --recipients-per-day, --concurrent-sessions".into(),
                    2,
                ));
            }
            store.user_set_limits(name, &l).await?;
            print!("{}", limits_text(&l));
        }
        UserLimitsCommand::Show { name, json } => {
            let l = store.user_get(name).await?.limits;
            if *json {
                print_json(&limits_json(&l))?;
            } else {
                print!("{}", limits_text(&l));
            }
        }
        UserLimitsCommand::Clear { name } => {
            store
                .user_set_limits(name, &LimitOverrides::default())
                .await?;
            println!("limit overrides of {name} cleared: the [limits] defaults apply");
        }
    }
    Ok(())
}

/// Runs one `user` command.
pub async fn run(config_path: Option<&Path>, cmd: &UserCommand) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let store = open_store(&config, config_path).await?;
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
        UserCommand::List { json } => {
            let users = accounts::user_list(&*store).await?;
            if *json {
                let list: Vec<Value> = users
                    .iter()
                    .map(|u| {
                        json!({
                            "username": u.username,
                            "enabled": u.enabled,
                            "credentials": u.credentials,
                            "senders": u.senders,
                            "created_at": time(u.created_at),
                        })
                    })
                    .collect();
                return print_json(&json!({ "users": list }));
            }
            let mut out = format!(
                "{:<32} {:<8} {:>11} {:>7}  created\n",
                "username", "enabled", "credentials", "senders"
            );
            for u in &users {
                out.push_str(&format!(
                    "{:<32} {:<8} {:>11} {:>7}  {}\n",
                    u.username,
                    yes_no(u.enabled),
                    u.credentials,
                    u.senders,
                    time(u.created_at)
                ));
            }
            print!("{out}");
        }
        UserCommand::Show { name, json } => show(&*store, name, *json).await?,
        UserCommand::Credential(CredentialCommand::Add {
            name, label, token, ..
        }) if *token => {
            println!("{}", accounts::api_token_add(&*store, name, label).await?);
        }
        UserCommand::Credential(CredentialCommand::Add {
            name,
            label,
            password,
            ..
        }) => {
            let (pw, generated) = read_password(password)?;
            accounts::credential_add(&*store, name, label, &pw, &params).await?;
            if generated {
                println!("{pw}");
            }
        }
        UserCommand::Credential(CredentialCommand::List { name, json }) => {
            // Read first: an unknown user prints nothing on stdout.
            let creds = accounts::credential_list(&*store, name).await?;
            if *json {
                return print_json(&json!({ "credentials": credentials_json(&creds) }));
            }
            print!("{}", credentials_table(&creds));
        }
        UserCommand::Credential(CredentialCommand::Revoke { name, label }) => {
            store.credential_revoke(name, label).await?
        }
        UserCommand::Credential(CredentialCommand::Disable { name, label }) => {
            store.credential_set_enabled(name, label, false).await?
        }
        UserCommand::Credential(CredentialCommand::Enable { name, label }) => {
            store.credential_set_enabled(name, label, true).await?
        }
        UserCommand::Limits(cmd) => limits(&*store, cmd).await?,
    }
    Ok(())
}
