//! `rejected` events: a submission refused by a rule (at MAIL, RCPT, the
//! content or intake). Nothing was queued, so the event is its own insert,
//! not part of a queue transaction: best effort (the refusal stands; a
//! failed insert is counted and logged), never awaited by the reply, and
//! bounded. Only authenticated submissions get here, and at most
//! `[events] rejected_per_second` events a node are written (a burst of
//! as many): a client that keeps getting refused cannot flood the table,
//! and what is written is pruned by the events' retention.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::smtp::ports::Rejected;
use crate::store::{EventStore, NewRejection};

/// Writes `rejected` events under the node's cap.
pub struct RejectionWriter {
    store: Arc<dyn EventStore>,
    metrics: Arc<Metrics>,
    per_second: f64,
    /// Tokens left and when they were last refilled.
    bucket: Mutex<(f64, Instant)>,
}

impl RejectionWriter {
    /// `None` when `per_second` is 0 (no `rejected` events).
    pub fn new(
        store: Arc<dyn EventStore>,
        metrics: Arc<Metrics>,
        per_second: u32,
    ) -> Option<RejectionWriter> {
        (per_second > 0).then(|| RejectionWriter {
            store,
            metrics,
            per_second: f64::from(per_second),
            bucket: Mutex::new((f64::from(per_second), Instant::now())),
        })
    }

    /// Takes one event's token at `now`: `false` when the cap is reached.
    fn take(&self, now: Instant) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(b.1).as_secs_f64() * self.per_second;
        b.0 = (b.0 + refill).min(self.per_second);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Writes the events of `rejected` (at Unix ms `at`) in the background;
    /// returns at once. Counted as written, dropped (over the cap) or
    /// failed (the store refused).
    pub fn write(&self, rejected: Rejected, at: i64) {
        let events = self.metrics.events();
        if !self.take(Instant::now()) {
            events.rejected("dropped");
            return;
        }
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let row = NewRejection {
            at,
            sender: rejected.sender,
            username: Some(rejected.username),
            recipients: rejected.recipients,
            rule: rejected.rule,
            reply: rejected.reply,
        };
        tokio::spawn(async move {
            match store.event_rejected(&row).await {
                Ok(()) => metrics.events().rejected("written"),
                Err(e) => {
                    metrics.events().rejected("failed");
                    tracing::warn!(error = %e, rule = %row.rule, "cannot store the rejected event");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_cap_allows_a_burst_then_the_rate() {
        let store = crate::store::open("sqlite::memory:", &Default::default())
            .await
            .unwrap();
        let w = RejectionWriter::new(store, Metrics::detached(), 3).unwrap();
        let t0 = Instant::now();
        let taken = (0..5).filter(|_| w.take(t0)).count();
        assert_eq!(taken, 3);
        assert!(!w.take(t0 + Duration::from_millis(100)));
        assert!(w.take(t0 + Duration::from_millis(400)));
        assert!(!w.take(t0 + Duration::from_millis(400)));
        let none = RejectionWriter::new(
            crate::store::open("sqlite::memory:", &Default::default())
                .await
                .unwrap(),
            Metrics::detached(),
            0,
        );
        assert!(none.is_none());
    }
}
