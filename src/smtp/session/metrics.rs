//! What the SMTP front end reports to [`Metrics`], and the PURE mapping
//! from its own outcomes to the closed label sets of [`crate::metrics`].
//!
//! Each event is counted once, by the part that decides it: the session and
//! the server count AUTH outcomes, refusals and connections; the intake
//! counts what it decides itself (header From, signing, store commit,
//! queued messages); the [`crate::smtp::ports::SessionLimits`]
//! implementation counts rate-limit refusals (it knows their labels).

use std::fmt;
use std::sync::Arc;

use crate::metrics::{self, AuthResult, ConnectionRefusal, Mechanism, Metrics, RejectReason};
use crate::smtp::data::DataError;
use crate::smtp::ports::{LimitKind, LimitRefusal, LimitScope};

/// The metrics a session records into. Cheap to clone.
#[derive(Clone)]
pub struct SessionMetrics(Arc<Metrics>);

impl fmt::Debug for SessionMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionMetrics")
    }
}

/// Metrics nothing serves ([`Metrics::detached`]): for tests and tools.
impl Default for SessionMetrics {
    fn default() -> Self {
        SessionMetrics(Metrics::detached())
    }
}

impl SessionMetrics {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        SessionMetrics(metrics)
    }

    /// One AUTH outcome for the mechanism named `mechanism` (`PLAIN`/`LOGIN`).
    pub fn auth(&self, mechanism: &str, result: AuthResult) {
        self.0.auth_attempt(mechanism_label(mechanism), result);
    }

    /// One refused transaction (or recipient, or message).
    pub fn rejected(&self, reason: RejectReason) {
        self.0.message_rejected(reason);
    }

    /// One message whose content was fully received.
    pub fn received(&self) {
        self.0.message_received();
    }
}

/// The metrics label of a SASL mechanism name (`PLAIN` or `LOGIN`).
pub fn mechanism_label(name: &str) -> Mechanism {
    if name.eq_ignore_ascii_case("LOGIN") {
        Mechanism::Login
    } else {
        Mechanism::Plain
    }
}

/// The reject reason of a refused message body.
pub fn data_error_reason(e: &DataError) -> RejectReason {
    match e {
        DataError::TooBig { .. } => RejectReason::TooLarge,
        DataError::BareLf | DataError::BareCr => RejectReason::BareLineEnding,
        DataError::LineTooLong { .. } => RejectReason::LineTooLong,
        DataError::MemoryBudget => RejectReason::MemoryBudget,
    }
}

/// The metrics labels `(scope, limit)` of a limit refusal.
pub fn limit_labels(r: &LimitRefusal) -> (metrics::LimitScope, metrics::LimitKind) {
    let scope = match r.scope {
        LimitScope::User => metrics::LimitScope::User,
        LimitScope::Credential => metrics::LimitScope::Credential,
        LimitScope::Ip => metrics::LimitScope::Ip,
    };
    let kind = match r.kind {
        LimitKind::Messages => metrics::LimitKind::Messages,
        LimitKind::Recipients => metrics::LimitKind::Recipients,
        LimitKind::Sessions => metrics::LimitKind::Sessions,
        LimitKind::Connections | LimitKind::ConcurrentConnections => {
            metrics::LimitKind::Connections
        }
        LimitKind::AuthFailures => metrics::LimitKind::AuthFailures,
    };
    (scope, kind)
}

/// Why `SessionLimits::connection` refused, as a connection refusal label:
/// a lockout after failed logins, a per-IP concurrency cap, else a rate.
pub fn connection_refusal(r: &LimitRefusal) -> ConnectionRefusal {
    match r.kind {
        LimitKind::AuthFailures => ConnectionRefusal::LockedOut,
        LimitKind::ConcurrentConnections => ConnectionRefusal::IpCap,
        _ => ConnectionRefusal::RateLimited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal the limiter makes at connect carries the kind its
    /// connection label is read from.
    #[tokio::test]
    async fn connection_refusals_of_the_limiter_are_labelled() {
        use crate::limits::{Limiter, LimitsConfig, ManualClock};
        let config = LimitsConfig {
            ip_connections_per_minute: 1,
            ip_concurrent_connections: 1,
            ..LimitsConfig::default()
        };
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let l = Limiter::new(config, None, clock).unwrap();
        let ip = |i: u8| std::net::IpAddr::from([192, 0, 2, i]);

        l.connection(ip(1)).await.unwrap();
        let r = l.connection(ip(1)).await.unwrap_err();
        assert_eq!((r.scope, r.kind), (LimitScope::Ip, LimitKind::Connections));
        assert_eq!(connection_refusal(&r), ConnectionRefusal::RateLimited);

        let _held = l.connection_slot(ip(2)).unwrap();
        let r = l.connection_slot(ip(2)).unwrap_err();
        assert_eq!(connection_refusal(&r), ConnectionRefusal::IpCap);

        for i in 0..100 {
            let user = format!("u{i}");
            if l.auth_allowed(ip(3), &user).await.is_err() {
                break;
            }
            l.auth_result(ip(3), &user, false).await;
        }
        let r = l.connection(ip(3)).await.unwrap_err();
        assert!(r.is_lockout(), "{r:?}");
        assert_eq!(connection_refusal(&r), ConnectionRefusal::LockedOut);
    }

    /// The label values of every refusal kind and scope, as exported.
    #[test]
    fn refusal_labels_are_pinned() {
        let refusal = |scope, kind| LimitRefusal {
            scope,
            kind,
            retry_after: std::time::Duration::from_secs(1),
            reason: "any wording".into(),
        };
        let table = [
            (
                LimitScope::User,
                LimitKind::Messages,
                "user",
                "messages",
                "rate_limited",
            ),
            (
                LimitScope::Credential,
                LimitKind::Recipients,
                "credential",
                "recipients",
                "rate_limited",
            ),
            (
                LimitScope::User,
                LimitKind::Sessions,
                "user",
                "sessions",
                "rate_limited",
            ),
            (
                LimitScope::Ip,
                LimitKind::Connections,
                "ip",
                "connections",
                "rate_limited",
            ),
            (
                LimitScope::Ip,
                LimitKind::ConcurrentConnections,
                "ip",
                "connections",
                "ip_cap",
            ),
            (
                LimitScope::Ip,
                LimitKind::AuthFailures,
                "ip",
                "auth_failures",
                "locked_out",
            ),
            (
                LimitScope::User,
                LimitKind::AuthFailures,
                "user",
                "auth_failures",
                "locked_out",
            ),
        ];
        for (scope, kind, scope_label, kind_label, connection_label) in table {
            let r = refusal(scope, kind);
            let (s, k) = limit_labels(&r);
            assert_eq!((s.as_str(), k.as_str()), (scope_label, kind_label), "{r:?}");
            assert_eq!(connection_refusal(&r).as_str(), connection_label, "{r:?}");
        }
    }

    #[test]
    fn body_errors_and_mechanisms_map_to_labels() {
        assert_eq!(
            data_error_reason(&DataError::TooBig { max: 1 }),
            RejectReason::TooLarge
        );
        assert_eq!(
            data_error_reason(&DataError::BareCr),
            RejectReason::BareLineEnding
        );
        assert_eq!(
            data_error_reason(&DataError::BareLf),
            RejectReason::BareLineEnding
        );
        assert_eq!(
            data_error_reason(&DataError::LineTooLong { max: 998 }),
            RejectReason::LineTooLong
        );
        assert_eq!(mechanism_label("LOGIN"), Mechanism::Login);
        assert_eq!(mechanism_label("PLAIN"), Mechanism::Plain);
    }
}
