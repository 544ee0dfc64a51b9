//! `postgate upstream test NAME`: check an upstream before sending real
//! mail through it.

use std::path::Path;

use clap::Subcommand;

use super::{load_config, Failure};

#[derive(Subcommand)]
pub enum UpstreamCommand {
    /// Connect to upstream NAME, verify TLS, fetch a token (OAuth), AUTH,
    /// MAIL and RCPT, then RSET and QUIT (nothing is sent); prints each
    /// step and its reply; exits 1 naming the step that failed.
    Test {
        /// The [[upstream]] name.
        name: String,
        /// Envelope sender (and mailbox for username = "{sender}").
        /// Default postmaster@<server.hostname>.
        #[arg(long)]
        from: Option<String>,
        /// Recipient for RCPT. Default: the sender.
        #[arg(long)]
        to: Option<String>,
    },
}

/// Runs one `upstream` command.
pub async fn run(config_path: Option<&Path>, cmd: &UpstreamCommand) -> Result<(), Failure> {
    let UpstreamCommand::Test { name, from, to } = cmd;
    let config = load_config(config_path)?;
    let Some(cfg) = config.upstreams.iter().find(|u| &u.name == name) else {
        let known: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        return Err(Failure(
            format!(
                "no [[upstream]] named {name:?} (configured: {})",
                known.join(", ")
            ),
            2,
        ));
    };
    cfg.check_credentials()
        .map_err(|e| Failure(format!("upstream {name:?}: {e}"), 2))?;
    let sender_mailbox = cfg.username.as_deref() == Some("{sender}");
    let from = match from {
        Some(f) => f.clone(),
        None if sender_mailbox => {
            return Err(Failure(
                "--from is required: the upstream authenticates as the sender (username = \"{sender}\")".into(),
                2,
            ))
        }
        None => format!("postmaster@{}", config.server.hostname),
    };
    let to = to.clone().unwrap_or_else(|| from.clone());
    let up = postgate::delivery::upstream::Upstream::new(cfg.clone(), &config.server.hostname)
        .map_err(|e| Failure(e.to_string(), 2))?;
    println!("upstream {name} ({}:{})", cfg.host, cfg.port());
    let mut print = |step: &str, detail: &str| println!("  {step:<9} ok   {detail}");
    match postgate::delivery::probe::run(&up, &from, &to, &mut print).await {
        Ok(()) => {
            println!("upstream {name}: all steps passed");
            Ok(())
        }
        Err(f) => {
            println!("  {:<9} FAIL {}", f.step, f.error);
            Err(Failure(format!("upstream {name}: {f}"), 1))
        }
    }
}
