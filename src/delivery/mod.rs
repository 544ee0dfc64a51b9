//! Delivery: workers take due recipients from the queue with a lease,
//! route them, deliver over pooled upstream sessions and record each
//! recipient's outcome in a second short transaction (never a transaction
//! across an SMTP conversation). The queue alone owns retries and bounces:
//! the upstream client only reports replies.
//!
//! Outcomes: 2xx delivered; 4xx, connection, TLS and timeout failures
//! deferred (the next attempt goes to the next upstream of the route, at
//! once while untried upstreams remain, else after the backoff); 5xx failed.
//! A throttling reply pauses that upstream and defers without using up an
//! attempt. Failed and expired recipients get one DSN per message.
//!
//! Delivery is at least once: if the process dies between an upstream's
//! 250 and the outcome's commit, the lease expires and the message is sent
//! again. How many can be sent twice is bounded: an upstream connection
//! takes its next message only once the outcome of its last one is
//! committed, so a crash repeats at most one message per open upstream
//! connection. An outcome the store does not take is kept and retried
//! until it is recorded; the node does not deliver those recipients again
//! meanwhile.

pub mod admin;
mod attempt;
mod bounce;
pub mod circuit;
pub mod config;
pub mod dsn;
mod fanout;
pub mod headers;
pub mod health;
mod outcome;
pub mod pool;
pub mod retry;
pub mod route;
pub mod throttle;
pub mod transaction;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{
    AuthMechanism, DeliveryConfig, DeliverySettings, QueueConfig, RouteConfig, TlsMode,
    UpstreamConfig,
};

pub use health::Circuits;

use crate::limits::{Limiter, LimitsConfig};
use crate::metrics::{Metrics, StoreOperation, UpstreamMetrics};
use crate::store::{
    new_queue_id, ClaimedMessage, OutcomeKind, RecipientOutcome, Store, StoreError,
};

/// Claims of one node start at least this far apart while the queue is
/// drained (a claim came back with less than a full batch): one claim then
/// takes what arrived meanwhile instead of every worker polling for a
/// message or two (each claim is a statement and a commit in the store).
/// A full batch means a backlog: the next claim may start at once.
const CLAIM_SPACING: Duration = Duration::from_millis(5);

use circuit::Circuit;
use outcome::Attempted;
use pool::Pool;
use retry::RetryPolicy;
use route::Router;
use throttle::UpstreamThrottle;
use upstream::{Upstream, UpstreamError};

/// Why delivery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The `[queue]`, `[[upstream]]` or `[[route]]` config is inconsistent.
    #[error("delivery config: {0}")]
    Config(String),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The queue gauges now (`QueueStore::queue_stats`), for
/// [`run_queue_sampler`](crate::metrics::run_queue_sampler).
pub async fn sample_queue(store: &dyn Store) -> Result<crate::metrics::QueueStats, StoreError> {
    let s = store.queue_stats(now_ms()).await?;
    Ok(crate::metrics::QueueStats {
        depth: s.depth,
        oldest_age: Duration::from_millis(s.oldest_age_ms.max(0) as u64),
    })
}

/// Unix milliseconds now (re-exported: tests and tools use this path).
pub use crate::time::now_ms;

struct UpstreamState {
    pool: Pool,
    /// One permit per pool connection, held from the start of a transaction
    /// until its outcome is committed: at most one delivered-but-unrecorded
    /// message per connection (the duplicates a crash can cause).
    unrecorded: Arc<tokio::sync::Semaphore>,
    circuit: Arc<Mutex<Circuit>>,
    metrics: Option<UpstreamMetrics>,
    throttle: UpstreamThrottle,
    patterns: Vec<String>,
    /// `add_headers` rendered, put above every message sent there.
    added_headers: Bytes,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Memory budget for bodies too large to come with their claim, in MiB.
/// Loading one costs about twice its size for a moment (database row plus
/// the decoded bytes), so 20 concurrent 25 MB messages are delivered a few
/// at a time instead of all loaded at once.
const LARGE_BODY_BUDGET_MIB: u32 = 128;

struct Engine {
    store: Arc<dyn Store>,
    /// Recipients in a claim of this node, from the claim until their
    /// outcome is recorded, with when they were claimed. When a lease
    /// lapses meanwhile (the store was away, so neither the outcome nor a
    /// renewal could be written), this node may claim them again: such
    /// claims skip them, they are still being delivered or recorded.
    in_hand: Mutex<HashMap<i64, Instant>>,
    /// Claims hold it shared from the claim to skipping [`Engine::in_hand`];
    /// letting go of recipients whose lease may have lapsed waits for it,
    /// so one claimed just before its outcome landed is not sent again.
    claim_gate: tokio::sync::RwLock<()>,
    /// When the next claim of this node may start ([`CLAIM_SPACING`]).
    next_claim: Mutex<Instant>,
    large_bodies: Arc<tokio::sync::Semaphore>,
    queue: QueueConfig,
    router: Router,
    upstreams: HashMap<String, UpstreamState>,
    retry: RetryPolicy,
    hostname: String,
    shutdown: CancellationToken,
    metrics: Option<Arc<Metrics>>,
    dsn_from: Option<String>,
    dsn_signer: Option<Arc<crate::dkim::Signer>>,
}

/// The delivery subsystem of one node.
pub struct Delivery;

/// A started delivery subsystem.
pub struct Started {
    /// Completes once delivery stopped after its `shutdown` was cancelled.
    pub handle: JoinHandle<()>,
    /// The upstreams' circuit breakers, for `/health/upstreams`.
    pub circuits: Circuits,
}

impl Delivery {
    /// Validates `config`, prepares the upstreams (TLS roots, CA files,
    /// pins) and starts `config.queue.workers` workers plus a janitor
    /// (expired leases, delivery log pruning). Cancel `shutdown` to stop:
    /// workers finish the message they are delivering, release the rest of
    /// their claim, and the returned handle completes.
    pub fn start(
        store: Arc<dyn Store>,
        config: DeliveryConfig,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, DeliveryError> {
        Ok(Self::start_with_metrics(store, config, shutdown, None)?.handle)
    }

    /// [`start`](Self::start), recording into `metrics` (when given), with
    /// a limiter of delivery's own (upstream rates per node).
    pub fn start_with_metrics(
        store: Arc<dyn Store>,
        config: DeliveryConfig,
        shutdown: CancellationToken,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Started, DeliveryError> {
        let limiter = Limiter::new(
            LimitsConfig::default(),
            None,
            Arc::new(crate::limits::SystemClock),
        )
        .map_err(|e| DeliveryError::Config(e.to_string()))?;
        Self::start_with(store, config, shutdown, metrics, Arc::new(limiter))
    }

    /// [`start`](Self::start), recording into `metrics` (when given): per
    /// upstream the recipients' attempt results, transaction durations and
    /// circuit state; DSNs generated; claim and record-outcome store timings.
    /// Upstream rates (`rate`, `burst`) are paced by `limiter`: the node's,
    /// so that with the `postgres` limits backend they hold for all nodes
    /// together. Also returns the circuit breakers, for `/health/upstreams`.
    pub fn start_with(
        store: Arc<dyn Store>,
        config: DeliveryConfig,
        shutdown: CancellationToken,
        metrics: Option<Arc<Metrics>>,
        limiter: Arc<Limiter>,
    ) -> Result<Started, DeliveryError> {
        config.validate()?;
        let hostname = if config.hostname.is_empty() {
            "localhost".to_string()
        } else {
            config.hostname.clone()
        };
        let mut upstreams = HashMap::new();
        let mut circuits = Vec::new();
        for u in &config.upstreams {
            let patterns = u
                .throttle_patterns
                .iter()
                .map(|p| p.to_lowercase())
                .collect();
            let circuit = Arc::new(Mutex::new(Circuit::new(
                config.queue.circuit_failures,
                config.queue.circuit_cooldown,
            )));
            circuits.push((u.name.clone(), circuit.clone()));
            let state = UpstreamState {
                circuit,
                metrics: metrics.as_ref().map(|m| m.upstream(&u.name)),
                throttle: UpstreamThrottle::new(&u.name, u.rate, u.burst, limiter.clone()),
                pool: Pool::new(Upstream::new(u.clone(), &hostname)?),
                unrecorded: Arc::new(tokio::sync::Semaphore::new(u.max_connections.max(1))),
                patterns,
                added_headers: headers::render(&u.add_headers),
            };
            upstreams.insert(u.name.clone(), state);
        }
        let q = &config.queue;
        let engine = Arc::new(Engine {
            store,
            in_hand: Mutex::default(),
            claim_gate: tokio::sync::RwLock::new(()),
            next_claim: Mutex::new(Instant::now()),
            large_bodies: Arc::new(tokio::sync::Semaphore::new(LARGE_BODY_BUDGET_MIB as usize)),
            router: config.router(),
            retry: RetryPolicy {
                initial: q.retry_initial,
                max: q.retry_max,
                multiplier: q.retry_multiplier,
                jitter: q.retry_jitter,
            },
            queue: config.queue.clone(),
            upstreams,
            hostname,
            shutdown,
            metrics,
            dsn_from: config.dsn_from.clone(),
            dsn_signer: config.dsn_signer.clone(),
        });
        let node_id = if config.node_id.is_empty() {
            format!("{}-{}", engine.hostname, std::process::id())
        } else {
            config.node_id.clone()
        };
        // Every worker of this process leases as one owner, so an outcome
        // retried by one worker still counts after another worker of the
        // node re-claimed the recipient (see `Engine::record`). The suffix
        // keeps a restarted node from reusing its predecessor's leases.
        let owner = format!(
            "{node_id}/{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        info!(lease_owner = %owner, "delivery starting");
        let workers = if engine.upstreams.is_empty() {
            warn!("no [[upstream]] configured: messages are queued but not delivered");
            0
        } else {
            engine.queue.workers
        };
        let handle = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..workers {
                let e = engine.clone();
                let owner = owner.clone();
                tasks.spawn(async move { e.worker(owner).await });
            }
            let e = engine.clone();
            tasks.spawn(async move { e.janitor().await });
            while tasks.join_next().await.is_some() {}
            for u in engine.upstreams.values() {
                u.pool.close_idle().await;
            }
        });
        Ok(Started {
            handle,
            circuits: Circuits::new(circuits),
        })
    }
}

impl Engine {
    fn lease_ms(&self) -> i64 {
        self.queue.lease.as_millis() as i64
    }

    /// Waits for this node's next claim slot ([`CLAIM_SPACING`]) and takes
    /// it; false if shut down meanwhile.
    async fn claim_slot(&self) -> bool {
        loop {
            let wait = {
                let mut next = lock(&self.next_claim);
                let now = Instant::now();
                if *next <= now {
                    *next = now + CLAIM_SPACING;
                    return true;
                }
                *next - now
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    async fn worker(&self, owner: String) {
        while !self.shutdown.is_cancelled() {
            if !self.claim_slot().await {
                break;
            }
            let started = Instant::now();
            let gate = self.claim_gate.read().await;
            let claimed = self
                .store
                .claim_due(&owner, now_ms(), self.lease_ms(), self.queue.batch)
                .await
                .map(|c| self.take_in_hand(c));
            drop(gate);
            self.store_timing(StoreOperation::Claim, started, claimed.is_err());
            let claimed = match claimed {
                Ok(c) => {
                    let recipients: usize = c.iter().map(|m| m.recipients.len()).sum();
                    if recipients >= self.queue.batch as usize {
                        // A backlog: let the next claim start at once.
                        *lock(&self.next_claim) = Instant::now();
                    }
                    c
                }
                Err(e) => {
                    warn!(error = %e, "queue claim failed");
                    Vec::new()
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(self.queue.poll_interval) => {}
                    _ = self.shutdown.cancelled() => break,
                }
                continue;
            }
            if self.shutdown.is_cancelled() {
                let ids = claimed
                    .iter()
                    .flat_map(|m| m.recipients.iter().map(|r| r.id))
                    .collect();
                self.release(&owner, claimed.into_iter()).await;
                self.let_go(ids).await;
                break;
            }
            self.process_claim(&owner, claimed).await;
        }
    }

    /// Delivers the messages of one claim concurrently (the pools bound the
    /// sessions) and records each message's outcomes as soon as its own
    /// attempt is over, in one transaction with any others already over
    /// (no waiting: a burst shares a commit by finishing while the previous
    /// one runs). Not waiting for the slowest message of the claim keeps
    /// the duplicate window of a crash to "between the upstream's 250 and
    /// this commit"; the connection's [`UpstreamState::unrecorded`] permit,
    /// dropped after the commit, keeps it to one message per connection.
    async fn process_claim(&self, owner: &str, claimed: Vec<ClaimedMessage>) {
        use futures::{FutureExt, StreamExt};
        let mut attempts: futures::stream::FuturesUnordered<_> = claimed
            .into_iter()
            .map(|m| self.deliver_message(m))
            .collect();
        while let Some(first) = attempts.next().await {
            let mut results = vec![first];
            while let Some(Some(more)) = attempts.next().now_or_never() {
                results.push(more);
            }
            let outcomes: Vec<RecipientOutcome> = results
                .iter()
                .flat_map(|a| a.outcomes.iter().cloned())
                .collect();
            if !outcomes.is_empty() {
                self.record(owner, &outcomes).await;
            }
            for a in &mut results {
                a.unrecorded.clear();
            }
            self.let_go(
                results
                    .iter()
                    .flat_map(|a| a.message.recipients.iter().map(|r| r.id))
                    .collect(),
            )
            .await;
            for Attempted {
                message: m,
                headers: body,
                outcomes,
                ..
            } in &results
            {
                // All-delivered messages were finished by `record_outcomes`.
                let bounced = outcomes
                    .iter()
                    .any(|o| matches!(o.kind, OutcomeKind::Failed | OutcomeKind::Expired));
                if bounced {
                    self.finish(m, body).await;
                }
            }
        }
    }

    /// Gives claimed recipients back, due now, without counting an attempt.
    async fn release(&self, owner: &str, messages: impl Iterator<Item = ClaimedMessage>) {
        let now = now_ms();
        let outcomes: Vec<RecipientOutcome> = messages
            .flat_map(|m| m.recipients)
            .map(|r| RecipientOutcome {
                recipient_id: r.id,
                kind: OutcomeKind::Deferred {
                    next_attempt_at: now,
                    route_index: r.route_index,
                    count_attempt: false,
                },
                upstream: None,
                reply: None,
                log: false,
            })
            .collect();
        if !outcomes.is_empty() {
            self.record(owner, &outcomes).await;
        }
    }

    async fn janitor(&self) {
        let every = (self.queue.lease / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut last_prune: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.shutdown.cancelled() => return,
            }
            match self.store.reclaim_expired(now_ms()).await {
                Ok(0) => {}
                Ok(n) => warn!(
                    count = n,
                    "reclaimed recipients whose delivery lease expired"
                ),
                Err(e) => warn!(error = %e, "lease reclaim failed"),
            }
            // Messages left all-final by a crash between two transactions.
            match self.store.unfinished_messages(100).await {
                Ok(list) => {
                    for m in list {
                        let body = self.store.load_body(&m.id).await.unwrap_or_default();
                        self.finish(&m, &body).await;
                    }
                }
                Err(e) => warn!(error = %e, "looking for unfinished messages failed"),
            }
            if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                last_prune = Some(Instant::now());
                let before = now_ms() - self.queue.log_retention.as_millis() as i64;
                if let Err(e) = self.store.prune_delivery_log(before).await {
                    warn!(error = %e, "delivery log pruning failed");
                }
            }
        }
    }

    /// One attempt for the claimed recipients of `m`: their outcomes, to be
    /// recorded by the caller (with the message and its headers, for a DSN).
    async fn deliver_message(&self, mut m: ClaimedMessage) -> Attempted {
        let now = now_ms();
        // Held until this attempt is over (the body is dropped by then).
        let mut _budget = None;
        let body = match m.body.take() {
            Some(b) => Ok(b),
            None => {
                let mib = u32::try_from((m.size.max(0) as u64 * 2).div_ceil(1 << 20))
                    .unwrap_or(u32::MAX)
                    .clamp(1, LARGE_BODY_BUDGET_MIB);
                _budget = self.large_bodies.clone().acquire_many_owned(mib).await.ok();
                self.store.load_body(&m.id).await
            }
        };
        if now >= m.expires_at {
            let outcomes = m
                .recipients
                .iter()
                .map(|r| {
                    info!(queue_id = %m.id, recipient = %r.address, attempts = r.attempts, "expired");
                    RecipientOutcome {
                        recipient_id: r.id,
                        kind: OutcomeKind::Expired,
                        upstream: None,
                        reply: Some("queue lifetime exceeded".into()),
                        log: true,
                    }
                })
                .collect();
            let headers = body.map(|b| headers_only(&b)).unwrap_or_default();
            return Attempted::unsent(m, headers, outcomes);
        }
        let body = match body {
            Ok(b) => b,
            // Deleted meanwhile (queue delete): nothing to record.
            Err(StoreError::NotFound(_)) => return Attempted::unsent(m, Bytes::new(), Vec::new()),
            Err(e) => {
                warn!(queue_id = %m.id, error = %e, "cannot load message body");
                let outcomes = m
                    .recipients
                    .iter()
                    .map(|r| RecipientOutcome {
                        recipient_id: r.id,
                        kind: OutcomeKind::Deferred {
                            next_attempt_at: now + self.queue.poll_interval.as_millis() as i64,
                            route_index: r.route_index,
                            count_attempt: false,
                        },
                        upstream: None,
                        reply: None,
                        log: false,
                    })
                    .collect();
                return Attempted::unsent(m, Bytes::new(), outcomes);
            }
        };
        let unrecorded = tokio::sync::Mutex::new(Vec::new());
        let outcomes = self.attempt_routes(&m, &body, &unrecorded).await;
        // Keep only what a DSN needs, so a claim does not pin its bodies.
        let bounced = outcomes
            .iter()
            .any(|o| matches!(o.kind, OutcomeKind::Failed | OutcomeKind::Expired));
        let headers = if bounced {
            headers_only(&body)
        } else {
            Bytes::new()
        };
        Attempted {
            message: m,
            headers,
            outcomes,
            unrecorded: unrecorded.into_inner(),
        }
    }

    /// Deletes the message once every recipient is final, enqueuing its DSN.
    async fn finish(&self, m: &ClaimedMessage, body: &Bytes) {
        let recipients = match self.store.final_recipients(&m.id).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                warn!(queue_id = %m.id, error = %e, "cannot read final recipients");
                return;
            }
        };
        let now = now_ms();
        let lifetime = self.queue.lifetime.as_millis() as i64;
        let dsn = dsn::build_from(
            m,
            body,
            &recipients,
            &self.hostname,
            self.dsn_from.as_deref(),
            new_queue_id(),
            now,
            now + lifetime,
        );
        let dsn = match dsn {
            Some(d) => Some(self.sign_dsn(d).await),
            None => None,
        };
        match self.store.finish_message(&m.id, now, dsn.as_ref()).await {
            Ok(true) => {
                if let Some(d) = &dsn {
                    if let Some(metrics) = &self.metrics {
                        metrics.bounce_generated();
                    }
                    for r in recipients.iter().filter(|r| r.status != "delivered") {
                        info!(queue_id = %m.id, recipient = %r.address, dsn_id = %d.id, sender = %m.sender, "bounced");
                    }
                }
            }
            Ok(false) => {}
            Err(e) => warn!(queue_id = %m.id, error = %e, "cannot finish message"),
        }
    }

    fn store_timing(&self, operation: StoreOperation, started: Instant, failed: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.store_operation(operation, started.elapsed(), failed);
        }
    }
}

/// A copy of the header section of `body` (what a DSN returns).
fn headers_only(body: &Bytes) -> Bytes {
    Bytes::copy_from_slice(dsn::header_block(body))
}
