//! Recording delivery outcomes (issue 13): an outcome is kept and retried
//! until the store takes it; a connection's next message waits for the
//! commit of its last one ([`Attempted::unrecorded`]); recipients stay "in
//! hand" from their claim until their outcome is recorded, so a claim of
//! this node never hands out again what is still being delivered or
//! recorded after a lease lapsed.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{lock, now_ms, Engine};
use crate::metrics::StoreOperation;
use crate::store::{ClaimedMessage, RecipientOutcome};

/// First wait before retrying an outcome commit the store refused; it
/// doubles up to [`OUTCOME_RETRY_MAX`].
const OUTCOME_RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Longest wait between two tries of an outcome commit (so outcomes land
/// within this long of the store coming back).
const OUTCOME_RETRY_MAX: Duration = Duration::from_secs(2);
/// Once shutting down, how long outcomes are still retried before they are
/// given up (their messages are then sent again once the lease expires).
const OUTCOME_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// What one message's attempt left to record.
pub(super) struct Attempted {
    pub(super) message: ClaimedMessage,
    /// The header section, when a DSN may be due (else empty).
    pub(super) headers: Bytes,
    pub(super) outcomes: Vec<RecipientOutcome>,
    /// [`UpstreamState::unrecorded`] permits of the connections used; they
    /// go once `outcomes` are committed.
    pub(super) unrecorded: Vec<(String, tokio::sync::OwnedSemaphorePermit)>,
}

impl Attempted {
    /// Outcomes decided without an upstream (expired, body unavailable).
    pub(super) fn unsent(
        message: ClaimedMessage,
        headers: Bytes,
        outcomes: Vec<RecipientOutcome>,
    ) -> Self {
        Attempted {
            message,
            headers,
            outcomes,
            unrecorded: Vec::new(),
        }
    }
}

impl Engine {
    /// The claimed messages without the recipients already in a claim of
    /// this node (see [`Engine::in_hand`]); the others are now in hand.
    pub(super) fn take_in_hand(&self, claimed: Vec<ClaimedMessage>) -> Vec<ClaimedMessage> {
        let mut hand = lock(&self.in_hand);
        let now = Instant::now();
        claimed
            .into_iter()
            .filter_map(|mut m| {
                m.recipients.retain(|r| match hand.entry(r.id) {
                    std::collections::hash_map::Entry::Occupied(_) => false,
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(now);
                        true
                    }
                });
                (!m.recipients.is_empty()).then_some(m)
            })
            .collect()
    }

    /// Recipients whose outcome is recorded (or given up) leave
    /// [`Engine::in_hand`]. Those held long enough for their lease to have
    /// lapsed wait for claims in progress first (`claim_gate`).
    pub(super) async fn let_go(&self, ids: Vec<i64>) {
        let stale = {
            let hand = lock(&self.in_hand);
            ids.iter().any(|id| {
                hand.get(id)
                    .is_some_and(|t| t.elapsed() >= self.queue.lease / 2)
            })
        };
        let _gate = if stale {
            Some(self.claim_gate.write().await)
        } else {
            None
        };
        let mut hand = lock(&self.in_hand);
        for id in ids {
            hand.remove(&id);
        }
    }

    /// Records outcomes, retrying with backoff (up to [`OUTCOME_RETRY_MAX`]
    /// apart) until the store takes them: a dropped outcome means the
    /// message is sent again once its lease expires. Meanwhile the
    /// recipients stay in [`Engine::in_hand`], so this node does not deliver
    /// them again. Once shutting down it gives up after
    /// [`OUTCOME_SHUTDOWN_WAIT`], saying so.
    pub(super) async fn record(&self, owner: &str, outcomes: &[RecipientOutcome]) {
        let mut delay = OUTCOME_RETRY_INITIAL;
        let mut failures = 0u32;
        let mut give_up_at = None;
        loop {
            let started = Instant::now();
            let recorded = self.store.record_outcomes(owner, now_ms(), outcomes).await;
            self.store_timing(StoreOperation::RecordOutcome, started, recorded.is_err());
            let Err(e) = recorded else { break };
            failures += 1;
            warn!(error = %e, failures, outcomes = outcomes.len(), "recording delivery outcomes failed; keeping them and retrying");
            if self.shutdown.is_cancelled() {
                let at = *give_up_at.get_or_insert_with(|| Instant::now() + OUTCOME_SHUTDOWN_WAIT);
                if Instant::now() >= at {
                    tracing::error!(outcomes = outcomes.len(), "shutting down with delivery outcomes not recorded: these recipients are tried again once their lease expires");
                    return;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(OUTCOME_RETRY_MAX);
        }
        if failures > 0 {
            info!(
                failures,
                outcomes = outcomes.len(),
                "delivery outcomes recorded after the store came back"
            );
        }
    }
}
