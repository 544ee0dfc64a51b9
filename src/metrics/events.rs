//! The metrics of delivery events and webhooks (issue #17).

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec};

use super::Declarer;

/// Webhook backlog and sending, events pruned. Series per webhook name
/// (from the config, so bounded).
pub struct EventMetrics {
    backlog: IntGaugeVec,
    backlog_age: GaugeVec,
    posts: IntCounterVec,
    sent: IntCounterVec,
    pruned: IntCounter,
    rejected: IntCounterVec,
}

impl EventMetrics {
    pub(super) fn declare(d: &mut Declarer) -> EventMetrics {
        EventMetrics {
            backlog: d.gauge_vec(
                "postgate_webhook_backlog_events",
                "Events stored but not yet confirmed by the webhook (2xx), by webhook.",
                &["webhook"],
            ),
            backlog_age: d.float_gauge_vec(
                "postgate_webhook_backlog_age_seconds",
                "Age of the oldest event the webhook has not confirmed yet (0: none), by webhook.",
                &["webhook"],
            ),
            posts: d.counter_vec(
                "postgate_webhook_posts_total",
                "Webhook POSTs by webhook and result (ok: 2xx; rejected: another HTTP status; unavailable: no answer).",
                &["webhook", "result"],
            ),
            sent: d.counter_vec(
                "postgate_webhook_events_sent_total",
                "Events confirmed by the webhook (2xx), by webhook.",
                &["webhook"],
            ),
            pruned: d.counter(
                "postgate_events_pruned_total",
                "Events deleted by retention (events.retention, events.max_events).",
            ),
            rejected: d.counter_vec(
                "postgate_rejected_events_total",
                "Refused submissions recorded as `rejected` events, by result (written; dropped: over events.rejected_per_second; failed: the store refused).",
                &["result"],
            ),
        }
    }

    /// One refusal's `rejected` event: `written`, `dropped` or `failed`.
    pub fn rejected(&self, result: &str) {
        self.rejected.with_label_values(&[result]).inc();
    }

    /// One reading of a webhook's backlog.
    pub fn backlog(&self, webhook: &str, events: u64, age_seconds: f64) {
        self.backlog
            .with_label_values(&[webhook])
            .set(i64::try_from(events).unwrap_or(i64::MAX));
        self.backlog_age
            .with_label_values(&[webhook])
            .set(age_seconds.max(0.0));
    }

    /// One POST; `result` is `ok`, `rejected` or `unavailable`.
    pub fn post(&self, webhook: &str, result: &str, events: usize) {
        self.posts.with_label_values(&[webhook, result]).inc();
        if result == "ok" {
            self.sent
                .with_label_values(&[webhook])
                .inc_by(events as u64);
        }
    }

    /// Events deleted by pruning.
    pub fn pruned(&self, n: u64) {
        self.pruned.inc_by(n);
    }
}
