//! PURE: the retry schedule. Exponential backoff with jitter, capped, and
//! never past the message's expiry (RFC 5321 §4.5.4.1: retry intervals of
//! at least 30 minutes are usual; give-up time at least 4-5 days).

use std::time::Duration;

/// Retry parameters (from `[queue]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Largest delay between two attempts.
    pub max: Duration,
    /// Growth factor per failed attempt (>= 1).
    pub multiplier: f64,
    /// Relative jitter in `0.0..=1.0`: the delay is spread over `±jitter`.
    pub jitter: f64,
}

impl RetryPolicy {
    /// Delay before the next attempt once `attempts` attempts failed
    /// (`attempts >= 1`; 0 is treated as 1). `random` is uniform in `[0, 1)`:
    /// the caller supplies it, so the schedule is deterministic under test.
    pub fn delay(&self, attempts: u32, random: f64) -> Duration {
        let exp = attempts.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let capped = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        let secs = (capped * factor).clamp(0.0, self.max.as_secs_f64() * (1.0 + jitter));
        Duration::from_secs_f64(secs)
    }

    /// When to try next (Unix ms), given `now` and the failed `attempts`;
    /// never later than `expires_at`, so an expiring message is seen in time.
    pub fn next_attempt_at(&self, now: i64, attempts: u32, random: f64, expires_at: i64) -> i64 {
        let delay = self.delay(attempts, random).as_millis() as i64;
        now.saturating_add(delay).min(expires_at.max(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let p = policy(0.0);
        assert_eq!(p.delay(1, 0.5), Duration::from_secs(60));
        assert_eq!(p.delay(2, 0.5), Duration::from_secs(120));
        assert_eq!(p.delay(3, 0.9), Duration::from_secs(240));
        assert_eq!(p.delay(7, 0.1), Duration::from_secs(3600));
        assert_eq!(p.delay(u32::MAX, 0.1), Duration::from_secs(3600));
        assert_eq!(p.delay(0, 0.5), Duration::from_secs(60));
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        let p = policy(0.2);
        assert_eq!(p.delay(1, 0.0), Duration::from_secs(48));
        assert_eq!(p.delay(1, 0.5), Duration::from_secs(60));
        let hi = p.delay(1, 0.999_999);
        assert!(hi > Duration::from_secs(71) && hi <= Duration::from_secs(72));
        // Different random draws give different delays: no thundering herd.
        assert_ne!(p.delay(2, 0.1), p.delay(2, 0.7));
    }

    #[test]
    fn next_attempt_never_passes_expiry() {
        let p = policy(0.0);
        assert_eq!(p.next_attempt_at(1_000, 1, 0.5, 10_000_000), 61_000);
        assert_eq!(p.next_attempt_at(1_000, 1, 0.5, 5_000), 5_000);
        // Already expired: due now.
        assert_eq!(p.next_attempt_at(9_000, 1, 0.5, 5_000), 9_000);
    }
}
