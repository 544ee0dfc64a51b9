//! PURE generic cell rate algorithm (GCRA, ITU-T I.371 "virtual scheduling").
//!
//! A [`Rate`] of `count` per `period` has emission interval
//! `T = period / count` and burst `count`: from idle, exactly `count` cells
//! pass at once, the next is refused, and capacity refills one cell per `T`
//! (all of it after `period`). The state is one number, the theoretical
//! arrival time (TAT).
//!
//! To keep `T` exact for any `count`, a TAT is stored in units of
//! `1/count` ms: then `T` is exactly `period_ms` units and the tolerance
//! window (`count * T`) exactly `period_ms * count` units. A TAT is only
//! meaningful together with its rate, which is why counter keys name the rate
//! (see `keys`).

/// One conditional GCRA step, in the scaled units of its key (1 unit =
/// 1/`scale` ms). The stored TAT `t` (absent = `now`) becomes
/// `max(t, now) + increment` when that is `<= now + window`; otherwise
/// nothing changes. `expires_at` is then `ceil(new_tat / scale)` ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraStep {
    /// Now, in key units.
    pub now: i64,
    /// Emission interval times cost (negative: give cells back).
    pub increment: i64,
    /// How far the TAT may run ahead of `now` (the burst tolerance plus one interval).
    pub window: i64,
    /// Key units per millisecond.
    pub scale: i64,
}

/// What a GCRA step did ([`apply`]; the stores' `LimitStore::limit_check`
/// does the same in SQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcraOutcome {
    /// The step was applied; `tat` is the new stored value.
    Allowed { tat: i64 },
    /// Nothing changed; `tat` is the stored value when it could be read in
    /// the same statement (`None` only under a concurrent first insert).
    Refused { tat: Option<i64> },
}

/// Largest accepted `count` (keeps `now_ms * count` far inside `i64`).
pub const MAX_COUNT: u32 = 1_000_000;

/// `count` cells per `period_ms` milliseconds. `count == 0` means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Cells per period (the burst).
    pub count: u32,
    /// The period in milliseconds.
    pub period_ms: u64,
}

/// Outcome of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the cells pass.
    pub allowed: bool,
    /// The TAT to store (unchanged when refused).
    pub tat: i64,
    /// When refused: how long until the same request would pass (0 when
    /// allowed). For a cost larger than the burst: one whole period.
    pub retry_after_ms: u64,
}

impl Rate {
    /// A rate, with `count` clamped to [`MAX_COUNT`] and `period_ms` to >= 1.
    pub fn new(count: u32, period_ms: u64) -> Rate {
        Rate {
            count: count.min(MAX_COUNT),
            period_ms: period_ms.max(1),
        }
    }

    /// False for the "no limit" rate (`count == 0`).
    pub fn is_limited(&self) -> bool {
        self.count > 0
    }

    fn scale(&self) -> i64 {
        i64::from(self.count.max(1))
    }

    /// `now_ms` in this rate's TAT units.
    pub fn scaled(&self, now_ms: i64) -> i64 {
        now_ms.saturating_mul(self.scale())
    }

    /// The GCRA step for `cost` cells at `now_ms`, in this rate's units.
    pub fn step(&self, now_ms: i64, cost: u32) -> GcraStep {
        let t = self.period_ms as i64;
        GcraStep {
            now: self.scaled(now_ms),
            increment: t.saturating_mul(i64::from(cost)),
            window: t.saturating_mul(self.scale()),
            scale: self.scale(),
        }
    }

    /// Cells in use at `now_ms` for stored `tat` (0..=count, rounded up).
    pub fn used(&self, tat: i64, now_ms: i64) -> u32 {
        let ahead = tat.saturating_sub(self.scaled(now_ms));
        if ahead <= 0 {
            return 0;
        }
        let t = self.period_ms as i64;
        let cells = (ahead + t - 1) / t;
        u32::try_from(cells).unwrap_or(u32::MAX)
    }

    /// Milliseconds from `now_ms` until `cost` cells would pass given stored
    /// `tat` (0 if they pass now; one period if they never can).
    pub fn retry_after_ms(&self, tat: Option<i64>, now_ms: i64, cost: u32) -> u64 {
        let step = self.step(now_ms, cost);
        if step.increment > step.window {
            return self.period_ms;
        }
        let base = tat.unwrap_or(step.now).max(step.now);
        let over = base + step.increment - step.now - step.window;
        if over <= 0 {
            0
        } else {
            ((over + step.scale - 1) / step.scale) as u64
        }
    }
}

/// Applies `step` to a stored TAT exactly as the stores' SQL does: the new
/// TAT is `max(tat, now) + increment` when that is `<= now + window`.
pub fn apply(step: &GcraStep, stored: Option<i64>) -> GcraOutcome {
    let base = stored.unwrap_or(step.now).max(step.now);
    let next = base.saturating_add(step.increment);
    if step.increment <= step.window && next <= step.now.saturating_add(step.window) {
        GcraOutcome::Allowed { tat: next }
    } else {
        GcraOutcome::Refused { tat: stored }
    }
}

/// Unix ms after which a stored TAT of this step's units means nothing.
pub fn expires_at(step: &GcraStep, tat: i64) -> i64 {
    let scale = step.scale.max(1);
    (tat + scale - 1).div_euclid(scale)
}

/// Decides whether `cost` cells may pass at `now_ms` given `stored_tat`.
pub fn check(rate: Rate, stored_tat: Option<i64>, now_ms: i64, cost: u32) -> Decision {
    match apply(&rate.step(now_ms, cost), stored_tat) {
        GcraOutcome::Allowed { tat } => Decision {
            allowed: true,
            tat,
            retry_after_ms: 0,
        },
        GcraOutcome::Refused { tat } => Decision {
            allowed: false,
            tat: tat.unwrap_or(rate.scaled(now_ms)),
            retry_after_ms: rate.retry_after_ms(tat, now_ms, cost).max(1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    /// Sends `n` single cells at `now`, returning how many passed.
    fn burst(rate: Rate, tat: &mut Option<i64>, now: i64, n: u32) -> u32 {
        let mut passed = 0;
        for _ in 0..n {
            let d = check(rate, *tat, now, 1);
            if d.allowed {
                passed += 1;
                *tat = Some(d.tat);
            }
        }
        passed
    }

    #[test]
    fn exactly_count_within_window_then_refused_then_recovers() {
        for count in [1, 2, 3, 7, 60, 100, 7_919, 50_000] {
            let rate = Rate::new(count, MIN);
            let mut tat = None;
            let t0 = 1_700_000_000_000;
            assert_eq!(burst(rate, &mut tat, t0, count), count, "count {count}");
            let refused = check(rate, tat, t0, 1);
            assert!(!refused.allowed, "count {count}: one more must be refused");
            assert_eq!(refused.tat, tat.unwrap(), "refusal changes nothing");
            assert!(
                refused.retry_after_ms >= 1 && refused.retry_after_ms <= MIN / count as u64 + 1
            );
            // Just before the window ends the burst is not back in full...
            assert!(burst(rate, &mut tat.clone(), t0 + MIN as i64 - 1, count) < count);
            // ...after exactly one window it is.
            assert_eq!(
                burst(rate, &mut tat, t0 + MIN as i64, count),
                count,
                "count {count}"
            );
            assert!(!check(rate, tat, t0 + MIN as i64, 1).allowed);
        }
    }

    #[test]
    fn refills_one_cell_per_emission_interval() {
        let rate = Rate::new(3, MIN); // T = 20 s
        let mut tat = None;
        assert_eq!(burst(rate, &mut tat, 0, 3), 3);
        let d = check(rate, tat, 0, 1);
        assert_eq!(d.retry_after_ms, 20_000);
        assert!(!check(rate, tat, 19_999, 1).allowed);
        assert_eq!(burst(rate, &mut tat, 20_000, 2), 1);
        assert_eq!(rate.used(tat.unwrap(), 20_000), 3);
        assert_eq!(rate.used(tat.unwrap(), 30_000), 3);
        assert_eq!(rate.used(tat.unwrap(), 40_000), 2);
        assert_eq!(rate.used(tat.unwrap(), 80_000), 0);
    }

    #[test]
    fn cost_counts_n_cells_at_once() {
        let rate = Rate::new(100, 86_400_000);
        let mut tat = None;
        let d = check(rate, tat, 0, 60);
        assert!(d.allowed);
        tat = Some(d.tat);
        let d = check(rate, tat, 0, 41);
        assert!(!d.allowed, "60 + 41 > 100");
        assert_eq!(d.retry_after_ms, 864_000, "one cell of a day/100");
        assert!(check(rate, tat, 0, 40).allowed, "60 + 40 = 100");
        let too_big = check(rate, None, 0, 101);
        assert!(!too_big.allowed, "more than the burst never passes");
        assert_eq!(too_big.retry_after_ms, 86_400_000);
    }

    #[test]
    fn stale_tat_in_the_past_counts_as_idle() {
        let rate = Rate::new(2, 1_000);
        let old = Some(rate.scaled(5_000));
        assert_eq!(burst(rate, &mut old.clone(), 10_000, 3), 2);
    }

    #[test]
    fn expiry_is_when_the_tat_is_reached() {
        let rate = Rate::new(3, MIN);
        let step = rate.step(1_000, 1);
        let GcraOutcome::Allowed { tat } = apply(&step, None) else {
            panic!("allowed");
        };
        assert_eq!(expires_at(&step, tat), 21_000);
    }
}
