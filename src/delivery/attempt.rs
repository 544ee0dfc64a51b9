//! One delivery attempt: the recipients of a message that share a route
//! position go to one upstream (chosen past open circuits and paced by its
//! throttle) in one transaction, and each recipient's reply becomes its
//! outcome: delivered, failed, deferred (fail-over or backoff) or deferred
//! by a throttle without using up an attempt.

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{info, warn};

use super::throttle::{self, Admission};
use super::upstream::{Envelope, Reply, TxReplies};
use super::{lock, now_ms, route, Engine, UpstreamState};
use crate::metrics::{DeliveryResult, LimitKind, LimitScope, ThrottleCause, UpstreamMetrics};
use crate::store::{ClaimedMessage, ClaimedRecipient, OutcomeKind, RecipientOutcome};

/// The connection permits a message holds until its outcomes are
/// committed, by upstream name (at most one per upstream).
pub(super) type Unrecorded = tokio::sync::Mutex<Vec<(String, tokio::sync::OwnedSemaphorePermit)>>;

impl Engine {
    /// One delivery attempt of `rcpts` (all at route position `start`).
    /// The upstream's [`UpstreamState::unrecorded`] permit taken for the
    /// transaction goes to `unrecorded` (by upstream name), for the caller
    /// to drop once the outcomes are committed.
    pub(super) async fn attempt(
        &self,
        m: &ClaimedMessage,
        body: &Bytes,
        route: &[String],
        start: usize,
        rcpts: &[&ClaimedRecipient],
        unrecorded: &Unrecorded,
    ) -> Vec<RecipientOutcome> {
        let now_i = Instant::now();
        let chosen = route::pick(route.len(), start as u32, |i| {
            self.upstreams
                .get(&route[i])
                .is_some_and(|u| lock(&u.circuit).allow(now_i))
        });
        for name in route {
            self.publish_circuit(name);
        }
        let Some(idx) = chosen else {
            let reply = format!("no upstream available (circuit open): {}", route.join(", "));
            let next = now_ms() + self.queue.circuit_cooldown.as_millis() as i64;
            return rcpts
                .iter()
                .map(|r| {
                    info!(queue_id = %m.id, recipient = %r.address, reply = %reply, "deferred");
                    deferred(r, next, start as u32, false, None, &reply)
                })
                .collect();
        };
        let name = &route[idx];
        let up = &self.upstreams[name];
        if let Admission::Defer(wait) = up.throttle.admit(self.queue.max_throttle_wait).await {
            if let Some(metrics) = &self.metrics {
                metrics.rate_limited(LimitScope::Upstream, LimitKind::Messages);
            }
            if let Some(um) = &up.metrics {
                um.throttled(ThrottleCause::Rate, rcpts.len() as u64);
            }
            lock(&up.circuit).release_probe(Instant::now());
            self.publish_circuit(name);
            let reply = format!("rate limit of upstream {name}: next slot in {wait:?}");
            let next = now_ms() + wait.as_millis() as i64;
            return rcpts
                .iter()
                .map(|r| deferred(r, next, idx as u32, false, Some(name), &reply))
                .collect();
        }
        let addresses: Vec<String> = rcpts.iter().map(|r| r.address.clone()).collect();
        // `add_headers` of this upstream, above the stored bytes.
        let body = &super::headers::prepend(&up.added_headers, body);
        let env = Envelope {
            sender: &m.sender,
            recipients: &addresses,
            body,
            smtputf8: m.smtputf8,
        };
        // Wait for a connection whose last outcome is committed (never
        // closed: the semaphore lives as long as the engine). Another group
        // of the same message on this upstream goes under the permit the
        // message holds already (waiting for a second could deadlock).
        // The check and the wait go under the message's lock, so two of its
        // groups (they run concurrently) never both wait for a permit.
        {
            let mut held = unrecorded.lock().await;
            if !held.iter().any(|(n, _)| n == name) {
                if let Ok(permit) = up.unrecorded.clone().acquire_owned().await {
                    held.push((name.to_string(), permit));
                }
            }
        }
        let started = Instant::now();
        let sent = up.pool.send(env).await;
        if let Some(um) = &up.metrics {
            um.transaction_duration(started.elapsed());
        }
        let outcomes = match sent {
            Err(e) => {
                if lock(&up.circuit).failure(Instant::now()) {
                    warn!(upstream = %name, error = %e, "circuit opened");
                }
                let reply = e.to_string();
                rcpts
                    .iter()
                    .map(|r| self.transient(m, r, route.len(), idx, name, &reply))
                    .collect()
            }
            Ok(tx) => self.classify(m, rcpts, route.len(), idx, name, up, &tx),
        };
        self.publish_circuit(name);
        if let Some(um) = &up.metrics {
            count_attempts(um, &outcomes);
        }
        outcomes
    }

    /// Sets the circuit gauge of upstream `name` from its breaker.
    pub(super) fn publish_circuit(&self, name: &str) {
        if let Some(up) = self.upstreams.get(name) {
            if let Some(um) = &up.metrics {
                um.set_circuit(lock(&up.circuit).state_at(Instant::now()));
            }
        }
    }

    /// Maps a transaction's replies to per-recipient outcomes.
    #[allow(clippy::too_many_arguments)]
    fn classify(
        &self,
        m: &ClaimedMessage,
        rcpts: &[&ClaimedRecipient],
        route_len: usize,
        idx: usize,
        name: &str,
        up: &UpstreamState,
        tx: &TxReplies,
    ) -> Vec<RecipientOutcome> {
        let throttled =
            |r: &Reply| r.is_transient() && throttle::is_throttling(&r.text, &up.patterns);
        if tx.mail.is_transient() && !throttled(&tx.mail) {
            lock(&up.circuit).failure(Instant::now());
        } else {
            lock(&up.circuit).success();
        }
        let mut pause = None;
        let mut delivered_any = false;
        let out = rcpts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let reply = if !tx.mail.is_positive() {
                    &tx.mail
                } else {
                    match tx.rcpt.get(i) {
                        Some(rr) if rr.is_positive() => match &tx.data {
                            Some(d) => d,
                            None => rr,
                        },
                        Some(rr) => rr,
                        None => &tx.mail,
                    }
                };
                if reply.is_positive() && tx.data.as_ref().is_some_and(Reply::is_positive) {
                    delivered_any = true;
                    info!(queue_id = %m.id, upstream = %name, recipient = %r.address, reply = %reply, "delivered");
                    RecipientOutcome {
                        recipient_id: r.id,
                        kind: OutcomeKind::Delivered,
                        upstream: Some(name.to_string()),
                        reply: Some(reply.text.clone()),
                        log: true,
                    }
                } else if reply.is_permanent() {
                    info!(queue_id = %m.id, upstream = %name, recipient = %r.address, reply = %reply, "failed");
                    RecipientOutcome {
                        recipient_id: r.id,
                        kind: OutcomeKind::Failed,
                        upstream: Some(name.to_string()),
                        reply: Some(reply.text.clone()),
                        log: true,
                    }
                } else if throttled(reply) {
                    let p = *pause.get_or_insert_with(|| up.throttle.throttled());
                    if let Some(um) = &up.metrics {
                        um.throttled(ThrottleCause::Reply, 1);
                    }
                    info!(queue_id = %m.id, upstream = %name, recipient = %r.address, reply = %reply, "deferred (throttled)");
                    deferred(r, now_ms() + p.as_millis() as i64, idx as u32, false, Some(name), &reply.text)
                } else {
                    self.transient(m, r, route_len, idx, name, &reply.text)
                }
            })
            .collect();
        if delivered_any {
            up.throttle.success();
        }
        out
    }

    /// A transient failure at route position `idx`: fail over to the next
    /// upstream at once, or after the backoff once the route wrapped.
    fn transient(
        &self,
        m: &ClaimedMessage,
        r: &ClaimedRecipient,
        route_len: usize,
        idx: usize,
        name: &str,
        reply: &str,
    ) -> RecipientOutcome {
        let now = now_ms();
        let (next_index, immediate) = route::fail_over(route_len, idx);
        let next = if immediate {
            now
        } else {
            self.retry
                .next_attempt_at(now, r.attempts + 1, rand::random::<f64>(), m.expires_at)
        };
        info!(queue_id = %m.id, upstream = %name, recipient = %r.address, reply = %reply, next_attempt_at = next, "deferred");
        deferred(r, next, next_index, true, Some(name), reply)
    }
}

/// Counts the recipient results of one transaction with an upstream.
fn count_attempts(um: &UpstreamMetrics, outcomes: &[RecipientOutcome]) {
    let (mut delivered, mut deferred, mut failed) = (0, 0, 0);
    for o in outcomes {
        match o.kind {
            OutcomeKind::Delivered => delivered += 1,
            OutcomeKind::Deferred { .. } => deferred += 1,
            OutcomeKind::Failed | OutcomeKind::Expired => failed += 1,
        }
    }
    for (result, n) in [
        (DeliveryResult::Delivered, delivered),
        (DeliveryResult::Deferred, deferred),
        (DeliveryResult::Failed, failed),
    ] {
        if n > 0 {
            um.attempts(result, n);
        }
    }
}

fn deferred(
    r: &ClaimedRecipient,
    next_attempt_at: i64,
    route_index: u32,
    count_attempt: bool,
    upstream: Option<&str>,
    reply: &str,
) -> RecipientOutcome {
    RecipientOutcome {
        recipient_id: r.id,
        kind: OutcomeKind::Deferred {
            next_attempt_at,
            route_index,
            count_attempt,
        },
        upstream: upstream.map(String::from),
        reply: Some(reply.to_string()),
        log: true,
    }
}
