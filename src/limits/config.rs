//! The `[limits]` configuration section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where GCRA counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitsBackend {
    /// In this process: no I/O per check (a hash-map lookup under a mutex);
    /// each node counts alone, so N nodes allow up to N times each quota.
    Local,
    /// In the store's `limit_counters` table (PostgreSQL store required):
    /// one database round trip per check; every node sharing the database
    /// enforces one combined quota.
    Postgres,
    /// In the store's `limit_counters` table, whatever the store (useful on
    /// SQLite so counters survive a restart); same cost as `postgres`.
    Store,
}

/// `[limits]`: per-user, per-credential and per-IP limits and brute-force
/// protection. A count of 0 means "no limit". Per-user and per-credential
/// overrides (`user limits` / SQL columns `max_*`) replace the four
/// `messages_*`/`recipients_*` defaults and `concurrent_sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `"local"` (default), `"postgres"` or `"store"`: see [`LimitsBackend`].
    pub backend: LimitsBackend,
    /// Local backend: at most this many counters in memory (default 100000,
    /// about 100 bytes each); idle ones are dropped every minute, and when
    /// full the counter closest to expiry is dropped first.
    pub max_keys: usize,
    /// Messages per user per minute (default 60).
    pub messages_per_minute: u32,
    /// Messages per user per hour (default 1000).
    pub messages_per_hour: u32,
    /// Messages per user per day (default 10000).
    pub messages_per_day: u32,
    /// Recipients (summed over messages) per user per day (default 20000).
    pub recipients_per_day: u32,
    /// Concurrent SMTP sessions per authenticated user, per node (default 20).
    pub concurrent_sessions: u32,
    /// New connections per client IP per minute (default 120).
    pub ip_connections_per_minute: u32,
    /// Concurrent connections per client IP, per node (default 50).
    pub ip_concurrent_connections: u32,
    /// IPv6 clients are counted per prefix of this length (default 64: one
    /// customer's network); IPv4 per address.
    pub ipv6_prefix: u8,
    /// Failed AUTH attempts are forgotten gradually over this window: the
    /// lockout thresholds are "failures per window" (default "15m").
    #[serde(with = "humantime_serde")]
    pub auth_failure_window: Duration,
    /// After this many recent failures (per IP or per username) every AUTH
    /// reply is delayed (default 3).
    pub auth_tarpit_after: u32,
    /// First tarpit delay; it doubles with each further failure (default "1s").
    #[serde(with = "humantime_serde")]
    pub auth_tarpit_delay: Duration,
    /// Longest tarpit delay (default "10s").
    #[serde(with = "humantime_serde")]
    pub auth_tarpit_max_delay: Duration,
    /// Failures per window for one username (existing or not) before the
    /// username is locked out (default 10).
    pub auth_lockout_per_user: u32,
    /// Failures per window from one IP before the IP is locked out, AUTH and
    /// new connections alike (default 30).
    pub auth_lockout_per_ip: u32,
    /// How long a lockout lasts (default "15m").
    #[serde(with = "humantime_serde")]
    pub auth_lockout_duration: Duration,
    /// How long an AUTH waits while attempts still being verified fill the
    /// failure allowance of its IP or username, before `454 4.7.0`
    /// (default "5s"). Many clients logging in at once as one user (an
    /// application's connection pool) then wait a few milliseconds instead
    /// of being refused; "0s" refuses at once.
    #[serde(with = "humantime_serde")]
    pub auth_wait_in_flight: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            backend: LimitsBackend::Local,
            max_keys: 100_000,
            messages_per_minute: 60,
            messages_per_hour: 1_000,
            messages_per_day: 10_000,
            recipients_per_day: 20_000,
            concurrent_sessions: 20,
            ip_connections_per_minute: 120,
            ip_concurrent_connections: 50,
            ipv6_prefix: 64,
            auth_failure_window: Duration::from_secs(15 * 60),
            auth_tarpit_after: 3,
            auth_tarpit_delay: Duration::from_secs(1),
            auth_tarpit_max_delay: Duration::from_secs(10),
            auth_lockout_per_user: 10,
            auth_lockout_per_ip: 30,
            auth_lockout_duration: Duration::from_secs(15 * 60),
            auth_wait_in_flight: Duration::from_secs(5),
        }
    }
}

impl LimitsConfig {
    /// Checks values that serde cannot; `store_backend` is the store in use
    /// (`"postgres"` or `"sqlite"`). The message names the key.
    pub fn validate(&self, store_backend: &str) -> Result<(), String> {
        if self.backend == LimitsBackend::Postgres && store_backend != "postgres" {
            return Err(format!(
                "limits.backend = \"postgres\" needs a PostgreSQL store (the store is {store_backend}); use \"local\" or \"store\""
            ));
        }
        if self.ipv6_prefix > 128 {
            return Err("limits.ipv6_prefix must be 0..=128".into());
        }
        if self.max_keys == 0 {
            return Err("limits.max_keys must be at least 1".into());
        }
        for (key, d) in [
            ("auth_failure_window", self.auth_failure_window),
            ("auth_lockout_duration", self.auth_lockout_duration),
        ] {
            if d < Duration::from_secs(1) {
                return Err(format!("limits.{key} must be at least 1s"));
            }
        }
        if self.auth_wait_in_flight > Duration::from_secs(60) {
            return Err("limits.auth_wait_in_flight must be at most 60s".into());
        }
        if self.auth_tarpit_max_delay < self.auth_tarpit_delay {
            return Err("limits.auth_tarpit_max_delay must be >= limits.auth_tarpit_delay".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_defaults_and_unknown_keys_fail() {
        let c: LimitsConfig = toml::from_str("").unwrap();
        assert_eq!(c, LimitsConfig::default());
        let c: LimitsConfig = toml::from_str(
            "backend = \"postgres\"\nmessages_per_hour = 5\nauth_lockout_duration = \"2m\"",
        )
        .unwrap();
        assert_eq!(c.backend, LimitsBackend::Postgres);
        assert_eq!(c.messages_per_hour, 5);
        assert_eq!(c.auth_lockout_duration, Duration::from_secs(120));
        let err = toml::from_str::<LimitsConfig>("mesages_per_hour = 5").unwrap_err();
        assert!(err.to_string().contains("mesages_per_hour"), "{err}");
        assert!(c.validate("sqlite").is_err());
        let back: LimitsConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c, "serializes for check-config");
        assert!(c.validate("postgres").is_ok());
    }
}
