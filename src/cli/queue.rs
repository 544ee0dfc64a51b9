//! `postgate queue ...`: inspect and act on the live queue, one message or
//! many at once (a filter or `--all`, counted and confirmed first).

use std::io::IsTerminal;
use std::path::Path;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::{json_time, load_config, open_store, print_json, time, Failure};
use postgate::delivery::admin;
use postgate::store::{QueueDetail, QueueEntry, QueueFilter, QueueState, Store};
use postgate::time::now_ms;

/// Which messages: every given option must match.
#[derive(Args, Default, Clone)]
pub struct Filter {
    /// Envelope sender: `user@domain`, or `@domain` for any address there.
    #[arg(long)]
    sender: Option<String>,
    /// The user who submitted the message.
    #[arg(long)]
    user: Option<String>,
    /// A recipient: `user@domain`, or `@domain` for any address there.
    #[arg(long)]
    recipient: Option<String>,
    /// queued (never tried), active (being delivered), deferred (waiting
    /// for a retry), held (by an operator) or done (being finished).
    #[arg(long, value_parser = QueueState::parse)]
    state: Option<QueueState>,
    /// Received at least this long ago (e.g. 30m, 2h, 3d).
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<std::time::Duration>,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.sender.is_none()
            && self.user.is_none()
            && self.recipient.is_none()
            && self.state.is_none()
            && self.older_than.is_none()
    }

    fn store_filter(&self, now: i64) -> QueueFilter {
        QueueFilter {
            sender: self.sender.clone(),
            username: self.user.clone(),
            recipient: self.recipient.clone(),
            received_before: self
                .older_than
                .map(|d| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        }
    }
}

/// The messages a bulk command acts on: one ID, or a filter, or `--all`.
#[derive(Args)]
pub struct Target {
    /// The queue id of one message (from `queue list`). Without it, give a
    /// filter or --all.
    id: Option<String>,
    #[command(flatten)]
    filter: Filter,
    /// Every message in the queue.
    #[arg(long)]
    all: bool,
    /// Do not ask for confirmation (for scripts). Without a terminal and
    /// without --yes, a command over several messages refuses.
    #[arg(long, short = 'y')]
    yes: bool,
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Messages in the queue, oldest first, then a summary line.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Show at most this many (the summary counts all that match).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A message's envelope, recipients and delivery log (never the body).
    Show {
        /// The queue id (from `queue list`).
        id: String,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make every pending recipient due now.
    Retry(Target),
    /// Remove messages from the queue (logged as "deleted"; no DSN).
    Delete(Target),
    /// Hold messages: never delivered until released (an attempt already
    /// running finishes).
    Hold(Target),
    /// Release held messages: delivery resumes.
    Release(Target),
}

fn entry_json(e: &QueueEntry, now: i64) -> Value {
    json!({
        "id": e.id,
        "state": e.state(now).as_str(),
        "sender": e.sender,
        "username": e.username,
        "size": e.size,
        "is_dsn": e.is_dsn,
        "recipients": e.recipients,
        "pending": e.pending,
        "attempts": e.attempts,
        "held": e.held,
        "received_at": time(e.received_at),
        "next_attempt_at": json_time(e.next_attempt_at),
    })
}

fn sender_text(e: &QueueEntry) -> &str {
    if e.sender.is_empty() {
        "<> (DSN)"
    } else {
        &e.sender
    }
}

/// `N message(s), P recipient(s) pending: queued Q, active A, ...`.
fn summary(entries: &[QueueEntry], now: i64, shown: usize) -> (String, Value) {
    let mut by_state = Map::new();
    let mut parts = Vec::new();
    for st in QueueState::ALL {
        let n = entries.iter().filter(|e| e.state(now) == st).count();
        by_state.insert(st.as_str().into(), json!(n));
        parts.push(format!("{} {n}", st.as_str()));
    }
    let pending: u64 = entries.iter().map(|e| u64::from(e.pending)).sum();
    let text = format!(
        "{} message(s), {pending} recipient(s) pending: {}{}",
        entries.len(),
        parts.join(", "),
        if shown < entries.len() {
            format!(" (first {shown} shown; raise --limit)")
        } else {
            String::new()
        }
    );
    let value = json!({
        "messages": entries.len(),
        "shown": shown,
        "recipients_pending": pending,
        "by_state": by_state,
    });
    (text, value)
}

async fn list(
    store: &dyn Store,
    filter: &Filter,
    limit: u32,
    as_json: bool,
) -> Result<(), Failure> {
    let now = now_ms();
    let entries = admin::select(store, &filter.store_filter(now), filter.state, now).await?;
    let shown = entries.len().min(limit as usize);
    let (line, summary) = summary(&entries, now, shown);
    if as_json {
        let list: Vec<Value> = entries[..shown]
            .iter()
            .map(|e| entry_json(e, now))
            .collect();
        return print_json(&json!({ "messages": list, "summary": summary }));
    }
    let mut out = format!(
        "{:<32} {:<8} {:<30} {:>9} {:>5}/{:<5} {:<20} next attempt\n",
        "id", "state", "sender", "size", "left", "rcpts", "received"
    );
    for e in &entries[..shown] {
        out.push_str(&format!(
            "{:<32} {:<8} {:<30} {:>9} {:>5}/{:<5} {:<20} {}\n",
            e.id,
            e.state(now).as_str(),
            sender_text(e),
            e.size,
            e.pending,
            e.recipients,
            time(e.received_at),
            e.next_attempt_at.map(time).unwrap_or_else(|| "-".into())
        ));
    }
    out.push_str(&line);
    println!("{out}");
    Ok(())
}

fn detail_json(d: &QueueDetail, now: i64) -> Value {
    let mut v = entry_json(&d.entry, now);
    let recipients: Vec<Value> = d
        .recipients
        .iter()
        .map(|r| {
            json!({
                "address": r.address,
                "status": r.status,
                "held": r.held,
                "attempts": r.attempts,
                "next_attempt_at": time(r.next_attempt_at),
                "route_index": r.route_index,
                "lease_owner": r.lease_owner,
                "lease_until": json_time(r.lease_until),
                "last_upstream": r.last_upstream,
                "last_reply": r.last_reply,
            })
        })
        .collect();
    let log: Vec<Value> = d
        .log
        .iter()
        .map(|l| {
            json!({
                "at": time(l.at),
                "recipient": l.recipient,
                "outcome": l.outcome,
                "attempt": l.attempt,
                "upstream": l.upstream,
                "reply": l.reply,
            })
        })
        .collect();
    if let Value::Object(m) = &mut v {
        m.insert("envid".into(), json!(d.envid));
        m.insert("expires_at".into(), json!(time(d.expires_at)));
        m.insert("recipients".into(), Value::Array(recipients));
        m.insert("log".into(), Value::Array(log));
    }
    v
}

fn detail_text(d: &QueueDetail, now: i64) -> String {
    let e = &d.entry;
    let mut out = format!(
        "id:        {}\nstate:     {}\nsender:    {}\nuser:      {}\nsize:      {}\nreceived:  {}\nexpires:   {}\nrecipients:\n",
        e.id,
        e.state(now).as_str(),
        if e.sender.is_empty() { "<>" } else { &e.sender },
        e.username.as_deref().unwrap_or("-"),
        e.size,
        time(e.received_at),
        time(d.expires_at)
    );
    for r in &d.recipients {
        out.push_str(&format!(
            "  {:<40} {:<9}{} attempts={} next={} upstream={} reply={}\n",
            r.address,
            r.status,
            if r.held { " held" } else { "" },
            r.attempts,
            time(r.next_attempt_at),
            r.last_upstream.as_deref().unwrap_or("-"),
            r.last_reply.as_deref().unwrap_or("-")
        ));
    }
    out.push_str("log:\n");
    for l in &d.log {
        out.push_str(&format!(
            "  {} {:<40} {:<9} attempt={} upstream={} {}\n",
            time(l.at),
            l.recipient,
            l.outcome,
            l.attempt,
            l.upstream.as_deref().unwrap_or("-"),
            l.reply.as_deref().unwrap_or("")
        ));
    }
    out
}

/// What a bulk command does to one message.
#[derive(Clone, Copy)]
enum Action {
    Retry,
    Delete,
    Hold,
    Release,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Delete => "delete",
            Action::Hold => "hold",
            Action::Release => "release",
        }
    }

    /// Applies to one message; the line to print.
    async fn one(self, store: &dyn Store, id: &str) -> Result<String, postgate::store::StoreError> {
        Ok(match self {
            Action::Retry => format!(
                "{} recipient(s) of {id} due now",
                admin::retry(store, id).await?
            ),
            Action::Delete => {
                admin::delete(store, id).await?;
                format!("deleted {id}")
            }
            Action::Hold => format!("held {id} ({} recipient(s))", admin::hold(store, id).await?),
            Action::Release => format!(
                "released {id} ({} recipient(s))",
                admin::release(store, id).await?
            ),
        })
    }
}

/// Asks on the terminal; `Ok(false)` when the operator says no. Without a
/// terminal (a script, a pipe) it refuses: scripts pass `--yes`.
fn confirm(action: Action, count: usize) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure(
            format!(
                "{count} message(s) match; not going to {} them without confirmation: no terminal to ask on, add --yes",
                action.verb()
            ),
            1,
        ));
    }
    eprint!("{} {count} message(s)? [y/N] ", action.verb());
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

async fn bulk(store: &dyn Store, action: Action, t: &Target) -> Result<(), Failure> {
    if let Some(id) = &t.id {
        if t.all || !t.filter.is_empty() {
            return Err(Failure(
                "give either a queue ID or a filter / --all, not both".into(),
                2,
            ));
        }
        println!("{}", action.one(store, id).await?);
        return Ok(());
    }
    if !t.all && t.filter.is_empty() {
        return Err(Failure(
            format!(
                "{} what? give a queue ID, a filter (--sender, --user, --recipient, --state, --older-than) or --all",
                action.verb()
            ),
            2,
        ));
    }
    let now = now_ms();
    let ids: Vec<String> = admin::select(store, &t.filter.store_filter(now), t.filter.state, now)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    if ids.is_empty() {
        println!("no message matches: nothing to {}", action.verb());
        return Ok(());
    }
    if !t.yes && !confirm(action, ids.len())? {
        return Err(Failure("cancelled: nothing changed".into(), 1));
    }
    let (mut done, mut gone) = (0usize, 0usize);
    for id in &ids {
        match action.one(store, id).await {
            Ok(_) => done += 1,
            // Delivered or deleted since it was selected.
            Err(postgate::store::StoreError::NotFound(_)) => gone += 1,
            Err(e) => {
                return Err(Failure(
                    format!("after {done} of {} message(s): {e}", ids.len()),
                    1,
                ))
            }
        }
    }
    println!(
        "{}: {done} message(s){}",
        action.verb(),
        if gone > 0 {
            format!(" ({gone} left the queue meanwhile)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Runs one `queue` command.
pub async fn run(config_path: Option<&Path>, cmd: &QueueCommand) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let store = open_store(&config, config_path).await?;
    match cmd {
        QueueCommand::List {
            filter,
            limit,
            json,
        } => list(&*store, filter, *limit, *json).await,
        QueueCommand::Show { id, json } => {
            let d = admin::show(&*store, id).await?;
            let now = now_ms();
            if *json {
                print_json(&detail_json(&d, now))
            } else {
                print!("{}", detail_text(&d, now));
                Ok(())
            }
        }
        QueueCommand::Retry(t) => bulk(&*store, Action::Retry, t).await,
        QueueCommand::Delete(t) => bulk(&*store, Action::Delete, t).await,
        QueueCommand::Hold(t) => bulk(&*store, Action::Hold, t).await,
        QueueCommand::Release(t) => bulk(&*store, Action::Release, t).await,
    }
}
