//! `postgate queue ...`: inspect and act on the live queue.

use std::path::Path;

use clap::Subcommand;

use super::{load_config, open_store, Failure};
use postgate::accounts::format_ms;

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Messages in the queue, oldest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A message's envelope, recipients and delivery log (never the body).
    Show { id: String },
    /// Make every pending recipient of a message due now.
    Retry { id: String },
    /// Remove a message from the queue (logged as "deleted"; no DSN).
    Delete { id: String },
}

/// Runs one `queue` command.
pub async fn run(config_path: Option<&Path>, cmd: &QueueCommand) -> Result<(), Failure> {
    use postgate::delivery::admin;
    let config = load_config(config_path)?;
    let store = open_store(&config).await?;
    match cmd {
        QueueCommand::List { limit } => {
            println!(
                "{:<32} {:<30} {:>9} {:>5}/{:<5} {:<20} next attempt",
                "id", "sender", "size", "left", "rcpts", "received"
            );
            for e in admin::list(&*store, *limit).await? {
                println!(
                    "{:<32} {:<30} {:>9} {:>5}/{:<5} {:<20} {}",
                    e.id,
                    if e.sender.is_empty() {
                        "<> (DSN)"
                    } else {
                        &e.sender
                    },
                    e.size,
                    e.pending,
                    e.recipients,
                    format_ms(e.received_at),
                    e.next_attempt_at
                        .map(format_ms)
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        QueueCommand::Show { id } => {
            let d = admin::show(&*store, id).await?;
            let e = &d.entry;
            println!("id:        {}", e.id);
            println!(
                "sender:    {}",
                if e.sender.is_empty() { "<>" } else { &e.sender }
            );
            println!("user:      {}", e.username.as_deref().unwrap_or("-"));
            println!("size:      {}", e.size);
            println!("received:  {}", format_ms(e.received_at));
            println!("expires:   {}", format_ms(d.expires_at));
            println!("recipients:");
            for r in &d.recipients {
                println!(
                    "  {:<40} {:<9} attempts={} next={} upstream={} reply={}",
                    r.address,
                    r.status,
                    r.attempts,
                    format_ms(r.next_attempt_at),
                    r.last_upstream.as_deref().unwrap_or("-"),
                    r.last_reply.as_deref().unwrap_or("-")
                );
            }
            println!("log:");
            for l in &d.log {
                println!(
                    "  {} {:<40} {:<9} attempt={} upstream={} {}",
                    format_ms(l.at),
                    l.recipient,
                    l.outcome,
                    l.attempt,
                    l.upstream.as_deref().unwrap_or("-"),
                    l.reply.as_deref().unwrap_or("")
                );
            }
        }
        QueueCommand::Retry { id } => {
            let n = admin::retry(&*store, id).await?;
            println!("{n} recipient(s) of {id} due now");
        }
        QueueCommand::Delete { id } => {
            admin::delete(&*store, id).await?;
            println!("deleted {id}");
        }
    }
    Ok(())
}
