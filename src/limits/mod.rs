//! Rate limits and brute-force protection (issue #6).
//!
//! One [`Limiter`] per process answers every limit question of an SMTP
//! session: may this IP connect, may this AUTH proceed (and after what
//! delay), may this user open another session, may this message with N
//! recipients be accepted. Refusals are [`LimitRefusal`]s (defined with the
//! session's ports) carrying scope, kind, a human reason and a retry-after;
//! `smtp/reply.rs` maps them to replies (`421 4.7.0` at connect, `454 4.7.0`
//! at AUTH, `451 4.7.1` otherwise).
//!
//! Rates use GCRA ([`gcra`]), kept either in this process
//! (`backend = "local"`: no I/O) or in the store's `limit_counters` table
//! (`"postgres"`/`"store"`: one database round trip per counter checked,
//! shared by every node). Concurrency limits (sessions per user, connections
//! per IP) are always counted per node, with guards released on drop.
//!
//! When the store cannot be reached, rate checks fail open (logged): an
//! outage of the limit store must not stop mail that the queue accepts.

mod brute_force;
pub mod clock;
pub mod config;
mod counters;
pub mod gcra;
pub mod keys;
mod message;
pub mod operator;
mod session;
mod slots;
mod snapshot;

pub use session::LimiterPorts;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use config::{LimitsBackend, LimitsConfig};
pub use slots::SlotGuard;
pub use snapshot::{CounterSnapshot, LimitsSnapshot};

use snapshot::human_period;

use counters::{Counters, LocalCounters};
use gcra::Rate;
use keys::kind;
use slots::Slots;

pub use crate::smtp::ports::{LimitKind, LimitRefusal, LimitScope};
use crate::store::{
    GcraOutcome, LimitOverrides, LimitStore, LoginCredential, LoginRecord, StoreError,
};

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// A refusal for `(scope, kind)`, waiting `retry_after_ms` (at least 1 s).
fn refusal(
    (scope, kind): (LimitScope, LimitKind),
    retry_after_ms: u64,
    reason: String,
) -> LimitRefusal {
    LimitRefusal {
        scope,
        kind,
        retry_after: Duration::from_millis(retry_after_ms.max(1000)),
        reason,
    }
}

/// Outcome of [`Limiter::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is held `wait` from now: wait that long, then go.
    Granted {
        /// Zero when the slot is free now.
        wait: Duration,
    },
    /// No slot within the allowed wait; nothing was taken. After
    /// `retry_after` one would be.
    Refused {
        /// Exact (millisecond) time until a reservation would be granted.
        retry_after: Duration,
    },
}

/// Errors of the operator API.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// The configuration cannot work (e.g. a shared backend without a store).
    #[error("limits: {0}")]
    Config(String),
    /// The limit store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An operator's request names nothing usable.
    #[error("limits: {0}")]
    Invalid(String),
}

/// One session slot of a user; the slot is freed when this is dropped.
pub type SessionGuard = SlotGuard<i64>;
/// One connection slot of a client IP; freed when dropped.
pub type ConnectionGuard = SlotGuard<String>;

/// Who a message is counted against: the user, and the credential when it
/// has overrides of its own (each overridden field is then counted per
/// credential too, on top of the user's counter).
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    /// `users.id`: the key of the user's counters.
    pub user_id: i64,
    /// For refusal reasons only.
    pub username: &'a str,
    /// The user's own overrides (`None` fields: config defaults).
    pub user_limits: &'a LimitOverrides,
    /// `credentials.id`: the key of the credential's counters.
    pub credential_id: i64,
    /// For refusal reasons only.
    pub credential_label: &'a str,
    /// The credential's own overrides (only `Some` fields are counted per
    /// credential; see [`credential_only`] when holding merged ones).
    pub credential_limits: &'a LimitOverrides,
}

impl<'a> Account<'a> {
    /// The account of a login: `credential` must be one of `record`'s.
    pub fn from_login(record: &'a LoginRecord, credential: &'a LoginCredential) -> Self {
        Account {
            user_id: record.user_id,
            username: &record.username,
            user_limits: &record.limits,
            credential_id: credential.id,
            credential_label: &credential.label,
            credential_limits: &credential.limits,
        }
    }
}

/// Credential overrides over user overrides, field by field (a credential's
/// value wins when set).
pub fn merge_overrides(user: &LimitOverrides, credential: &LimitOverrides) -> LimitOverrides {
    LimitOverrides {
        messages_per_minute: credential.messages_per_minute.or(user.messages_per_minute),
        messages_per_hour: credential.messages_per_hour.or(user.messages_per_hour),
        messages_per_day: credential.messages_per_day.or(user.messages_per_day),
        recipients_per_day: credential.recipients_per_day.or(user.recipients_per_day),
        concurrent_sessions: user.concurrent_sessions,
    }
}

/// The inverse of [`merge_overrides`] as far as counting goes: the fields
/// of `merged` that differ from the user's own overrides, i.e. those the
/// credential sets. (A credential field equal to the user's would add a
/// counter that can never refuse first, so dropping it changes nothing.)
/// For callers that keep only the merged overrides plus the user's.
pub fn credential_only(user: &LimitOverrides, merged: &LimitOverrides) -> LimitOverrides {
    let pick = |m: Option<u32>, u: Option<u32>| if m != u { m } else { None };
    LimitOverrides {
        messages_per_minute: pick(merged.messages_per_minute, user.messages_per_minute),
        messages_per_hour: pick(merged.messages_per_hour, user.messages_per_hour),
        messages_per_day: pick(merged.messages_per_day, user.messages_per_day),
        recipients_per_day: pick(merged.recipients_per_day, user.recipients_per_day),
        concurrent_sessions: None,
    }
}

/// The limiter. Cheap to share (`Arc<Limiter>`); every method is safe to
/// call concurrently.
pub struct Limiter {
    config: LimitsConfig,
    counters: Counters,
    clock: Arc<dyn Clock>,
    sessions: Arc<Slots<i64>>,
    connections: Arc<Slots<String>>,
}

/// One GCRA counter to check for a message.
struct Check {
    key: String,
    rate: Rate,
    cost: u32,
    labels: (LimitScope, LimitKind),
    reason: String,
}

impl Limiter {
    /// A limiter for `config`. `store` is required for the `postgres` and
    /// `store` backends (where counters live) and ignored for `local`.
    pub fn new(
        config: LimitsConfig,
        store: Option<Arc<dyn LimitStore>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Limiter, LimitsError> {
        let counters = match (config.backend, store) {
            (LimitsBackend::Local, _) => {
                Counters::Local(LocalCounters::new(config.max_keys.max(1)))
            }
            (_, Some(store)) => Counters::store(store),
            (_, None) => {
                return Err(LimitsError::Config(
                    "the postgres/store limits backend needs a store".into(),
                ))
            }
        };
        Ok(Limiter {
            config,
            counters,
            clock,
            sessions: Slots::new(),
            connections: Slots::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn ip(&self, ip: IpAddr) -> String {
        keys::ip_subject(ip, self.config.ipv6_prefix)
    }

    async fn lockout_end(&self, subject_keys: &[String], now: i64) -> Option<(usize, i64)> {
        let rows = self.counters.get(subject_keys).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "limit store unavailable: lockout check skipped");
            Vec::new()
        });
        subject_keys.iter().enumerate().find_map(|(i, k)| {
            rows.iter()
                .find(|r| &r.key == k && r.tat > now)
                .map(|r| (i, r.tat))
        })
    }

    /// A new connection from `ip` (before the greeting). `Err`: reply
    /// `421 4.7.0` and close: the IP is locked out (too many failed logins)
    /// or exceeded `ip_connections_per_minute`.
    pub async fn connection(&self, ip: IpAddr) -> Result<(), LimitRefusal> {
        let now = self.now();
        let subject = self.ip(ip);
        let shown = keys::unescape(&subject);
        if let Some((_, until)) = self.lockout_end(&[keys::lockout_key(&subject)], now).await {
            return Err(refusal(
                (LimitScope::Ip, LimitKind::AuthFailures),
                (until - now) as u64,
                format!("too many failed logins from {}", &shown[3..]),
            ));
        }
        let n = self.config.ip_connections_per_minute;
        if n == 0 {
            return Ok(());
        }
        let rate = Rate::new(n, MINUTE_MS);
        let check = Check {
            key: keys::rate_key(&subject, kind::CONNECTIONS, rate),
            rate,
            cost: 1,
            labels: (LimitScope::Ip, LimitKind::Connections),
            reason: format!(
                "connection rate from {} exceeded ({n} per minute)",
                &shown[3..]
            ),
        };
        self.run_checks(vec![check], now).await
    }

    /// Charges one message of a trusted-network session (a listener's
    /// `trusted_networks`: no AUTH) against `messages` per `window` for the
    /// client `ip` (IPv6 by `ipv6_prefix`). `messages == 0`: no limit.
    /// `Err`: reply `451 4.7.1` at MAIL.
    pub async fn trusted_message(
        &self,
        ip: IpAddr,
        messages: u32,
        window: Duration,
    ) -> Result<(), LimitRefusal> {
        if messages == 0 {
            return Ok(());
        }
        let now = self.now();
        let subject = self.ip(ip);
        let period = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let rate = Rate::new(messages, period);
        let check = Check {
            key: keys::rate_key(&subject, kind::MESSAGES, rate),
            rate,
            cost: 1,
            labels: (LimitScope::Ip, LimitKind::Messages),
            reason: format!(
                "message rate from {} exceeded ({messages} per {})",
                &keys::unescape(&subject)[3..],
                human_period(period)
            ),
        };
        self.run_checks(vec![check], now).await
    }

    /// Takes one of `ip_concurrent_connections` slots of `ip` on this node
    /// for the life of the connection. `Err`: reply `421 4.7.0` and close.
    pub fn connection_slot(&self, ip: IpAddr) -> Result<ConnectionGuard, LimitRefusal> {
        let subject = self.ip(ip);
        let max = self.config.ip_concurrent_connections;
        self.connections.acquire(subject.clone(), max).map_err(|_| {
            refusal(
                (LimitScope::Ip, LimitKind::ConcurrentConnections),
                10_000,
                format!(
                    "too many concurrent connections from {} ({max})",
                    &keys::unescape(&subject)[3..]
                ),
            )
        })
    }

    /// Takes one of the user's concurrent-session slots on this node
    /// (`overrides.concurrent_sessions`, else `concurrent_sessions`) for
    /// the life of the returned guard. `Err`: reply `451 4.7.1`/`454 4.7.0`.
    pub fn session_start(
        &self,
        user_id: i64,
        overrides: &LimitOverrides,
    ) -> Result<SessionGuard, LimitRefusal> {
        let max = overrides
            .concurrent_sessions
            .unwrap_or(self.config.concurrent_sessions);
        self.sessions.acquire(user_id, max).map_err(|_| {
            refusal(
                (LimitScope::User, LimitKind::Sessions),
                60_000,
                format!("too many concurrent sessions for user {user_id} ({max})"),
            )
        })
    }

    /// Runs `checks` one after the other and stops at the first refusal,
    /// giving back what the earlier ones took. Sequential on purpose: run
    /// concurrently, a request refused by one counter would briefly hold a
    /// cell of another and make a concurrent request fail with it, so a
    /// burst of parallel messages would get less than its quota.
    async fn run_checks(&self, checks: Vec<Check>, now: i64) -> Result<(), LimitRefusal> {
        self.take_all(&checks, now).await.map(|_| ())
    }

    /// [`Limiter::run_checks`], returning each counter's new TAT when
    /// taken (`None`: the store could not be asked and the check was
    /// skipped, failing open).
    async fn take_all(&self, checks: &[Check], now: i64) -> Result<Vec<Option<i64>>, LimitRefusal> {
        let mut taken: Vec<&Check> = Vec::new();
        let mut tats = Vec::with_capacity(checks.len());
        let mut refused = None;
        for check in checks {
            match self
                .counters
                .check(&check.key, &check.rate.step(now, check.cost), now)
                .await
            {
                Ok(GcraOutcome::Allowed { tat }) => {
                    taken.push(check);
                    tats.push(Some(tat));
                }
                Ok(GcraOutcome::Refused { tat }) => {
                    let wait = check.rate.retry_after_ms(tat, now, check.cost);
                    refused = Some(refusal(check.labels, wait, check.reason.clone()));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, key = %check.key, "limit store unavailable: check skipped");
                    tats.push(None);
                }
            }
        }
        let Some(refused) = refused else {
            return Ok(tats);
        };
        let refunds = taken.iter().map(|c| {
            let mut step = c.rate.step(now, c.cost);
            step.increment = -step.increment;
            async move { (c, self.counters.check(&c.key, &step, now).await) }
        });
        for (c, r) in futures::future::join_all(refunds).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, key = %c.key, "limit refund failed");
            }
        }
        Err(refused)
    }

    /// Paces anything that must not exceed `count` per `period` under
    /// `name` (per-upstream provider quotas of delivery), shared between
    /// nodes on shared backends. Unlike the SMTP checks, a slot may be
    /// reserved in the future: [`Reservation::Granted`] holds the slot
    /// `wait` from now (sleep that long, then go), as long as `wait` is at
    /// most `max_wait`; otherwise nothing is taken and
    /// [`Reservation::Refused`] says when a slot within `max_wait` frees up.
    /// Waits are exact to the millisecond (not rounded to seconds).
    /// `count == 0` means no limit. One round trip on shared backends; when
    /// the store cannot be reached the slot is granted (fail open, logged).
    pub async fn reserve(
        &self,
        name: &str,
        count: u32,
        period: Duration,
        max_wait: Duration,
    ) -> Reservation {
        if count == 0 {
            return Reservation::Granted {
                wait: Duration::ZERO,
            };
        }
        let now = self.now();
        let rate = Rate::new(count, (period.as_millis() as u64).max(1));
        let key = keys::rate_key(&keys::name_subject(name), kind::THROTTLE, rate);
        let mut step = rate.step(now, 1);
        let window = step.window;
        // A slot `x` ms beyond the burst window is one that would pass at
        // `now + x`: widening the window by `max_wait` reserves it now.
        let max_wait_ms = i64::try_from(max_wait.as_millis()).unwrap_or(i64::MAX / 4);
        step.window = window.saturating_add(max_wait_ms.saturating_mul(step.scale));
        let units_to_ms = |units: i64| {
            Duration::from_millis(((units.max(0) + step.scale - 1) / step.scale) as u64)
        };
        match self.counters.check(&key, &step, now).await {
            Ok(GcraOutcome::Allowed { tat }) => Reservation::Granted {
                wait: units_to_ms(tat - step.now - window),
            },
            Ok(GcraOutcome::Refused { tat }) => {
                let tat = tat.unwrap_or(step.now).max(step.now);
                Reservation::Refused {
                    retry_after: units_to_ms(tat + step.increment - step.now - step.window)
                        .max(Duration::from_millis(1)),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, key = %key, "limit store unavailable: pacing skipped");
                Reservation::Granted {
                    wait: Duration::ZERO,
                }
            }
        }
    }

    /// Current counters and lockouts (the store's for shared backends, so
    /// this works from the CLI against a live cluster), plus this node's
    /// open sessions and connections.
    pub async fn snapshot(&self) -> Result<LimitsSnapshot, LimitsError> {
        let now = self.now();
        let rows = self.counters.list(now).await?;
        let counters = rows
            .into_iter()
            .filter_map(|row| {
                let parsed = keys::parse(&row.key)?;
                let used = match parsed.rate {
                    Some(rate) => rate.used(row.tat, now),
                    None => 1,
                };
                Some(CounterSnapshot {
                    subject: parsed.subject,
                    kind: parsed.kind,
                    limit: parsed.rate,
                    used,
                    until_ms: row.expires_at,
                    key: row.key,
                })
            })
            .filter(|c| c.used > 0)
            .collect();
        let mut sessions = self.sessions.snapshot();
        sessions.sort();
        let mut connections = self.connections.snapshot();
        connections.sort();
        Ok(LimitsSnapshot {
            now_ms: now,
            counters,
            sessions,
            connections,
        })
    }

    /// Clears every counter and lockout of `target`: an IP address (its
    /// IPv6 prefix), `uid:ID`, `cred:ID`, or else a username as typed at
    /// AUTH (failures and lockout). To clear a user's message quotas too,
    /// reset `uid:ID` as well. Returns how many counters were removed.
    pub async fn reset(&self, target: &str) -> Result<u64, LimitsError> {
        let target = target.trim();
        let subject = if let Ok(ip) = target.parse::<IpAddr>() {
            self.ip(ip)
        } else if let Some(id) = target
            .strip_prefix("uid:")
            .or_else(|| target.strip_prefix("cred:"))
            .filter(|id| id.parse::<i64>().is_ok())
        {
            let _ = id;
            target.to_string()
        } else {
            keys::user_subject(target)
        };
        Ok(self.counters.delete_prefix(&format!("{subject}/")).await?)
    }
}

#[cfg(test)]
mod tests;
