//! `postgate events list`: the latest delivery events (issue #17).

use std::path::Path;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{load_config, open_store, print_json, time, Failure};

#[derive(Subcommand)]
pub enum EventsCommand {
    /// The latest events, oldest first (needs `[events]` or a `[[webhook]]`
    /// on the serving nodes; nothing is recorded otherwise).
    List {
        /// Only the events of this queue id.
        #[arg(long)]
        message: Option<String>,
        /// At most this many (the latest).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `events` subcommand.
pub async fn run(config_path: Option<&Path>, cmd: &EventsCommand) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let store = open_store(&config, config_path).await?;
    match cmd {
        EventsCommand::List {
            message,
            limit,
            json,
        } => {
            let events = store.events_recent(message.as_deref(), *limit).await?;
            if *json {
                let list: Vec<Value> = events
                    .iter()
                    .map(postgate::events::sign::event_json)
                    .collect();
                return print_json(&json!({ "events": list }));
            }
            let mut out = format!(
                "{:<20} {:<9} {:<32} {:<30} {}\n",
                "at", "kind", "message", "recipient", "reply / rule"
            );
            for e in &events {
                let what = match (&e.reply, &e.rule) {
                    (Some(r), Some(rule)) => format!("{rule}: {r}"),
                    (Some(r), None) => r.clone(),
                    (None, Some(rule)) => rule.clone(),
                    (None, None) => String::new(),
                };
                out.push_str(&format!(
                    "{:<20} {:<9} {:<32} {:<30} {}\n",
                    time(e.at),
                    e.kind,
                    e.message_id.as_deref().unwrap_or("-"),
                    e.recipient.as_deref().unwrap_or("-"),
                    what
                ));
            }
            print!("{out}");
            Ok(())
        }
    }
}
