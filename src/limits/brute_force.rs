//! Brute-force protection: failed AUTH counted per IP and per username
//! (never looked up: unknown and existing names are treated alike), a
//! growing delay past `auth_tarpit_after`, a lockout past
//! `auth_lockout_per_ip`/`auth_lockout_per_user` failures per window.

use std::net::IpAddr;
use std::time::Duration;

use super::gcra::Rate;
use super::keys::{self, kind};
use super::{LimitRefusal, Limiter};
use crate::metrics::{LimitKind, LimitScope};
use crate::store::{GcraOutcome, LimitCounter};

impl Limiter {
    /// Before verifying an AUTH from `ip` for `username` (as typed; never
    /// looked up, so unknown and existing users are treated alike).
    /// `Ok(delay)`: wait `delay` (the tarpit, zero when no recent failures)
    /// before answering, whatever the outcome. `Err`: the IP or username is
    /// locked out: reply `454 4.7.0` without verifying.
    pub async fn auth_allowed(&self, ip: IpAddr, username: &str) -> Result<Duration, LimitRefusal> {
        let now = self.now();
        let ip_subject = self.ip(ip);
        let user_subject = keys::user_subject(username);
        let locks = [
            keys::lockout_key(&ip_subject),
            keys::lockout_key(&user_subject),
        ];
        let fails = self.failure_keys(&ip_subject, &user_subject);
        let mut wanted: Vec<String> = locks.to_vec();
        wanted.extend(fails.iter().map(|(k, _)| k.clone()));
        let rows = self.counters.get(&wanted).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "limit store unavailable: AUTH checks skipped");
            Vec::new()
        });
        let tat_of = |key: &str| rows.iter().find(|r| r.key == key).map(|r| r.tat);
        for (i, lock) in locks.iter().enumerate() {
            if let Some(until) = tat_of(lock).filter(|&t| t > now) {
                let who = if i == 0 {
                    format!("from {}", &keys::unescape(&ip_subject)[3..])
                } else {
                    format!("for user {}", &keys::unescape(&user_subject)[5..])
                };
                let scope = if i == 0 {
                    LimitScope::Ip
                } else {
                    LimitScope::User
                };
                return Err(LimitRefusal::new(
                    (scope, LimitKind::AuthFailures),
                    (until - now) as u64,
                    format!("too many failed logins {who}"),
                ));
            }
        }
        let recent = fails
            .iter()
            .filter_map(|(k, rate)| tat_of(k).map(|t| rate.used(t, now)))
            .max()
            .unwrap_or(0);
        Ok(self.tarpit(recent))
    }

    /// The tarpit delay after `recent` failures.
    pub(super) fn tarpit(&self, recent: u32) -> Duration {
        let after = self.config.auth_tarpit_after;
        if after == 0 || recent < after {
            return Duration::ZERO;
        }
        let doublings = (recent - after).min(20);
        self.config
            .auth_tarpit_delay
            .saturating_mul(1 << doublings)
            .min(self.config.auth_tarpit_max_delay)
    }

    /// Failure counters (key, rate) of an IP and a username.
    pub(super) fn failure_keys(&self, ip_subject: &str, user_subject: &str) -> Vec<(String, Rate)> {
        let window = self.config.auth_failure_window.as_millis() as u64;
        [
            (ip_subject, self.config.auth_lockout_per_ip),
            (user_subject, self.config.auth_lockout_per_user),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| {
            let rate = Rate::new(n, window);
            (keys::rate_key(s, kind::AUTH_FAILURES, rate), rate)
        })
        .collect()
    }

    /// Records the outcome of a verified AUTH. A failure counts against the
    /// IP and the username (existing or not); reaching
    /// `auth_lockout_per_ip`/`auth_lockout_per_user` failures within the
    /// window locks that IP/username out for `auth_lockout_duration`. A
    /// success clears the username's failures (not the IP's).
    pub async fn auth_result(&self, ip: IpAddr, username: &str, success: bool) {
        let now = self.now();
        let ip_subject = self.ip(ip);
        let user_subject = keys::user_subject(username);
        if success {
            let mine: Vec<String> = self
                .failure_keys(&ip_subject, &user_subject)
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with(&format!("{user_subject}/")))
                .collect();
            if let Err(e) = self.counters.delete(&mine).await {
                tracing::warn!(error = %e, "limit store unavailable: failures not cleared");
            }
            return;
        }
        let fails = self.failure_keys(&ip_subject, &user_subject);
        let subjects = [ip_subject.as_str(), user_subject.as_str()];
        let outcomes = futures::future::join_all(fails.iter().map(|(key, rate)| async move {
            self.counters.check(key, &rate.step(now, 1), now).await
        }))
        .await;
        let lock_ms = self.config.auth_lockout_duration.as_millis() as i64;
        for ((key, rate), outcome) in fails.iter().zip(outcomes) {
            let full = match outcome {
                Ok(GcraOutcome::Allowed { tat }) => rate.used(tat, now) >= rate.count,
                Ok(GcraOutcome::Refused { .. }) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "limit store unavailable: failure not counted");
                    false
                }
            };
            if !full {
                continue;
            }
            let subject = subjects
                .iter()
                .find(|s| key.starts_with(&format!("{s}/")))
                .copied()
                .unwrap_or_default();
            let lock = LimitCounter {
                key: keys::lockout_key(subject),
                tat: now + lock_ms,
                expires_at: now + lock_ms,
            };
            tracing::warn!(subject = %keys::unescape(subject), seconds = lock_ms / 1000, "locked out after failed logins");
            if let Err(e) = self.counters.set(&lock).await {
                tracing::warn!(error = %e, "limit store unavailable: lockout not recorded");
            }
        }
    }
}
