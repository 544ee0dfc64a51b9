//! Every Prometheus metric postgate exports, declared once, with help text.
//!
//! [`Metrics::new`] registers the whole catalogue on a private
//! [`prometheus::Registry`]; [`Metrics::render`] produces the text exposition
//! served on `/metrics`. Callers never handle raw label values: each label is
//! a closed enum ([`Mechanism`], [`AuthResult`], [`RejectReason`], ...) or a
//! name registered once at start from the config (listeners, upstreams) and
//! kept as a handle ([`ListenerMetrics`], [`UpstreamMetrics`]). So the number
//! of series is bounded by the config, except per-user series, which exist
//! only when enabled and are capped (users past the cap count as `_other`).
//!
//! Names follow the Prometheus conventions: `postgate_` prefix, counters end
//! in `_total`, durations are `_seconds`, sizes are `_bytes`, timestamps are
//! `_timestamp_seconds`. The catalogue (name, type, labels, help) is also
//! available as data through [`Metrics::catalogue`]; docs/operations.md lists
//! it for operators and the deploy tests check dashboards and alerts against it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod cert;
mod events;
mod families;
mod journal;
mod labels;
mod sampler;

pub use cert::certificate_not_after;
pub use events::EventMetrics;
use families::{
    DeliveryFamilies, DkimFamilies, MessageFamilies, SmtpFamilies, StoreFamilies, UserFamilies,
};
pub use journal::{JournalFailure, JournalMetrics};
pub use sampler::{run_queue_sampler, QueueStats};

pub use labels::{
    AuthResult, CircuitState, ConnectionRefusal, DeliveryResult, DkimAlgorithm, DkimResult,
    LimitKind, LimitScope, Mechanism, RejectReason, StoreOperation, ThrottleCause, TlsMode,
};

/// The label value that per-user series past the cap are counted under.
pub const OTHER_USER: &str = "_other";

/// The Prometheus type of a catalogue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count of observations.
    Histogram,
}

/// One declared metric, as data (for docs and the deploy checks).
#[derive(Debug, Clone)]
pub struct MetricInfo {
    /// Full name, e.g. `postgate_auth_attempts_total`.
    pub name: String,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Label names, in order.
    pub labels: Vec<String>,
    /// The HELP text.
    pub help: String,
}

/// Options that change which series exist.
#[derive(Debug, Clone, Default)]
pub struct MetricsOptions {
    /// Export `postgate_user_*` series labelled with the username.
    pub per_user: bool,
    /// At most this many distinct users get their own series; later ones
    /// are counted under `user="_other"`.
    pub per_user_cap: usize,
}

/// Every metric of postgate. Create one per process (or per test), share it
/// behind an `Arc`. All methods are cheap (atomic adds) and never fail.
pub struct Metrics {
    registry: Registry,
    catalogue: Vec<MetricInfo>,
    smtp: SmtpFamilies,
    messages: MessageFamilies,
    delivery: DeliveryFamilies,
    dkim: DkimFamilies,
    store: StoreFamilies,
    users: UserFamilies,
    per_user: Option<PerUser>,
    events: EventMetrics,
    journal: JournalMetrics,
}

struct PerUser {
    cap: usize,
    seen: Mutex<HashSet<String>>,
}

/// Message sizes: 1 KiB to 64 MiB, factor 4.
const SIZE_BUCKETS: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];
/// One SMTP transaction with an upstream: 50 ms to 2 min.
const DELIVERY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// One store transaction: 0.5 ms to 2.5 s.
const STORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Registers collectors and records them in the catalogue.
struct Declarer {
    registry: Registry,
    catalogue: Vec<MetricInfo>,
}

impl Declarer {
    fn add<C: Collector + Clone + 'static>(&mut self, kind: MetricKind, c: C) -> C {
        for desc in c.desc() {
            self.catalogue.push(MetricInfo {
                name: desc.fq_name.clone(),
                kind,
                labels: desc.variable_labels.clone(),
                help: desc.help.clone(),
            });
        }
        // Names are constants of this file; a clash is a bug caught by the unit tests.
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric registered twice");
        c
    }
    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric");
        self.add(MetricKind::Counter, c)
    }
    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(MetricKind::Counter, c)
    }
    fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric");
        self.add(MetricKind::Gauge, g)
    }
    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(MetricKind::Gauge, g)
    }
    fn float_gauge(&mut self, name: &str, help: &str) -> Gauge {
        let g = Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
        self.add(MetricKind::Gauge, g)
    }
    fn float_gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(MetricKind::Gauge, g)
    }
    fn histogram(&mut self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let h = Histogram::with_opts(opts).expect("valid metric");
        self.add(MetricKind::Histogram, h)
    }
    fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        b: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(b.to_vec());
        let h = HistogramVec::new(opts, labels).expect("valid metric");
        self.add(MetricKind::Histogram, h)
    }
}

impl Metrics {
    /// The whole catalogue on a registry of its own that nothing serves:
    /// what a part started without the node's metrics records into (tests,
    /// CLI probes), so that metrics are always present.
    pub fn detached() -> Arc<Metrics> {
        Arc::new(Metrics::new(&MetricsOptions::default()))
    }

    /// Declares and registers the whole catalogue, plus the standard
    /// `process_*` metrics (CPU, memory, open files) on Linux.
    pub fn new(options: &MetricsOptions) -> Metrics {
        let mut d = Declarer {
            registry: Registry::new(),
            catalogue: Vec::new(),
        };
        let build_info = d.gauge_vec(
            "postgate_build_info",
            "Always 1; the label carries the running postgate version.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let smtp = SmtpFamilies::declare(&mut d);
        let messages = MessageFamilies::declare(&mut d);
        let delivery = DeliveryFamilies::declare(&mut d);
        let dkim = DkimFamilies::declare(&mut d);
        let store = StoreFamilies::declare(&mut d);
        let users = UserFamilies::declare(&mut d);
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            // Not in the catalogue: standard names, documented by Prometheus.
            let _ = d.registry.register(Box::new(process));
        }
        let events = EventMetrics::declare(&mut d);
        let journal = JournalMetrics::declare(&mut d);
        Metrics {
            registry: d.registry,
            catalogue: d.catalogue,
            smtp,
            messages,
            delivery,
            dkim,
            store,
            users,
            per_user: options.per_user.then(|| PerUser {
                cap: options.per_user_cap,
                seen: Mutex::new(HashSet::new()),
            }),
            events,
            journal,
        }
    }

    /// The journaling copies metrics.
    pub fn journal(&self) -> &JournalMetrics {
        &self.journal
    }

    /// The delivery events and webhook metrics.
    pub fn events(&self) -> &EventMetrics {
        &self.events
    }

    /// The declared metrics (name, type, labels, help), in declaration order.
    pub fn catalogue(&self) -> &[MetricInfo] {
        &self.catalogue
    }

    /// The registry, for code that must add a collector of its own (prefer
    /// declaring it here).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format (version 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding only fails on inconsistent metric families, which the
        // declarations above cannot produce.
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// The handle of the configured listener `name`. Call once per listener
    /// at start (and again after a reload; handles of the same name share
    /// series).
    pub fn listener(&self, name: &str, tls: TlsMode) -> ListenerMetrics {
        ListenerMetrics {
            connections: self
                .smtp
                .connections
                .with_label_values(&[name, tls.as_str()]),
            refused: ConnectionRefusal::ALL
                .iter()
                .map(|r| {
                    self.smtp
                        .connections_refused
                        .with_label_values(&[name, r.as_str()])
                })
                .collect(),
            sessions_active: self.smtp.sessions_active.with_label_values(&[name]),
            tls_failures: self.smtp.tls_handshake_failures.with_label_values(&[name]),
            certificate_expiry: self.smtp.tls_certificate_expiry.with_label_values(&[name]),
        }
    }

    /// The handle of the configured upstream `name`. Call once per upstream at start.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        let circuit = self.delivery.upstream_circuit.with_label_values(&[name]);
        circuit.set(CircuitState::Closed as i64);
        UpstreamMetrics {
            attempts: DeliveryResult::ALL
                .iter()
                .map(|r| {
                    self.delivery
                        .delivery_attempts
                        .with_label_values(&[name, r.as_str()])
                })
                .collect(),
            duration: self.delivery.delivery_duration.with_label_values(&[name]),
            circuit,
            throttled: ThrottleCause::ALL
                .iter()
                .map(|c| {
                    self.delivery
                        .upstream_throttled
                        .with_label_values(&[name, c.as_str()])
                })
                .collect(),
        }
    }

    /// The OAuth series of upstream `name`. Call once per `auth = "xoauth2"`
    /// upstream at start (only those have the series).
    pub fn oauth(&self, name: &str) -> OAuthMetrics {
        let results = OAuthMetrics::RESULTS;
        OAuthMetrics {
            requests: results
                .iter()
                .map(|r| {
                    self.delivery
                        .oauth_token_requests
                        .with_label_values(&[name, r])
                })
                .collect(),
            expiry: self.delivery.oauth_token_expiry.with_label_values(&[name]),
        }
    }

    /// Counts one AUTH attempt.
    pub fn auth_attempt(&self, mechanism: Mechanism, result: AuthResult) {
        self.smtp
            .auth_attempts
            .with_label_values(&[mechanism.as_str(), result.as_str()])
            .inc();
    }

    /// Counts one message whose data was fully received.
    pub fn message_received(&self) {
        self.messages.messages_received.inc();
    }

    /// Counts one refused transaction (at MAIL, RCPT or end of data).
    pub fn message_rejected(&self, reason: RejectReason) {
        self.messages
            .messages_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts one message committed to the queue: `recipients` recipients,
    /// `size` bytes as stored, sent by the authenticated `user` (per-user
    /// series only when enabled).
    pub fn message_queued(&self, user: Option<&str>, recipients: usize, size: u64) {
        self.messages.messages_queued.inc();
        self.messages.recipients.inc_by(recipients as u64);
        self.messages.message_size.observe(size as f64);
        if let Some(label) = user.and_then(|u| self.user_label(u)) {
            self.users.user_messages.with_label_values(&[&label]).inc();
            self.users
                .user_recipients
                .with_label_values(&[&label])
                .inc_by(recipients as u64);
            self.users
                .user_bytes
                .with_label_values(&[&label])
                .inc_by(size);
        }
    }

    /// Counts one request refused by a rate limit.
    pub fn rate_limited(&self, scope: LimitScope, limit: LimitKind) {
        self.messages
            .rate_limited
            .with_label_values(&[scope.as_str(), limit.as_str()])
            .inc();
    }

    /// Moves the bytes leased from the SMTP memory budget by `delta`.
    pub fn message_memory(&self, delta: i64) {
        self.messages.message_memory.add(delta);
    }

    /// Sets the sampled queue gauges: messages not yet finished and the age
    /// of the oldest one (zero when the queue is empty).
    pub fn set_queue_stats(&self, depth: u64, oldest_age: Duration) {
        self.delivery
            .queue_depth
            .set(depth.min(i64::MAX as u64) as i64);
        self.delivery.queue_oldest_age.set(oldest_age.as_secs_f64());
    }

    /// Counts one DSN generated.
    pub fn bounce_generated(&self) {
        self.delivery.bounces.inc();
    }

    /// Counts one DKIM signature.
    pub fn dkim_signature(&self, algorithm: DkimAlgorithm, result: DkimResult) {
        self.dkim
            .dkim_signatures
            .with_label_values(&[algorithm.as_str(), result.as_str()])
            .inc();
    }

    /// Counts one message relayed unsigned (no key for its From domain).
    pub fn dkim_unsigned(&self) {
        self.dkim.dkim_unsigned.inc();
    }

    /// Counts one message relayed unsigned because its header From is not
    /// a sender the login may use.
    pub fn dkim_not_permitted(&self) {
        self.dkim.dkim_not_permitted.inc();
    }

    /// Records one store operation: its duration, and an error when `failed`.
    pub fn store_operation(&self, operation: StoreOperation, elapsed: Duration, failed: bool) {
        self.store
            .store_duration
            .with_label_values(&[operation.as_str()])
            .observe(elapsed.as_secs_f64());
        if failed {
            self.store
                .store_errors
                .with_label_values(&[operation.as_str()])
                .inc();
        }
    }

    /// The label for `user`: itself while under the cap (or already seen),
    /// `_other` past it, `None` when per-user metrics are off.
    fn user_label(&self, user: &str) -> Option<String> {
        let per_user = self.per_user.as_ref()?;
        let mut seen = per_user.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(user) {
            return Some(user.to_string());
        }
        if seen.len() < per_user.cap {
            seen.insert(user.to_string());
            return Some(user.to_string());
        }
        Some(OTHER_USER.to_string())
    }
}

/// The series of one listener. Cheap to clone; share it with every session.
#[derive(Clone)]
pub struct ListenerMetrics {
    connections: IntCounter,
    refused: Vec<IntCounter>,
    sessions_active: IntGauge,
    tls_failures: IntCounter,
    certificate_expiry: Gauge,
}

impl ListenerMetrics {
    /// Counts one accepted TCP connection.
    pub fn connection_accepted(&self) {
        self.connections.inc();
    }

    /// Counts one connection refused at accept.
    pub fn connection_refused(&self, reason: ConnectionRefusal) {
        let i = ConnectionRefusal::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.refused[i].inc();
    }

    /// Marks a session open until the returned guard is dropped.
    pub fn session_started(&self) -> SessionGuard {
        self.sessions_active.inc();
        SessionGuard(self.sessions_active.clone())
    }

    /// Counts one failed TLS handshake.
    pub fn tls_handshake_failed(&self) {
        self.tls_failures.inc();
    }

    /// Records the notAfter (Unix seconds) of the certificate now served;
    /// call at start and after each certificate reload.
    pub fn set_certificate_expiry(&self, not_after_unix: i64) {
        self.certificate_expiry.set(not_after_unix as f64);
    }
}

/// Decrements `postgate_sessions_active` when dropped.
pub struct SessionGuard(IntGauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The series of one upstream. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamMetrics {
    attempts: Vec<IntCounter>,
    duration: Histogram,
    circuit: IntGauge,
    throttled: Vec<IntCounter>,
}

impl UpstreamMetrics {
    /// Counts `recipients` recipient outcomes of one attempt.
    pub fn attempts(&self, result: DeliveryResult, recipients: u64) {
        let i = DeliveryResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.attempts[i].inc_by(recipients);
    }

    /// Records the duration of one SMTP transaction with this upstream.
    pub fn transaction_duration(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts `recipients` held back by this upstream's throttle.
    pub fn throttled(&self, cause: ThrottleCause, recipients: u64) {
        let i = ThrottleCause::ALL
            .iter()
            .position(|c| *c == cause)
            .unwrap_or(0);
        self.throttled[i].inc_by(recipients);
    }

    /// Sets the circuit breaker state.
    pub fn set_circuit(&self, state: CircuitState) {
        self.circuit.set(state as i64);
    }
}

/// The OAuth token series of one upstream. Cheap to clone.
#[derive(Clone)]
pub struct OAuthMetrics {
    requests: Vec<IntCounter>,
    expiry: Gauge,
}

impl OAuthMetrics {
    /// The `result` label values of token requests.
    pub const RESULTS: [&'static str; 4] = ["ok", "refused", "unavailable", "invalid"];

    /// Counts one token request with `result` (one of [`Self::RESULTS`]).
    pub fn token_request(&self, result: &str) {
        let i = Self::RESULTS.iter().position(|r| *r == result).unwrap_or(3);
        self.requests[i].inc();
    }

    /// Sets when the token just obtained expires (Unix seconds).
    pub fn set_token_expiry(&self, unix_secs: f64) {
        self.expiry.set(unix_secs);
    }
}

#[cfg(test)]
mod tests;
