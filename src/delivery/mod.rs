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
//! again. While the process lives, a heartbeat renews the leases of what it
//! claimed ([`worker`]), so a slow delivery is never sent twice. A
//! connection carries its next message only once the outcome of its last
//! one is committed ([`pool::Held`]), so a crash repeats at most one
//! message per upstream connection.

pub mod admin;
mod attempt;
mod bounce;
pub mod circuit;
pub mod config;
pub mod dsn;
pub mod extensions;
mod fanout;
pub mod headers;
pub mod health;
mod notices;
pub mod oauth;
pub mod pool;
pub mod probe;
pub mod retry;
pub mod route;
mod sasl_client;
pub mod throttle;
pub mod tls_client;
pub mod transaction;
pub mod upstream;
mod worker;

use std::collections::{HashMap, HashSet};
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

use circuit::Circuit;
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

/// First wait before retrying an outcome commit the store refused; it
/// doubles up to [`OUTCOME_RETRY_MAX`].
const OUTCOME_RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Longest wait between two tries of an outcome commit (so outcomes land
/// within this long of the store coming back).
const OUTCOME_RETRY_MAX: Duration = Duration::from_secs(2);
/// Once shutting down, how long outcomes are still retried before they are
/// given up (their messages are then sent again once the lease expires).
const OUTCOME_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

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
    /// pins) and starts the worker loop (`config.queue.workers` claim
    /// loops, a task per claimed message, the outcome recorder and the
    /// lease heartbeat: see [`worker`]) plus a janitor (expired leases,
    /// delivery log pruning). Cancel `shutdown` to stop: messages being
    /// delivered finish, claimed ones that have not started are released,
    /// every outcome is recorded, and the returned handle completes.
    pub fn start(
        store: Arc<dyn Store>,
        config: DeliveryConfig,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, DeliveryError> {
        Ok(Self::start_with_metrics(store, config, shutdown, Metrics::detached())?.handle)
    }

    /// [`start`](Self::start), recording into `metrics`, with
    /// a limiter of delivery's own (upstream rates per node).
    pub fn start_with_metrics(
        store: Arc<dyn Store>,
        config: DeliveryConfig,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Result<Started, DeliveryError> {
        let limiter = Limiter::new(
            LimitsConfig::default(),
            None,
            Arc::new(crate::limits::SystemClock),
        )
        .map_err(|e| DeliveryError::Config(e.to_string()))?;
        Self::start_with(store, config, shutdown, metrics, Arc::new(limiter))
    }

    /// [`start`](Self::start), recording into `metrics`: per
    /// upstream the recipients' attempt results, transaction durations and
    /// circuit state; DSNs generated; claim and record-outcome store timings.
    /// Upstream rates (`rate`, `burst`) are paced by `limiter`: the node's,
    /// so that with the `postgres` limits backend they hold for all nodes
    /// together. Also returns the circuit breakers, for `/health/upstreams`.
    pub fn start_with(
        store: Arc<dyn Store>,
        config: DeliveryConfig,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
        limiter: Arc<Limiter>,
    ) -> Result<Started, DeliveryError> {
        config.validate()?;
        if let Err(e) = config.check_lease() {
            warn!(error = %e, "delivery leases may run out under a slow delivery while the store is away");
        }
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
                metrics: metrics.upstream(&u.name),
                throttle: UpstreamThrottle::new(&u.name, u.rate, u.burst, limiter.clone()),
                pool: Pool::new(Upstream::with_metrics(u.clone(), &hostname, &metrics)?),
                patterns,
                added_headers: headers::render(&u.add_headers),
            };
            upstreams.insert(u.name.clone(), state);
        }
        let q = &config.queue;
        // One lease owner per node start: `node_id` (default host-pid)
        // plus a suffix, so a restarted node never reuses its predecessor's
        // leases, and an outcome retried after a lapse still counts until
        // another node claims the recipient.
        let node_id = if config.node_id.is_empty() {
            format!("{hostname}-{}", std::process::id())
        } else {
            config.node_id.clone()
        };
        let node = format!(
            "{node_id}/{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        info!(lease_owner = %node, "delivery starting");
        let room = q
            .workers
            .saturating_mul(q.batch as usize)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let engine = Arc::new(Engine {
            store,
            owner: node,
            leased: Mutex::new(HashSet::new()),
            waiting: Arc::new(tokio::sync::Semaphore::new(room)),
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
        let deliver = !engine.upstreams.is_empty();
        if !deliver {
            warn!("no [[upstream]] configured: messages are queued but not delivered");
        }
        let handle = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            if deliver {
                tasks.spawn(worker::run(engine.clone()));
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

struct UpstreamState {
    pool: Pool,
    circuit: Arc<Mutex<Circuit>>,
    metrics: UpstreamMetrics,
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

/// The running delivery of one node, shared by its tasks. Its methods are
/// split by step, one file each: the claim loops, recorder and heartbeat
/// in [`worker`], a message's routes in `fanout.rs`, one upstream
/// transaction in `attempt.rs`, success and delay notices in `notices.rs`,
/// DSN signing and routing in `bounce.rs`; recording, finishing and the
/// janitor below.
struct Engine {
    store: Arc<dyn Store>,
    /// The lease owner of every claim of this node (one per start).
    owner: String,
    /// Recipients claimed and not yet recorded: the heartbeat renews them.
    leased: Mutex<HashSet<i64>>,
    /// Room for claimed messages that have not started yet (`workers ×
    /// batch` permits; see [`worker`]).
    waiting: Arc<tokio::sync::Semaphore>,
    /// When the next claim of this node may start (`worker::CLAIM_SPACING`).
    next_claim: Mutex<Instant>,
    large_bodies: Arc<tokio::sync::Semaphore>,
    queue: QueueConfig,
    router: Router,
    upstreams: HashMap<String, UpstreamState>,
    retry: RetryPolicy,
    hostname: String,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    dsn_from: Option<String>,
    dsn_signer: Option<Arc<crate::dkim::Signer>>,
}

impl Engine {
    fn lease_ms(&self) -> i64 {
        self.queue.lease.as_millis() as i64
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
                        let kept = dsn::kept_for_dsn(&m, &body, self.queue.dsn_return_max);
                        self.finish(&m, &kept).await;
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

    /// Records outcomes, retrying with backoff (up to
    /// [`OUTCOME_RETRY_MAX`] apart) until the store takes them: a dropped
    /// outcome means the message is sent again once its lease expires.
    /// Meanwhile the recipients stay in `leased`: the heartbeat keeps their
    /// leases and this node's claims skip them. Once shutting down it gives
    /// up after [`OUTCOME_SHUTDOWN_WAIT`], saying so.
    async fn record(&self, owner: &str, outcomes: &[RecipientOutcome]) {
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

    /// Gives the claimed recipients of `m` back, due now, without counting
    /// an attempt (shutdown before the message started).
    fn release(&self, m: &ClaimedMessage) -> Vec<RecipientOutcome> {
        let now = now_ms();
        m.recipients
            .iter()
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
            .collect()
    }

    /// One attempt for the claimed recipients of `m`: their outcomes, to be
    /// recorded by the caller (with the message and its body, for a DSN),
    /// and the connection slots it used, to be kept until they are.
    /// `waiting` is given up once the message has a connection.
    async fn deliver_message(
        &self,
        mut m: ClaimedMessage,
        waiting: worker::Waiting,
    ) -> (
        ClaimedMessage,
        Bytes,
        Vec<RecipientOutcome>,
        Vec<pool::Held>,
    ) {
        if self.shutdown.is_cancelled() {
            let outcomes = self.release(&m);
            return (m, Bytes::new(), outcomes, Vec::new());
        }
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
                .collect::<Vec<_>>();
            if crate::journal::is_copy(&m.sender, m.is_dsn) {
                crate::journal::count_failures(self.metrics.journal(), &outcomes);
            }
            let kept = body
                .map(|b| dsn::kept_for_dsn(&m, &b, self.queue.dsn_return_max))
                .unwrap_or_default();
            return (m, kept, outcomes, Vec::new());
        }
        let body = match body {
            Ok(b) => b,
            // Deleted meanwhile (queue delete): nothing to record.
            Err(StoreError::NotFound(_)) => return (m, Bytes::new(), Vec::new(), Vec::new()),
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
                return (m, Bytes::new(), outcomes, Vec::new());
            }
        };
        let mut held = Vec::new();
        let (outcomes, relayed) = self.attempt_routes(&m, &body, &waiting, &mut held).await;
        if crate::journal::is_copy(&m.sender, m.is_dsn) {
            crate::journal::count_failures(self.metrics.journal(), &outcomes);
        }
        self.notices(&m, &body, &outcomes, &relayed).await;
        // Keep only what a DSN needs, so a claim does not pin its bodies.
        let bounced = outcomes
            .iter()
            .any(|o| matches!(o.kind, OutcomeKind::Failed | OutcomeKind::Expired));
        let kept = if bounced {
            dsn::kept_for_dsn(&m, &body, self.queue.dsn_return_max)
        } else {
            Bytes::new()
        };
        (m, kept, outcomes, held)
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
        let dsn = dsn::build_report(
            dsn::Kind::Failed,
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
                    self.metrics.bounce_generated();
                    for r in recipients
                        .iter()
                        .filter(|r| r.status == "failed" || r.status == "expired")
                    {
                        info!(queue_id = %m.id, recipient = %r.address, dsn_id = %d.id, sender = %m.sender, "bounced");
                    }
                }
            }
            Ok(false) => {}
            Err(e) => warn!(queue_id = %m.id, error = %e, "cannot finish message"),
        }
    }

    fn store_timing(&self, operation: StoreOperation, started: Instant, failed: bool) {
        self.metrics
            .store_operation(operation, started.elapsed(), failed);
    }
}
