//! PURE: a provider throttle per upstream. A GCRA rate limit (messages per
//! second, with a small burst) plus a back-off pause when the provider says
//! it is throttling us (e.g. SES `454 Throttling failure: Maximum sending
//! rate exceeded`): the pause doubles on each throttling reply up to a
//! maximum and resets on success. Time is passed in.

use std::time::Duration;

use tokio::time::Instant;

/// First pause after a throttling reply.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// One upstream's throttle.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Option<Duration>,
    burst: Duration,
    tat: Option<Instant>,
    paused_until: Option<Instant>,
    pause: Duration,
}

impl Throttle {
    /// `rate` messages per second (`None` or <= 0: unlimited), allowing
    /// `burst` (>= 1) messages at once.
    pub fn new(rate: Option<f64>, burst: u32) -> Self {
        let interval = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        let burst = interval
            .map(|i| i * burst.max(1).saturating_sub(1))
            .unwrap_or_default();
        Throttle {
            interval,
            burst,
            tat: None,
            paused_until: None,
            pause: Duration::ZERO,
        }
    }

    /// Reserves a slot for one message at `now`; returns how long the
    /// caller must wait before sending it (zero: send now).
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let not_before = self.paused_until.filter(|p| *p > now).unwrap_or(now);
        let Some(interval) = self.interval else {
            return not_before - now;
        };
        // GCRA: the theoretical arrival time moves by one interval per message.
        let tat = self.tat.unwrap_or(not_before).max(not_before);
        let allowed_at = tat.checked_sub(self.burst).unwrap_or(now).max(not_before);
        self.tat = Some(tat + interval);
        allowed_at.saturating_duration_since(now)
    }

    /// The wait [`reserve`](Self::reserve) would give, without reserving.
    pub fn wait(&self, now: Instant) -> Duration {
        self.clone().reserve(now)
    }

    /// The provider answered with a throttling reply at `now`: pause this
    /// upstream. Returns the pause.
    pub fn throttled(&mut self, now: Instant) -> Duration {
        self.pause = if self.pause.is_zero() {
            FIRST_PAUSE
        } else {
            (self.pause * 2).min(MAX_PAUSE)
        };
        self.paused_until = Some(now + self.pause);
        self.pause
    }

    /// A message went through: the provider is no longer throttling us.
    pub fn success(&mut self) {
        self.pause = Duration::ZERO;
    }
}

/// Does `reply` (an upstream reply text, code included) match one of the
/// lower-case `patterns` (case-insensitive substring)?
pub fn is_throttling(reply: &str, patterns: &[String]) -> bool {
    let lower = reply.to_lowercase();
    patterns
        .iter()
        .any(|p| !p.is_empty() && lower.contains(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spaces_messages() {
        let mut t = Throttle::new(Some(10.0), 1);
        let now = Instant::now();
        assert_eq!(t.reserve(now), Duration::ZERO);
        assert_eq!(t.reserve(now), Duration::from_millis(100));
        assert_eq!(t.reserve(now), Duration::from_millis(200));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.reserve(Instant::now()), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_allows_a_few_at_once() {
        let mut t = Throttle::new(Some(10.0), 3);
        let now = Instant::now();
        assert_eq!(t.reserve(now), Duration::ZERO);
        assert_eq!(t.reserve(now), Duration::ZERO);
        assert_eq!(t.reserve(now), Duration::ZERO);
        assert_eq!(t.reserve(now), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_without_rate() {
        let mut t = Throttle::new(None, 1);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(t.reserve(now), Duration::ZERO);
        }
        assert_eq!(Throttle::new(Some(0.0), 1).reserve(now), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_reply_pauses_and_backs_off() {
        let mut t = Throttle::new(None, 1);
        let now = Instant::now();
        assert_eq!(t.throttled(now), Duration::from_secs(1));
        assert_eq!(t.wait(now), Duration::from_secs(1));
        assert_eq!(t.throttled(now), Duration::from_secs(2));
        for _ in 0..10 {
            t.throttled(now);
        }
        assert_eq!(t.wait(now), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(t.reserve(Instant::now()), Duration::ZERO);
        t.success();
        assert_eq!(t.throttled(Instant::now()), Duration::from_secs(1));
    }

    #[test]
    fn throttling_patterns_match_case_insensitively() {
        let p = vec!["throttling".to_string(), "maximum sending rate".to_string()];
        assert!(is_throttling(
            "454 4.7.0 Throttling failure: Maximum sending rate exceeded.",
            &p
        ));
        assert!(!is_throttling("451 4.3.0 try again later", &p));
        assert!(!is_throttling("anything", &[String::new()]));
    }
}
