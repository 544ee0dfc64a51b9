//! One task per `[[webhook]]`: reads the outbox after the webhook's cursor
//! in commit order, POSTs the events it wants in batches, and moves the
//! cursor (in memory, then in the store) only after a 2xx. A failed POST is
//! retried, the same batch again, with doubling waits: delivery is at least
//! once and in order (so in order per message). The task touches only the
//! events table and its cursor, so a receiver that is down or slow never
//! slows mail delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::post::Target;
use super::WebhookConfig;
use crate::metrics::Metrics;
use crate::store::{DeliveryEvent, EventCursor, Store};

/// How often an idle sender looks for new events.
const POLL: Duration = Duration::from_millis(500);
/// How often the backlog metrics are read while busy.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// How long one node's right to send for a webhook lasts unrenewed.
const LEASE: Duration = Duration::from_secs(15);
/// How often the holder renews it.
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// The sender of one webhook.
pub struct WebhookSender {
    cfg: WebhookConfig,
    target: Target,
    tls: TlsConnector,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// This node's id: the lease owner.
    node: String,
}

impl WebhookSender {
    /// Parses the URL and loads the trusted roots.
    pub fn new(
        cfg: WebhookConfig,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        node: String,
    ) -> Result<WebhookSender, String> {
        let target = Target::parse(&cfg.url, cfg.allow_http)
            .map_err(|e| format!("webhook {:?}: {e}", cfg.name))?;
        let roots = crate::delivery::tls_client::roots(cfg.ca_file.as_ref())
            .map_err(|e| format!("webhook {:?}: {e}", cfg.name))?;
        let tls = crate::delivery::oauth::endpoint::connector(roots)
            .map_err(|e| format!("webhook {:?}: {e}", cfg.name))?;
        Ok(WebhookSender {
            cfg,
            target,
            tls,
            store,
            metrics,
            node,
        })
    }

    /// Whether this webhook wants `e` (kind, user, sender domain).
    pub fn wants(cfg: &WebhookConfig, e: &DeliveryEvent) -> bool {
        if !cfg.events.contains(&e.kind) {
            return false;
        }
        if !cfg.users.is_empty() {
            let user = e.username.as_deref().unwrap_or("");
            if !cfg.users.iter().any(|u| u.eq_ignore_ascii_case(user)) {
                return false;
            }
        }
        if !cfg.sender_domains.is_empty() {
            let domain = e
                .sender
                .as_deref()
                .and_then(|s| s.rsplit_once('@'))
                .map(|(_, d)| d)
                .unwrap_or("");
            if !cfg
                .sender_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
            {
                return false;
            }
        }
        true
    }

    /// Runs until `shutdown`. Sends only while this node holds the
    /// webhook's lease (one sender per webhook across nodes); on taking it,
    /// starts from the stored cursor.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.cfg.name.clone();
        let mut cursor = EventCursor::default();
        let mut saved = cursor;
        let mut renewed: Option<Instant> = None;
        let mut wait = self.cfg.retry_min;
        let mut measured: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if renewed.is_none_or(|t| t.elapsed() >= RENEW_EVERY) {
                let now = crate::time::now_ms();
                match self
                    .store
                    .webhook_lease(&name, &self.node, now, LEASE.as_millis() as i64)
                    .await
                {
                    Ok(true) if renewed.is_some() => renewed = Some(Instant::now()),
                    Ok(true) => match self.store.webhook_cursor(&name).await {
                        Ok(c) => {
                            cursor = c.unwrap_or_default();
                            saved = cursor;
                            renewed = Some(Instant::now());
                            tracing::info!(webhook = %name, "sending events for this webhook");
                        }
                        Err(e) => {
                            tracing::warn!(webhook = %name, error = %e, "cannot read the cursor")
                        }
                    },
                    Ok(false) => renewed = None,
                    Err(e) => {
                        tracing::warn!(webhook = %name, error = %e, "cannot renew the webhook lease");
                        // Past the lease another node may send: stop too.
                        if renewed.is_some_and(|t| t.elapsed() >= LEASE - RENEW_EVERY) {
                            renewed = None;
                        }
                    }
                }
                if renewed.is_none() {
                    if sleep_or_stop(&shutdown, RENEW_EVERY).await {
                        return;
                    }
                    continue;
                }
            }
            if measured.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY) {
                self.measure(cursor).await;
                measured = Some(Instant::now());
            }
            if saved != cursor {
                match self
                    .store
                    .webhook_cursor_set(&name, cursor, crate::time::now_ms())
                    .await
                {
                    Ok(()) => saved = cursor,
                    Err(e) => tracing::warn!(webhook = %name, error = %e, "cannot save the cursor"),
                }
            }
            let page = match self.store.events_after(cursor, self.cfg.max_batch).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(webhook = %name, error = %e, "cannot read events");
                    if sleep_or_stop(&shutdown, POLL).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(last) = page.last().map(DeliveryEvent::cursor) else {
                if measured.is_some_and(|t| t.elapsed() >= POLL) {
                    // Idle: show an empty backlog promptly.
                    self.measure(cursor).await;
                    measured = Some(Instant::now());
                }
                if sleep_or_stop(&shutdown, POLL).await {
                    return;
                }
                continue;
            };
            let wanted: Vec<DeliveryEvent> = page
                .into_iter()
                .filter(|e| Self::wants(&self.cfg, e))
                .collect();
            if wanted.is_empty() {
                cursor = last;
                continue;
            }
            let body = super::sign::body(&name, &wanted);
            let signature = super::sign::signature(
                self.cfg.secret.expose().as_bytes(),
                crate::time::now_ms() / 1000,
                &body,
            );
            let result = self
                .target
                .post(&self.tls, body, &signature, self.cfg.timeout)
                .await;
            match result {
                Ok(status) if (200..300).contains(&status) => {
                    self.metrics.events().post(&name, "ok", wanted.len());
                    cursor = last;
                    wait = self.cfg.retry_min;
                    continue;
                }
                Ok(status) => {
                    self.metrics.events().post(&name, "rejected", 0);
                    tracing::warn!(webhook = %name, status, retry_in = ?wait, "webhook answered with an error");
                }
                Err(e) => {
                    self.metrics.events().post(&name, "unavailable", 0);
                    tracing::warn!(webhook = %name, error = %e, retry_in = ?wait, "webhook unavailable");
                }
            }
            self.measure(cursor).await;
            measured = Some(Instant::now());
            if sleep_or_stop(&shutdown, wait).await {
                return;
            }
            wait = (wait * 2).min(self.cfg.retry_max);
        }
    }

    async fn measure(&self, cursor: EventCursor) {
        if let Ok(b) = self.store.events_backlog(cursor).await {
            let age = b
                .oldest_at
                .map(|at| (crate::time::now_ms() - at) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.metrics.events().backlog(&self.cfg.name, b.events, age);
        }
    }
}

/// Sleeps `d`; `true` when `shutdown` came first.
async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
