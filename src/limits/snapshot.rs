//! What `postgate limits show` prints.

use std::fmt;
use std::time::Duration;

use super::gcra::Rate;
use super::keys;
use super::{DAY_MS, HOUR_MS, MINUTE_MS};

/// One counter of `limits show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// The raw key (pass its subject to [`Limiter::reset`]).
    pub key: String,
    /// `ip:ADDR`, `user:NAME`, `uid:ID` or `cred:ID`.
    pub subject: String,
    /// `connections`, `auth-failures`, `lockout`, `messages`, `recipients`.
    pub kind: String,
    /// The rate counted against (`None` for lockouts).
    pub limit: Option<Rate>,
    /// Cells in use now (for lockouts: 1).
    pub used: u32,
    /// Unix ms when the counter is back to idle (lockouts: when they end).
    pub until_ms: i64,
}

/// What `postgate limits show` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsSnapshot {
    /// When it was taken (Unix ms).
    pub now_ms: i64,
    /// Counters and lockouts in force, ordered by key.
    pub counters: Vec<CounterSnapshot>,
    /// Open sessions per user id on this node.
    pub sessions: Vec<(i64, u32)>,
    /// Open connections per IP subject on this node.
    pub connections: Vec<(String, u32)>,
}

impl fmt::Display for LimitsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<40} {:<14} {:>12} {:>8}",
            "SUBJECT", "KIND", "USED/LIMIT", "CLEAR IN"
        )?;
        for c in &self.counters {
            let limit = match c.limit {
                Some(r) => format!("{}/{}", c.used, r.count),
                None => "-".into(),
            };
            let secs = (c.until_ms - self.now_ms).max(0) as u64;
            let period = c
                .limit
                .map(|r| format!(" per {}", human_period(r.period_ms)))
                .unwrap_or_default();
            writeln!(
                f,
                "{:<40} {:<14} {:>12} {:>7}s{period}",
                c.subject,
                c.kind,
                limit,
                secs.div_ceil(1000)
            )?;
        }
        for (uid, n) in &self.sessions {
            writeln!(
                f,
                "{:<40} {:<14} {:>12}",
                format!("uid:{uid}"),
                "sessions",
                n
            )?;
        }
        for (ip, n) in &self.connections {
            writeln!(
                f,
                "{:<40} {:<14} {:>12}",
                keys::unescape(ip),
                "open-conns",
                n
            )?;
        }
        Ok(())
    }
}

pub(crate) fn human_period(ms: u64) -> String {
    match ms {
        MINUTE_MS => "minute".into(),
        HOUR_MS => "hour".into(),
        DAY_MS => "day".into(),
        _ => humantime::format_duration(Duration::from_millis(ms)).to_string(),
    }
}
