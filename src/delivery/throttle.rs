//! Provider throttles per upstream.
//!
//! Two brakes, both applied before a message is sent to an upstream:
//!
//! - the configured **rate** (`rate` messages per second, `burst` at once:
//!   provider quotas such as SES's) is paced by the node's
//!   [`Limiter`](crate::limits::Limiter), so with the `postgres` limits
//!   backend the quota holds for all nodes together, and with `local` per
//!   node;
//! - a **pause** when the provider says we are too fast (e.g. SES `454
//!   Throttling failure: Maximum sending rate exceeded`). It is kept per
//!   node ([`Pause`]): it doubles each time the provider throttles us again
//!   after a pause ran out, up to a maximum, and resets on success.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::lock;
use crate::limits::{Limiter, Reservation};

/// First pause after a throttling reply.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// What to do with the next message to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it now: its slot is taken (any wait is over).
    Send,
    /// No slot within the allowed wait: defer the message for this long
    /// instead (nothing was taken).
    Defer(Duration),
}

/// One upstream's throttle.
pub struct UpstreamThrottle {
    name: String,
    /// `burst` messages per `period` (`None`: unlimited).
    rate: Option<(u32, Duration)>,
    limiter: Arc<Limiter>,
    pause: Mutex<Pause>,
}

impl UpstreamThrottle {
    /// The throttle of upstream `name`: `rate` messages per second
    /// (`None` or <= 0: unlimited) with `burst` (>= 1) at once, paced by
    /// `limiter`.
    pub fn new(name: &str, rate: Option<f64>, burst: u32, limiter: Arc<Limiter>) -> Self {
        UpstreamThrottle {
            name: format!("upstream {name}"),
            rate: gcra_rate(rate, burst),
            limiter,
            pause: Mutex::new(Pause::default()),
        }
    }

    /// Takes a slot for one message, waiting for it (a pause, then the
    /// rate) when that takes at most `max_wait` in all.
    pub async fn admit(&self, max_wait: Duration) -> Admission {
        let paused = lock(&self.pause).remaining(Instant::now());
        if paused > max_wait {
            return Admission::Defer(paused);
        }
        // Sleep out the pause first, so the rate's slot is reserved for when
        // the message really goes.
        if !paused.is_zero() {
            tokio::time::sleep(paused).await;
        }
        let Some((count, period)) = self.rate else {
            return Admission::Send;
        };
        match self
            .limiter
            .reserve(&self.name, count, period, max_wait - paused)
            .await
        {
            Reservation::Granted { wait } => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Admission::Send
            }
            Reservation::Refused { retry_after } => Admission::Defer(retry_after),
        }
    }

    /// The provider answered with a throttling reply: pause this upstream
    /// on this node. Returns the pause.
    pub fn throttled(&self) -> Duration {
        lock(&self.pause).throttled(Instant::now())
    }

    /// A message went through: the provider is no longer throttling us.
    pub fn success(&self) {
        lock(&self.pause).success();
    }
}

/// `rate` per second with `burst` at once as a GCRA rate: `burst` per
/// `burst / rate` seconds, the period rounded UP to a whole millisecond so
/// the pace is never faster than configured (14/s, burst 1: one per 72 ms,
/// 13.9/s).
fn gcra_rate(rate: Option<f64>, burst: u32) -> Option<(u32, Duration)> {
    let rate = rate.filter(|r| r.is_finite() && *r > 0.0)?;
    let burst = burst.clamp(1, crate::limits::gcra::MAX_COUNT);
    let period_ms = (f64::from(burst) * 1000.0 / rate).ceil().max(1.0);
    Some((burst, Duration::from_millis(period_ms as u64)))
}

/// PURE: the back-off pause of one upstream on this node. Time is passed in.
#[derive(Debug, Clone, Default)]
pub struct Pause {
    until: Option<Instant>,
    length: Duration,
}

impl Pause {
    /// How long the upstream is still paused at `now`.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.until
            .map(|u| u.saturating_duration_since(now))
            .unwrap_or_default()
    }

    /// A throttling reply at `now`. While a pause runs, more replies (from
    /// messages sent before it began) do not lengthen it; the first one
    /// after it ran out doubles the length, up to [`MAX_PAUSE`]. Returns
    /// the time left.
    pub fn throttled(&mut self, now: Instant) -> Duration {
        let left = self.remaining(now);
        if !left.is_zero() {
            return left;
        }
        self.length = if self.length.is_zero() {
            FIRST_PAUSE
        } else {
            (self.length * 2).min(MAX_PAUSE)
        };
        self.until = Some(now + self.length);
        self.length
    }

    /// A message went through: the next throttling reply starts over.
    pub fn success(&mut self) {
        self.length = Duration::ZERO;
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
    use crate::limits::{LimitsConfig, TokioClock};

    fn local_limiter() -> Arc<Limiter> {
        let clock = Arc::new(TokioClock::new());
        Arc::new(Limiter::new(LimitsConfig::default(), None, clock).unwrap())
    }

    #[test]
    fn rates_become_gcra_periods_never_faster_than_configured() {
        let ms = Duration::from_millis;
        assert_eq!(gcra_rate(Some(14.0), 1), Some((1, ms(72))));
        assert_eq!(gcra_rate(Some(10.0), 3), Some((3, ms(300))));
        assert_eq!(gcra_rate(Some(0.5), 0), Some((1, ms(2000))));
        assert_eq!(gcra_rate(Some(5000.0), 1), Some((1, ms(1))));
        assert_eq!(gcra_rate(None, 1), None);
        assert_eq!(gcra_rate(Some(0.0), 1), None);
        assert_eq!(gcra_rate(Some(f64::NAN), 1), None);
    }

    /// Admits one message; returns what happened and how long it waited.
    async fn timed(t: &UpstreamThrottle, max_wait_ms: u64) -> (Admission, u64) {
        let started = Instant::now();
        let a = t.admit(Duration::from_millis(max_wait_ms)).await;
        (a, started.elapsed().as_millis() as u64)
    }

    #[tokio::test(start_paused = true)]
    async fn rate_spaces_messages_and_defers_beyond_the_wait() {
        let t = Arc::new(UpstreamThrottle::new("ses", Some(10.0), 1, local_limiter()));
        // Three workers at once: slots now, +100 ms, +200 ms; a fourth
        // would wait 300 ms > 250 ms, so it is deferred until a slot within
        // 250 ms frees up (50 ms).
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let t = t.clone();
                tokio::spawn(async move { timed(&t, 250).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(
            timed(&t, 250).await,
            (Admission::Defer(Duration::from_millis(50)), 0)
        );
        let mut waits = Vec::new();
        for w in workers {
            let (a, waited) = w.await.unwrap();
            assert_eq!(a, Admission::Send);
            waits.push(waited);
        }
        waits.sort();
        assert_eq!(waits, [0, 100, 200]);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(timed(&t, 0).await, (Admission::Send, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_without_rate() {
        let t = UpstreamThrottle::new("m365", None, 1, local_limiter());
        for _ in 0..1000 {
            assert_eq!(timed(&t, 0).await, (Admission::Send, 0));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttling_reply_pauses_then_the_rate_applies() {
        let t = UpstreamThrottle::new("ses", Some(10.0), 1, local_limiter());
        assert_eq!(t.throttled(), Duration::from_secs(1));
        assert_eq!(
            timed(&t, 500).await,
            (Admission::Defer(Duration::from_secs(1)), 0)
        );
        assert_eq!(timed(&t, 2000).await, (Admission::Send, 1000));
        assert_eq!(timed(&t, 2000).await, (Admission::Send, 100));
        t.success();
        assert_eq!(t.throttled(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_backs_off_without_compounding_concurrent_replies() {
        let mut p = Pause::default();
        let now = Instant::now();
        assert_eq!(p.throttled(now), Duration::from_secs(1));
        // Sixteen workers hear 454 for messages sent before the pause:
        // still one pause of 1 s.
        for _ in 0..16 {
            assert_eq!(p.throttled(now), Duration::from_secs(1));
        }
        assert_eq!(p.remaining(now), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(p.throttled(Instant::now()), Duration::from_secs(2));
        for _ in 0..10 {
            let left = p.remaining(Instant::now());
            tokio::time::advance(left).await;
            p.throttled(Instant::now());
        }
        assert_eq!(p.remaining(Instant::now()), MAX_PAUSE);
        tokio::time::advance(MAX_PAUSE).await;
        assert_eq!(p.remaining(Instant::now()), Duration::ZERO);
        p.success();
        assert_eq!(p.throttled(Instant::now()), FIRST_PAUSE);
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
