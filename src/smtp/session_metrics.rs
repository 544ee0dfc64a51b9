//! What the SMTP front end reports to [`Metrics`], and the PURE mapping
//! from its own outcomes to the closed label sets of [`crate::metrics`].
//!
//! The session and the server count; the intake counts what it decides
//! itself (header From, signing, store commit, queued messages), so each
//! event is counted exactly once.

use std::fmt;
use std::sync::Arc;

use crate::metrics::{
    AuthResult, ConnectionRefusal, LimitKind, LimitScope, Mechanism, Metrics, RejectReason,
};
use crate::smtp::data::DataError;
use crate::smtp::ports::LimitRefusal;

/// The metrics a session records into, or none (tests, tools). Cheap to clone.
#[derive(Clone, Default)]
pub struct SessionMetrics(Option<Arc<Metrics>>);

impl fmt::Debug for SessionMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "SessionMetrics(on)"
        } else {
            "SessionMetrics(off)"
        })
    }
}

/// Where a [`crate::smtp::ports::SessionLimits`] refusal was answered: the
/// labels to use when the refusal's reason does not say more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSite {
    /// `SessionLimits::connection`, before the greeting.
    Connection,
    /// `SessionLimits::auth_allowed`, before a password is checked.
    Auth,
    /// `SessionLimits::session_start`, after a successful AUTH.
    SessionStart,
    /// `SessionLimits::message`, at DATA or the first BDAT.
    Message,
}

impl SessionMetrics {
    /// Records into `metrics` (`None`: records nothing).
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        SessionMetrics(metrics)
    }

    /// The metrics, if any.
    pub fn get(&self) -> Option<&Arc<Metrics>> {
        self.0.as_ref()
    }

    /// One AUTH outcome for the mechanism named `mechanism` (`PLAIN`/`LOGIN`).
    pub fn auth(&self, mechanism: &str, result: AuthResult) {
        if let Some(m) = &self.0 {
            m.auth_attempt(mechanism_label(mechanism), result);
        }
    }

    /// One refused transaction (or recipient, or message).
    pub fn rejected(&self, reason: RejectReason) {
        if let Some(m) = &self.0 {
            m.message_rejected(reason);
        }
    }

    /// One message whose content was fully received.
    pub fn received(&self) {
        if let Some(m) = &self.0 {
            m.message_received();
        }
    }

    /// One rate-limit refusal answered at `site`.
    pub fn rate_limited(&self, site: LimitSite, refusal: &LimitRefusal) {
        if let Some(m) = &self.0 {
            let (scope, kind) = limit_labels(site, &refusal.reason);
            m.rate_limited(scope, kind);
        }
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
    }
}

/// Splits a refusal reason into what was limited (the words before the
/// first ` for ` / ` from `, which never contain a user's data) and whom
/// it names (`user ...`, `credential ...`, or an address after `from`).
fn split_reason(reason: &str) -> (String, Option<LimitScope>) {
    let lower = reason.to_ascii_lowercase();
    let cut = [" for ", " from "]
        .iter()
        .filter_map(|sep| lower.find(sep).map(|i| (i, *sep)))
        .min_by_key(|(i, _)| *i);
    match cut {
        None => (lower, None),
        Some((i, sep)) => {
            let rest = &lower[i + sep.len()..];
            let scope = if sep == " from " {
                Some(LimitScope::Ip)
            } else if rest.starts_with("credential ") {
                Some(LimitScope::Credential)
            } else if rest.starts_with("user ") {
                Some(LimitScope::User)
            } else {
                None
            };
            (lower[..i].to_string(), scope)
        }
    }
}

/// The `(scope, limit)` labels of a limit refusal answered at `site`.
///
/// The SMTP ports carry only a human reason (e.g. `recipient quota for
/// credential ci of user bob exceeded (500 per day)`, `too many failed
/// logins from 192.0.2.1`); its leading words refine the defaults of the
/// site, which apply to any other wording.
pub fn limit_labels(site: LimitSite, reason: &str) -> (LimitScope, LimitKind) {
    let (what, scope) = split_reason(reason);
    let kind = if what.contains("failed login") || what.contains("locked") {
        LimitKind::AuthFailures
    } else if what.contains("recipient") {
        LimitKind::Recipients
    } else if what.contains("session") {
        LimitKind::Sessions
    } else if what.contains("connection") {
        LimitKind::Connections
    } else if what.contains("message") {
        LimitKind::Messages
    } else {
        match site {
            LimitSite::Connection => LimitKind::Connections,
            LimitSite::Auth => LimitKind::AuthFailures,
            LimitSite::SessionStart => LimitKind::Sessions,
            LimitSite::Message => LimitKind::Messages,
        }
    };
    let scope = scope.unwrap_or(match site {
        LimitSite::Connection | LimitSite::Auth => LimitScope::Ip,
        LimitSite::SessionStart | LimitSite::Message => LimitScope::User,
    });
    (scope, kind)
}

/// Why `SessionLimits::connection` refused, as a connection refusal label:
/// a lockout after failed logins, a per-IP concurrency cap, else a rate.
pub fn connection_refusal(reason: &str) -> ConnectionRefusal {
    let (what, _) = split_reason(reason);
    match limit_labels(LimitSite::Connection, reason).1 {
        LimitKind::AuthFailures => ConnectionRefusal::LockedOut,
        _ if what.contains("concurrent") => ConnectionRefusal::IpCap,
        _ => ConnectionRefusal::RateLimited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_labels_from_reasons_of_the_limiter() {
        use LimitKind as K;
        use LimitScope as S;
        let cases = [
            (
                LimitSite::Message,
                "message rate for user alice exceeded (100 per hour)",
                S::User,
                K::Messages,
            ),
            (
                LimitSite::Message,
                "message quota for credential ci of user bob exceeded (5 per day)",
                S::Credential,
                K::Messages,
            ),
            (
                LimitSite::Message,
                "recipient quota for user bob exceeded (500 per day)",
                S::User,
                K::Recipients,
            ),
            // A user's name never changes what was limited.
            (
                LimitSite::Message,
                "message rate for user recipient-session exceeded (1 per minute)",
                S::User,
                K::Messages,
            ),
            (
                LimitSite::Auth,
                "too many failed logins from 192.0.2.1",
                S::Ip,
                K::AuthFailures,
            ),
            (
                LimitSite::Auth,
                "too many failed logins for user bob",
                S::User,
                K::AuthFailures,
            ),
            (
                LimitSite::SessionStart,
                "too many concurrent sessions for user 7 (2)",
                S::User,
                K::Sessions,
            ),
            (
                LimitSite::Connection,
                "connection rate from 192.0.2.1 exceeded (30 per minute)",
                S::Ip,
                K::Connections,
            ),
            // Unknown wording: the site decides.
            (LimitSite::Connection, "go away", S::Ip, K::Connections),
            (LimitSite::Auth, "slow down", S::Ip, K::AuthFailures),
            (LimitSite::SessionStart, "busy", S::User, K::Sessions),
            (LimitSite::Message, "quota", S::User, K::Messages),
        ];
        for (site, reason, scope, kind) in cases {
            assert_eq!(limit_labels(site, reason), (scope, kind), "{reason}");
        }
    }

    /// The labels read from the wording agree with the labels the limiter
    /// itself attaches, for every refusal it makes.
    #[tokio::test]
    async fn limit_labels_agree_with_the_limiter() {
        use crate::limits::{Account, Limiter, LimitsConfig, ManualClock};
        use crate::store::LimitOverrides;
        let config = LimitsConfig {
            ip_connections_per_minute: 1,
            ip_concurrent_connections: 1,
            concurrent_sessions: 1,
            recipients_per_day: 2,
            ..LimitsConfig::default()
        };
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let l = Limiter::new(config, None, clock).unwrap();
        let ip = |i: u8| std::net::IpAddr::from([192, 0, 2, i]);
        let check = |site, r: &crate::limits::LimitRefusal| {
            assert_eq!(limit_labels(site, &r.reason), (r.scope, r.limit), "{r:?}");
        };

        l.connection(ip(1)).await.unwrap();
        let r = l.connection(ip(1)).await.unwrap_err();
        check(LimitSite::Connection, &r);
        assert_eq!(
            connection_refusal(&r.reason),
            ConnectionRefusal::RateLimited
        );
        let _held = l.connection_slot(ip(2)).unwrap();
        let r = l.connection_slot(ip(2)).unwrap_err();
        check(LimitSite::Connection, &r);
        assert_eq!(connection_refusal(&r.reason), ConnectionRefusal::IpCap);

        let none = LimitOverrides::default();
        let _session = l.session_start(7, &none).unwrap();
        check(
            LimitSite::SessionStart,
            &l.session_start(7, &none).unwrap_err(),
        );

        let strict = LimitOverrides {
            messages_per_minute: Some(1),
            ..Default::default()
        };
        let account = Account {
            user_id: 7,
            username: "bob",
            user_limits: &none,
            credential_id: 3,
            credential_label: "laptop",
            credential_limits: &strict,
        };
        let r = l.message(&account, 3).await.unwrap_err();
        check(LimitSite::Message, &r);
        assert_eq!(r.limit, LimitKind::Recipients);
        l.message(&account, 1).await.unwrap();
        let r = l.message(&account, 1).await.unwrap_err();
        check(LimitSite::Message, &r);
        assert_eq!(r.scope, LimitScope::Credential);

        let user_lockout = async {
            for i in 10..100 {
                match l.auth_allowed(ip(i), "alice").await {
                    Err(r) => return r,
                    Ok(_) => l.auth_result(ip(i), "alice", false).await,
                }
            }
            panic!("never locked out");
        };
        check(LimitSite::Auth, &user_lockout.await);
        let ip_lockout = async {
            for i in 0..100 {
                let user = format!("u{i}");
                match l.auth_allowed(ip(200), &user).await {
                    Err(r) => return r,
                    Ok(_) => l.auth_result(ip(200), &user, false).await,
                }
            }
            panic!("never locked out");
        };
        check(LimitSite::Auth, &ip_lockout.await);
        let r = l.connection(ip(200)).await.unwrap_err();
        check(LimitSite::Connection, &r);
        assert_eq!(connection_refusal(&r.reason), ConnectionRefusal::LockedOut);
    }

    #[test]
    fn connection_refusals_are_told_apart() {
        assert_eq!(
            connection_refusal("too many failed logins from 192.0.2.1"),
            ConnectionRefusal::LockedOut
        );
        assert_eq!(
            connection_refusal("too many concurrent connections from 192.0.2.1 (10)"),
            ConnectionRefusal::IpCap
        );
        assert_eq!(
            connection_refusal("connection rate from 192.0.2.1 exceeded (30 per minute)"),
            ConnectionRefusal::RateLimited
        );
        assert_eq!(connection_refusal("no"), ConnectionRefusal::RateLimited);
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
