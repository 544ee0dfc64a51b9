//! One delivery attempt: the recipients of a message that share a route
//! position go to one upstream (chosen past open circuits and paced by its
//! throttle) in one transaction, and each recipient's reply becomes its
//! outcome: delivered, failed, deferred (fail-over or backoff) or deferred
//! by a throttle without using up an attempt.

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{info, warn};

use super::pool::Held;
use super::throttle::{self, Admission};
use super::transaction::{EnvelopeDsn, RecipientDsn};
use super::upstream::{Envelope, Reply, SendError, TxReplies};
use super::worker::Waiting;
use super::{lock, now_ms, route, Engine, UpstreamState};
use crate::metrics::{DeliveryResult, LimitKind, LimitScope, ThrottleCause, UpstreamMetrics};
use crate::store::{ClaimedMessage, ClaimedRecipient, OutcomeKind, RecipientOutcome};

impl Engine {
    /// One delivery attempt of `rcpts` (all at route position `start`).
    /// Recipients delivered to an upstream that did not take the DSN
    /// parameters are added to `relayed` (RFC 3461 §6.2.1: postgate then
    /// owes the SUCCESS notice). `waiting` is given up once a connection
    /// slot is held; that slot (and its session) goes to `held` after the
    /// transaction, to be given back once the outcomes are committed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempt(
        &self,
        m: &ClaimedMessage,
        body: &Bytes,
        route: &[String],
        start: usize,
        rcpts: &[&ClaimedRecipient],
        relayed: &mut Vec<i64>,
        waiting: &Waiting,
        held: &mut Option<Held>,
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
            self.metrics
                .rate_limited(LimitScope::Upstream, LimitKind::Messages);
            up.metrics
                .throttled(ThrottleCause::Rate, rcpts.len() as u64);
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
        let dsn: Vec<RecipientDsn> = rcpts
            .iter()
            .map(|r| RecipientDsn {
                notify: r.notify.as_deref(),
                orcpt: r.orcpt.as_deref(),
            })
            .collect();
        let env = Envelope {
            sender: &m.sender,
            recipients: &addresses,
            body,
            smtputf8: m.smtputf8,
            dsn: Some(EnvelopeDsn {
                ret: m.dsn_ret.as_deref(),
                envid: m.envid.as_deref(),
                recipients: &dsn,
            }),
        };
        let wait = self.queue.max_pool_wait;
        let slot = tokio::select! {
            slot = up.pool.slot(wait) => slot,
            _ = self.shutdown.cancelled() => None,
        };
        let Some(slot) = slot else {
            // Not started: back to the queue, due at once, no attempt used
            // (shut down, or every connection busy: a slow or hung upstream
            // must not hold claimed mail, issue #13).
            lock(&up.circuit).release_probe(Instant::now());
            self.publish_circuit(name);
            let reply = if self.shutdown.is_cancelled() {
                String::new()
            } else {
                info!(queue_id = %m.id, upstream = %name, "no free connection within max_pool_wait: given back to the queue");
                up.metrics
                    .throttled(ThrottleCause::Pool, rcpts.len() as u64);
                format!("no free connection to upstream {name} within {wait:?}")
            };
            let now = now_ms();
            return rcpts
                .iter()
                .map(|r| RecipientOutcome {
                    log: false,
                    ..deferred(r, now, idx as u32, false, Some(name), &reply)
                })
                .collect();
        };
        waiting.started();
        let started = Instant::now();
        let (sent, slot) = slot.send(env).await;
        *held = Some(slot);
        up.metrics.transaction_duration(started.elapsed());
        let outcomes = match sent {
            Err(e) => {
                // One sender's mailbox refused ("{sender}" AUTH) says nothing
                // about the upstream: it does not count towards the circuit.
                if up.pool.upstream().mailbox_specific(&e) {
                    match e {
                        SendError::Refused { .. } => lock(&up.circuit).success(),
                        _ => lock(&up.circuit).release_probe(Instant::now()),
                    }
                } else if lock(&up.circuit).failure(Instant::now()) {
                    warn!(upstream = %name, error = %e, "circuit opened");
                }
                let reply = e.to_string();
                rcpts
                    .iter()
                    .map(|r| self.transient(m, r, route.len(), idx, name, &reply))
                    .collect()
            }
            Ok(tx) => {
                let outcomes = self.classify(m, rcpts, route.len(), idx, name, up, &tx);
                if !tx.dsn_passed {
                    relayed.extend(
                        outcomes
                            .iter()
                            .filter(|o| o.kind == OutcomeKind::Delivered)
                            .map(|o| o.recipient_id),
                    );
                }
                outcomes
            }
        };
        self.publish_circuit(name);
        count_attempts(&up.metrics, &outcomes);
        outcomes
    }

    /// Sets the circuit gauge of upstream `name` from its breaker.
    pub(super) fn publish_circuit(&self, name: &str) {
        if let Some(up) = self.upstreams.get(name) {
            up.metrics
                .set_circuit(lock(&up.circuit).state_at(Instant::now()));
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
                    up.metrics.throttled(ThrottleCause::Reply, 1);
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
        info!(queue_id = %m.id, upstream = %name, recipient = %r.address, reply = %reply, next_attempt_at = %crate::time::rfc3339(next), "deferred");
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
