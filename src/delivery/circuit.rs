//! PURE: a circuit breaker per upstream. After `threshold` consecutive
//! transient failures the circuit opens and the upstream is skipped; after
//! `cooldown` one probe is let through (half-open): success closes the
//! circuit, failure opens it again for another cooldown.

use std::time::Duration;

use tokio::time::Instant;

/// State of one upstream's breaker. Time is passed in.
#[derive(Debug, Clone)]
pub struct Circuit {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

impl Circuit {
    /// A closed breaker opening after `threshold` (>= 1) failures in a row.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Circuit {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            state: State::Closed,
        }
    }

    /// May a delivery go to this upstream at `now`? When the cooldown is
    /// over this lets exactly one probe through and answers `false` to
    /// everyone else until that probe reports.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// The upstream answered properly (any SMTP reply to the transaction).
    pub fn success(&mut self) {
        self.failures = 0;
        self.state = State::Closed;
    }

    /// A transient failure of the upstream itself (connect, TLS, timeout,
    /// 4xx at greeting/MAIL/DATA). Returns `true` if this opened the circuit.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let open = match self.state {
            State::HalfOpen => true,
            State::Closed => self.failures >= self.threshold,
            State::Open { .. } => false,
        };
        if open {
            self.state = State::Open {
                until: now + self.cooldown,
            };
        }
        open
    }

    /// A probe that was let through never ran (e.g. shutdown): allow another.
    pub fn release_probe(&mut self, now: Instant) {
        if self.state == State::HalfOpen {
            self.state = State::Open { until: now };
        }
    }

    /// The state as the metrics gauge and readiness report it at `now`: an
    /// open circuit whose cooldown is over reads half-open (the next
    /// delivery is let through as a probe), so an idle node does not stay
    /// unready after its upstream recovered.
    pub fn state_at(&self, now: Instant) -> crate::metrics::CircuitState {
        use crate::metrics::CircuitState as S;
        match self.state {
            State::Closed => S::Closed,
            State::HalfOpen => S::HalfOpen,
            State::Open { until } if now >= until => S::HalfOpen,
            State::Open { .. } => S::Open,
        }
    }

    /// True while deliveries are being refused (open, or half-open with a probe out).
    pub fn is_open(&self) -> bool {
        self.state != State::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes_after_cooldown() {
        let mut c = Circuit::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(c.allow(t0));
        assert!(!c.failure(t0));
        assert!(!c.failure(t0));
        assert!(c.allow(t0), "two failures keep it closed");
        assert!(c.failure(t0), "third failure opens");
        assert!(c.is_open());
        assert_eq!(c.state_at(t0), crate::metrics::CircuitState::Open);
        assert_eq!(
            c.state_at(t0 + Duration::from_secs(30)),
            crate::metrics::CircuitState::HalfOpen,
            "cooldown over: the next delivery probes"
        );
        assert!(!c.allow(t0));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!c.allow(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        assert!(c.allow(t1), "one probe after the cooldown");
        assert!(!c.allow(t1), "only one probe at a time");
        assert!(c.failure(t1), "a failed probe opens it again");
        assert!(!c.allow(t1));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(c.allow(Instant::now()));
        c.success();
        assert!(!c.is_open());
        assert!(c.allow(Instant::now()));
        assert!(c.allow(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let mut c = Circuit::new(2, Duration::from_secs(5));
        let t = Instant::now();
        c.failure(t);
        c.success();
        assert!(!c.failure(t));
        assert!(c.allow(t));
    }

    #[tokio::test(start_paused = true)]
    async fn released_probe_can_be_retaken() {
        let mut c = Circuit::new(1, Duration::from_secs(5));
        let t = Instant::now();
        c.failure(t);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(c.allow(Instant::now()));
        c.release_probe(Instant::now());
        assert!(c.allow(Instant::now()));
    }
}
