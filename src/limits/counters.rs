//! The two homes of GCRA counters behind one interface: this process
//! (bounded map) or the store (`limit_counters`, one statement per check).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use super::gcra;
use crate::store::{GcraOutcome, GcraStep, LimitCounter, LimitStore, StoreResult};

/// How often idle local counters are swept (and store rows purged).
const SWEEP_EVERY_MS: i64 = 60_000;
const PURGE_EVERY_MS: i64 = 5 * 60_000;
/// Local map shards, so checks on different keys rarely contend.
const SHARDS: usize = 16;

/// Counters, local or in the store. Same semantics either way.
pub(crate) enum Counters {
    Local(LocalCounters),
    Store {
        store: Arc<dyn LimitStore>,
        next_purge: AtomicI64,
    },
}

impl Counters {
    pub(crate) fn store(store: Arc<dyn LimitStore>) -> Counters {
        Counters::Store {
            store,
            next_purge: AtomicI64::new(0),
        }
    }

    pub(crate) async fn check(
        &self,
        key: &str,
        step: &GcraStep,
        now_ms: i64,
    ) -> StoreResult<GcraOutcome> {
        match self {
            Counters::Local(l) => Ok(l.check(key, step, now_ms)),
            Counters::Store { store, next_purge } => {
                let due = next_purge.load(Ordering::Relaxed);
                if now_ms >= due
                    && next_purge
                        .compare_exchange(
                            due,
                            now_ms + PURGE_EVERY_MS,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    let store = store.clone();
                    tokio::spawn(async move {
                        if let Err(e) = store.limit_purge(now_ms).await {
                            tracing::warn!(error = %e, "purging expired limit counters failed");
                        }
                    });
                }
                store.limit_check(key, step).await
            }
        }
    }

    pub(crate) async fn get(&self, keys: &[String]) -> StoreResult<Vec<LimitCounter>> {
        match self {
            Counters::Local(l) => Ok(l.get(keys)),
            Counters::Store { store, .. } => store.limit_get(keys).await,
        }
    }

    pub(crate) async fn set(&self, counter: &LimitCounter) -> StoreResult<()> {
        match self {
            Counters::Local(l) => {
                l.set(counter);
                Ok(())
            }
            Counters::Store { store, .. } => store.limit_set(counter).await,
        }
    }

    pub(crate) async fn delete(&self, keys: &[String]) -> StoreResult<u64> {
        match self {
            Counters::Local(l) => Ok(keys
                .iter()
                .map(|k| l.shard(k).map.remove(k).is_some() as u64)
                .sum()),
            Counters::Store { store, .. } => store.limit_delete(keys).await,
        }
    }

    pub(crate) async fn delete_prefix(&self, prefix: &str) -> StoreResult<u64> {
        match self {
            Counters::Local(l) => Ok(l.delete_prefix(prefix)),
            Counters::Store { store, .. } => store.limit_delete_prefix(prefix).await,
        }
    }

    pub(crate) async fn list(&self, now_ms: i64) -> StoreResult<Vec<LimitCounter>> {
        match self {
            Counters::Local(l) => Ok(l.list(now_ms)),
            Counters::Store { store, .. } => store.limit_list(now_ms).await,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    tat: i64,
    expires_at: i64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
}

/// In-process counters: `key -> (TAT, expiry)`, at most `max_keys` of them.
/// Idle keys (expired TAT: they mean "full capacity", same as absent) are
/// swept every minute; when full, the key closest to expiry is dropped.
pub(crate) struct LocalCounters {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    next_sweep: AtomicI64,
}

impl LocalCounters {
    pub(crate) fn new(max_keys: usize) -> Self {
        LocalCounters {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            next_sweep: AtomicI64::new(0),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let i = (h.finish() as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every [`SWEEP_EVERY_MS`], drops idle keys from every shard (one
    /// shard locked at a time).
    fn sweep_if_due(&self, now_ms: i64) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now_ms < due
            || self
                .next_sweep
                .compare_exchange(
                    due,
                    now_ms + SWEEP_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            s.map.retain(|_, e| e.expires_at > now_ms);
        }
    }

    fn make_room(shard: &mut Shard, per_shard: usize, now_ms: i64) {
        if shard.map.len() >= per_shard {
            shard.map.retain(|_, e| e.expires_at > now_ms);
        }
        while shard.map.len() >= per_shard {
            let Some(victim) = shard
                .map
                .iter()
                .min_by_key(|(_, e)| e.expires_at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            shard.map.remove(&victim);
        }
    }

    fn check(&self, key: &str, step: &GcraStep, now_ms: i64) -> GcraOutcome {
        self.sweep_if_due(now_ms);
        let mut shard = self.shard(key);
        let stored = shard.map.get(key).map(|e| e.tat);
        let outcome = gcra::apply(step, stored);
        if let GcraOutcome::Allowed { tat } = outcome {
            let entry = Entry {
                tat,
                expires_at: gcra::expires_at(step, tat),
            };
            if let Some(e) = shard.map.get_mut(key) {
                *e = entry;
            } else {
                Self::make_room(&mut shard, self.per_shard, now_ms);
                shard.map.insert(key.to_string(), entry);
            }
        }
        outcome
    }

    fn get(&self, keys: &[String]) -> Vec<LimitCounter> {
        keys.iter()
            .filter_map(|k| {
                self.shard(k).map.get(k).map(|e| LimitCounter {
                    key: k.clone(),
                    tat: e.tat,
                    expires_at: e.expires_at,
                })
            })
            .collect()
    }

    fn set(&self, c: &LimitCounter) {
        let mut shard = self.shard(&c.key);
        let entry = Entry {
            tat: c.tat,
            expires_at: c.expires_at,
        };
        if let Some(e) = shard.map.get_mut(&c.key) {
            *e = entry;
        } else {
            // A lockout must not be the one evicted to make room: make room first.
            Self::make_room(&mut shard, self.per_shard, i64::MIN);
            shard.map.insert(c.key.clone(), entry);
        }
    }

    fn delete_prefix(&self, prefix: &str) -> u64 {
        let mut n = 0;
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.map.len();
            s.map.retain(|k, _| !k.starts_with(prefix));
            n += (before - s.map.len()) as u64;
        }
        n
    }

    fn list(&self, now_ms: i64) -> Vec<LimitCounter> {
        let mut out: Vec<LimitCounter> = Vec::new();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(
                s.map
                    .iter()
                    .filter(|(_, e)| e.expires_at > now_ms)
                    .map(|(k, e)| LimitCounter {
                        key: k.clone(),
                        tat: e.tat,
                        expires_at: e.expires_at,
                    }),
            );
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Number of keys held (for tests of the memory bound).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::gcra::Rate;

    #[test]
    fn memory_is_bounded_and_idle_keys_are_swept() {
        let local = LocalCounters::new(160);
        let rate = Rate::new(5, 1_000);
        for i in 0..10_000 {
            let out = local.check(&format!("k{i}"), &rate.step(0, 1), 0);
            assert!(matches!(out, GcraOutcome::Allowed { .. }));
        }
        assert!(local.len() <= 160, "len {}", local.len());
        // After every TAT passed and a sweep interval, nothing idle is kept.
        local.check(
            "fresh",
            &rate.step(SWEEP_EVERY_MS + 1, 1),
            SWEEP_EVERY_MS + 1,
        );
        assert_eq!(local.len(), 1);
    }

    #[test]
    fn same_semantics_as_the_pure_algorithm() {
        let local = LocalCounters::new(100);
        let rate = Rate::new(3, 60_000);
        let results: Vec<bool> = (0..4)
            .map(|_| {
                matches!(
                    local.check("k", &rate.step(0, 1), 0),
                    GcraOutcome::Allowed { .. }
                )
            })
            .collect();
        assert_eq!(results, [true, true, true, false]);
        assert!(matches!(
            local.check("k", &rate.step(60_000, 3), 60_000),
            GcraOutcome::Allowed { .. }
        ));
        assert_eq!(local.delete_prefix("k"), 1);
        assert_eq!(local.len(), 0);
    }
}
