//! Success and delay notifications (RFC 3461 §6.2), decided after each
//! delivery attempt of a message; failure DSNs are built when the message
//! is finished (`Engine::finish`).
//!
//! A notice is enqueued before the attempt's outcomes are recorded, so a
//! crash in between repeats the attempt and the notice (at least once, as
//! delivery itself), never loses it. A delay warning and the recipient's
//! `delay_warned` mark commit in one transaction: one warning per recipient.

use std::collections::HashMap;

use bytes::Bytes;
use tracing::{info, warn};

use super::dsn::{self, Kind};
use super::{now_ms, Engine};
use crate::store::{
    new_queue_id, ClaimedMessage, ClaimedRecipient, FinalRecipient, OutcomeKind, RecipientOutcome,
};

impl Engine {
    /// Enqueues the notices due after one attempt of `m` (with its stored
    /// bytes `body`): "relayed" for delivered recipients in `relayed` (those
    /// an upstream without DSN accepted) that asked for SUCCESS, "delayed"
    /// for deferred recipients that asked for DELAY, were not warned yet
    /// and arrived at least `[queue] delay_warning` ago.
    pub(super) async fn notices(
        &self,
        m: &ClaimedMessage,
        body: &Bytes,
        outcomes: &[RecipientOutcome],
        relayed: &[i64],
    ) {
        if m.is_dsn || m.sender.is_empty() {
            return;
        }
        let by_id: HashMap<i64, &ClaimedRecipient> =
            m.recipients.iter().map(|r| (r.id, r)).collect();
        let now = now_ms();
        let delivered: Vec<FinalRecipient> = outcomes
            .iter()
            .filter(|o| o.kind == OutcomeKind::Delivered && relayed.contains(&o.recipient_id))
            .filter_map(|o| Some(reported(by_id.get(&o.recipient_id)?, o, "delivered")))
            .collect();
        if !delivered.is_empty() {
            self.notice(Kind::Relayed, m, body, &delivered, &[], now)
                .await;
        }
        let warning = self.queue.delay_warning.as_millis() as i64;
        if warning == 0 || now < m.received_at.saturating_add(warning) || now >= m.expires_at {
            return;
        }
        let mut ids = Vec::new();
        let delayed: Vec<FinalRecipient> = outcomes
            .iter()
            .filter(|o| o.log && matches!(o.kind, OutcomeKind::Deferred { .. }))
            .filter_map(|o| {
                let r = by_id.get(&o.recipient_id)?;
                (!r.delay_warned && dsn::wants(r.notify.as_deref(), Kind::Delayed)).then(|| {
                    ids.push(r.id);
                    reported(r, o, "delayed")
                })
            })
            .collect();
        if !delayed.is_empty() {
            self.notice(Kind::Delayed, m, body, &delayed, &ids, now)
                .await;
        }
    }

    async fn notice(
        &self,
        kind: Kind,
        m: &ClaimedMessage,
        body: &Bytes,
        recipients: &[FinalRecipient],
        delay_warned: &[i64],
        now: i64,
    ) {
        let kept = dsn::kept_for_dsn(m, body, self.queue.dsn_return_max);
        let lifetime = self.queue.lifetime.as_millis() as i64;
        let Some(d) = dsn::build_report(
            kind,
            m,
            &kept,
            recipients,
            &self.hostname,
            self.dsn_from.as_deref(),
            new_queue_id(),
            now,
            now + lifetime,
        ) else {
            return;
        };
        // Signed and sent from `dsn_from` like a failure DSN (bounce.rs).
        let d = self.sign_dsn(d).await;
        match self.store.enqueue_notice(&d, delay_warned).await {
            Ok(true) => {
                for r in recipients {
                    info!(queue_id = %m.id, recipient = %r.address, dsn_id = %d.id, sender = %m.sender, action = ?kind, "notified");
                }
            }
            Ok(false) => {}
            Err(e) => warn!(queue_id = %m.id, error = %e, action = ?kind, "cannot enqueue DSN"),
        }
    }
}

/// A recipient as a DSN reports it after outcome `o`.
fn reported(r: &ClaimedRecipient, o: &RecipientOutcome, status: &str) -> FinalRecipient {
    FinalRecipient {
        address: r.address.clone(),
        notify: r.notify.clone(),
        orcpt: r.orcpt.clone(),
        status: status.into(),
        attempts: r.attempts + 1,
        last_upstream: o.upstream.clone(),
        last_reply: o.reply.clone(),
    }
}
