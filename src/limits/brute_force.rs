//! Brute-force protection: failed AUTH counted per IP and per username
//! (never looked up: unknown and existing names are treated alike), a
//! growing delay past `auth_tarpit_after`, a lockout past
//! `auth_lockout_per_ip`/`auth_lockout_per_user` failures per window.

use std::net::IpAddr;
use std::time::Duration;

use super::gcra::Rate;
use super::keys::{self, kind};
use super::{refusal, Check, LimitKind, LimitRefusal, LimitScope, Limiter};
use crate::store::LimitCounter;

/// Why an AUTH attempt could not be reserved.
enum Reserve {
    /// The IP or username is locked out.
    LockedOut(LimitRefusal),
    /// Failures and attempts in flight fill the allowance, with no lockout
    /// (yet): the attempts in flight are still being verified.
    Full(LimitRefusal),
}

impl Limiter {
    /// Before verifying an AUTH from `ip` for `username` (as typed; never
    /// looked up, so unknown and existing users are treated alike).
    ///
    /// Reserves the attempt: it is counted as a failure of the IP and of the
    /// username *now*, atomically with the check (one GCRA step per counter:
    /// a mutex-held update locally, one `UPDATE` on the store), so however
    /// many attempts run concurrently, across nodes too, at most
    /// `auth_lockout_per_ip`/`auth_lockout_per_user` are ever verified per
    /// window. Every `Ok` must be followed by exactly one
    /// [`Limiter::auth_result`] (the verification's outcome) or
    /// [`Limiter::auth_abandoned`] (nothing was verified).
    ///
    /// `Ok(delay)`: wait `delay` (the tarpit, grown by the failures before
    /// this one, in flight included; zero when below `auth_tarpit_after`)
    /// before answering, whatever the outcome. `Err`: the IP or username is
    /// locked out, or the attempts in flight already fill its allowance:
    /// reply `454 4.7.0` without verifying; nothing is reserved.
    ///
    /// When the allowance is full but nothing is locked out, the attempts
    /// filling it are still being verified (a lockout follows the failure
    /// that fills it): this one waits for them, polling with a growing
    /// pause, for at most `auth_wait_in_flight`. So a pool of clients
    /// logging in at once as one user is served, while the number of
    /// verifications per window stays bounded as above.
    pub async fn auth_allowed(&self, ip: IpAddr, username: &str) -> Result<Duration, LimitRefusal> {
        let deadline = tokio::time::Instant::now() + self.config.auth_wait_in_flight;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.reserve_auth(ip, username).await {
                Err(Reserve::Full(_)) if tokio::time::Instant::now() + pause <= deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(Reserve::Full(r) | Reserve::LockedOut(r)) => return Err(r),
                Ok(delay) => return Ok(delay),
            }
        }
    }

    /// One try of [`Limiter::auth_allowed`].
    async fn reserve_auth(&self, ip: IpAddr, username: &str) -> Result<Duration, Reserve> {
        let now = self.now();
        let ip_subject = self.ip(ip);
        let user_subject = keys::user_subject(username);
        let locks = [
            keys::lockout_key(&ip_subject),
            keys::lockout_key(&user_subject),
        ];
        let rows = self.counters.get(&locks).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "limit store unavailable: AUTH checks skipped");
            Vec::new()
        });
        let tat_of = |key: &str| rows.iter().find(|r| r.key == key).map(|r| r.tat);
        let who = |ip_side: bool| {
            if ip_side {
                (
                    LimitScope::Ip,
                    format!("from {}", &keys::unescape(&ip_subject)[3..]),
                )
            } else {
                (
                    LimitScope::User,
                    format!("for user {}", &keys::unescape(&user_subject)[5..]),
                )
            }
        };
        for (i, lock) in locks.iter().enumerate() {
            if let Some(until) = tat_of(lock).filter(|&t| t > now) {
                let (scope, who) = who(i == 0);
                return Err(Reserve::LockedOut(refusal(
                    (scope, LimitKind::AuthFailures),
                    (until - now) as u64,
                    format!("too many failed logins {who}"),
                )));
            }
        }
        let fails = self.failure_keys(&ip_subject, &user_subject);
        let checks: Vec<Check> = fails
            .iter()
            .map(|(key, rate)| {
                let (scope, who) = who(key.starts_with(&format!("{ip_subject}/")));
                Check {
                    key: key.clone(),
                    rate: *rate,
                    cost: 1,
                    labels: (scope, LimitKind::AuthFailures),
                    reason: format!("too many failed logins {who}"),
                }
            })
            .collect();
        let tats = self.take_all(&checks, now).await.map_err(Reserve::Full)?;
        // The failures before this attempt (this one is reserved in `tats`).
        let recent = checks
            .iter()
            .zip(tats)
            .filter_map(|(c, tat)| tat.map(|t| c.rate.used(t, now).saturating_sub(1)))
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

    /// Records the outcome of a verified AUTH reserved by
    /// [`Limiter::auth_allowed`]. A failure stays counted against the IP and
    /// the username (existing or not); once `auth_lockout_per_ip` /
    /// `auth_lockout_per_user` failures are within the window, that
    /// IP/username is locked out for `auth_lockout_duration`. A success
    /// gives the IP its reservation back and clears the username's failures.
    pub async fn auth_result(&self, ip: IpAddr, username: &str, success: bool) {
        let now = self.now();
        let ip_subject = self.ip(ip);
        let user_subject = keys::user_subject(username);
        let fails = self.failure_keys(&ip_subject, &user_subject);
        if success {
            let (mine, ip_side): (Vec<_>, Vec<_>) = fails
                .into_iter()
                .partition(|(k, _)| k.starts_with(&format!("{user_subject}/")));
            let mine: Vec<String> = mine.into_iter().map(|(k, _)| k).collect();
            if let Err(e) = self.counters.delete(&mine).await {
                tracing::warn!(error = %e, "limit store unavailable: failures not cleared");
            }
            self.give_back(&ip_side, now).await;
            return;
        }
        let keys: Vec<String> = fails.iter().map(|(k, _)| k.clone()).collect();
        let rows = match self.counters.get(&keys).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "limit store unavailable: lockout not checked");
                return;
            }
        };
        let subjects = [ip_subject.as_str(), user_subject.as_str()];
        let lock_ms = self.config.auth_lockout_duration.as_millis() as i64;
        for (key, rate) in &fails {
            let full = rows
                .iter()
                .find(|r| &r.key == key)
                .is_some_and(|r| rate.used(r.tat, now) >= rate.count);
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

    /// Gives back an attempt reserved by [`Limiter::auth_allowed`] that was
    /// never verified (the credential store could not be asked, the client
    /// left): it counts as nothing.
    pub async fn auth_abandoned(&self, ip: IpAddr, username: &str) {
        let now = self.now();
        let fails = self.failure_keys(&self.ip(ip), &keys::user_subject(username));
        self.give_back(&fails, now).await;
    }

    async fn give_back(&self, counters: &[(String, Rate)], now: i64) {
        for (key, rate) in counters {
            let mut step = rate.step(now, 1);
            step.increment = -step.increment;
            if let Err(e) = self.counters.check(key, &step, now).await {
                tracing::warn!(error = %e, key = %key, "limit refund failed");
            }
        }
    }
}
