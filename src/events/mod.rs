//! Delivery events beyond the store (issue #17): the `[events]` and
//! `[[webhook]]` configuration, the webhook senders ([`webhook`]), the
//! signing of what they send ([`sign`]) and the periodic pruning of the
//! outbox. The events themselves are written by the store
//! ([`crate::store::EventStore`]) in the transactions they describe.

pub mod post;
pub mod rejected;
pub mod sign;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::metrics::Metrics;
use crate::smtp::ports::IntakeError;
use crate::store::{Store, EVENT_KINDS};

/// `[events]`: the outbox. On when `enabled` or any `[[webhook]]` exists.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Write events (implied by any `[[webhook]]`).
    pub enabled: bool,
    /// Events older than this are deleted, sent or not.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// At most this many events are kept (the oldest go first).
    pub max_events: u64,
    /// How often old events are pruned.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// At most this many `rejected` events a second per node (a burst of
    /// as many); more are counted, not written. 0: none.
    pub rejected_per_second: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: false,
            retention: Duration::from_secs(7 * 86_400),
            max_events: 10_000_000,
            prune_interval: Duration::from_secs(60),
            rejected_per_second: 20,
        }
    }
}

/// `[[webhook]]`: where events are POSTed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the webhook's cursor in the store and its metrics series.
    pub name: String,
    /// `https://…`; `http://` only to a loopback host or with `allow_http`.
    pub url: String,
    /// Kinds sent (default: all).
    #[serde(default = "all_kinds")]
    pub events: Vec<String>,
    /// Only events of these users (default: any).
    #[serde(default)]
    pub users: Vec<String>,
    /// Only events whose envelope sender is at one of these domains (default: any).
    #[serde(default)]
    pub sender_domains: Vec<String>,
    /// HMAC-SHA256 key of the signature header.
    pub secret: Secret,
    /// Allow plain `http://` to a non-loopback host.
    #[serde(default)]
    pub allow_http: bool,
    /// PEM CA certificates to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Bound on one POST (connect, TLS, answer).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most events in one POST.
    #[serde(default = "default_batch")]
    pub max_batch: u32,
    /// First wait after a failed POST; doubles up to `retry_max`.
    #[serde(default = "default_retry_min", with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
}

fn all_kinds() -> Vec<String> {
    EVENT_KINDS.iter().map(|k| k.to_string()).collect()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_batch() -> u32 {
    100
}
fn default_retry_min() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}

impl WebhookConfig {
    /// Checks one webhook; the error names the key (`webhook.KEY`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("webhook.{k}"), m));
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return bad(
                "name",
                format!("{:?}: use 1 to 64 of A-Z a-z 0-9 . _ -", self.name),
            );
        }
        if let Err(e) = post::Target::parse(&self.url, self.allow_http) {
            return bad("url", format!("webhook {:?}: {e}", self.name));
        }
        if self.events.is_empty() {
            return bad(
                "events",
                format!("webhook {:?}: name at least one", self.name),
            );
        }
        if let Some(k) = self
            .events
            .iter()
            .find(|k| !EVENT_KINDS.contains(&k.as_str()))
        {
            return bad(
                "events",
                format!(
                    "webhook {:?}: unknown event {k:?} (use {})",
                    self.name,
                    EVENT_KINDS.join(", ")
                ),
            );
        }
        if !self.secret.is_unread() && self.secret.expose().len() < 16 {
            return bad(
                "secret",
                format!("webhook {:?}: use at least 16 characters", self.name),
            );
        }
        if !(1..=1000).contains(&self.max_batch) {
            return bad("max_batch", "must be 1 to 1000".into());
        }
        if self.timeout.is_zero() || self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return bad(
                "timeout",
                "timeout and retry_min must be above 0 and retry_max at least retry_min".into(),
            );
        }
        if let Some(d) = self
            .sender_domains
            .iter()
            .find(|d| d.is_empty() || d.contains('@'))
        {
            return bad("sender_domains", format!("{d:?} is not a domain"));
        }
        Ok(())
    }
}

/// Checks `[events]` and every `[[webhook]]` (names unique).
pub fn validate(events: &EventsConfig, hooks: &[WebhookConfig]) -> Result<(), (String, String)> {
    if events.retention < Duration::from_secs(60) {
        return Err(("events.retention".into(), "must be at least 1m".into()));
    }
    if events.max_events < 1000 {
        return Err(("events.max_events".into(), "must be at least 1000".into()));
    }
    if events.prune_interval.is_zero() {
        return Err(("events.prune_interval".into(), "must be above 0".into()));
    }
    let mut names = std::collections::HashSet::new();
    for h in hooks {
        h.validate()?;
        if !names.insert(h.name.as_str()) {
            return Err((
                "webhook.name".into(),
                format!("{:?} is used by two webhooks", h.name),
            ));
        }
    }
    Ok(())
}

/// The rule named by a refusal at intake, for its `rejected` event;
/// `None` for a failure of the system (nothing was refused for a rule).
pub fn rejection_rule(error: &IntakeError) -> Option<&'static str> {
    match error {
        IntakeError::HeaderFromNotPermitted(_) => Some("header_from"),
        IntakeError::MalformedHeader(_) => Some("malformed_header"),
        IntakeError::SignatureNotPermitted(_) => Some("signature_not_permitted"),
        IntakeError::SigningRefused(_) => Some("signing_refused"),
        IntakeError::SigningUnavailable | IntakeError::QueueUnavailable(_) => None,
    }
}

/// Makes the store write events (or not) and, when on, starts the pruning
/// task and one sender per webhook on `tasks`; they stop with `shutdown`.
pub async fn start(
    store: Arc<dyn Store>,
    events: &EventsConfig,
    hooks: &[WebhookConfig],
    metrics: Arc<Metrics>,
    node: &str,
    shutdown: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(), String> {
    let enabled = events.enabled || !hooks.is_empty();
    store
        .events_install(enabled)
        .await
        .map_err(|e| format!("events: {e}"))?;
    if !enabled {
        return Ok(());
    }
    for h in hooks {
        let sender = webhook::WebhookSender::new(
            h.clone(),
            store.clone(),
            metrics.clone(),
            node.to_string(),
        )?;
        tasks.spawn(sender.run(shutdown.clone()));
    }
    tasks.spawn(prune_loop(store, events.clone(), metrics, shutdown));
    Ok(())
}

async fn prune_loop(
    store: Arc<dyn Store>,
    cfg: EventsConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let before = crate::time::now_ms() - cfg.retention.as_millis() as i64;
        match store.events_prune(before, cfg.max_events).await {
            Ok(n) => metrics.events().pruned(n),
            Err(e) => tracing::warn!(error = %e, "events: pruning failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cfg.prune_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(extra, "t.toml").map_err(|e| e.to_string())
    }

    const HOOK: &str = r#"
[[webhook]]
name = "app"
url = "https://hooks.example.com/postgate"
secret = "0123456789abcdef"
"#;

    #[test]
    fn a_webhook_implies_events_and_defaults_to_every_kind() {
        let c = parse(HOOK).unwrap();
        assert!(c.events_enabled());
        assert_eq!(c.webhooks[0].events.len(), crate::store::EVENT_KINDS.len());
        assert!(!parse("").unwrap().events_enabled());
        assert!(parse("[events]\nenabled = true\n")
            .unwrap()
            .events_enabled());
    }

    #[test]
    fn bad_webhooks_are_refused_naming_the_key() {
        let cases = [
            (HOOK.replace("https://hooks", "http://hooks"), "webhook.url"),
            (
                HOOK.replace("secret = \"0123456789abcdef\"", "secret = \"short\""),
                "webhook.secret",
            ),
            (
                HOOK.replace("name = \"app\"", "name = \"a b\""),
                "webhook.name",
            ),
            (
                format!("{HOOK}events = [\"delivered\", \"opened\"]\n"),
                "webhook.events",
            ),
            (format!("{HOOK}{HOOK}"), "webhook.name"),
            (
                "[events]\nretention = \"1s\"\n".to_string(),
                "events.retention",
            ),
        ];
        for (text, key) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
        // Plain http: loopback, or when allowed explicitly.
        parse(&HOOK.replace("https://hooks.example.com", "http://127.0.0.1:8080")).unwrap();
        parse(&format!(
            "{}allow_http = true\n",
            HOOK.replace("https://hooks", "http://hooks")
        ))
        .unwrap();
    }
}
