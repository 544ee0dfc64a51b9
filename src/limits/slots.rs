//! Concurrency counters (sessions per user, connections per IP), per node:
//! a guard holds one slot and gives it back when dropped, so a crashed or
//! cancelled session can never leak a slot.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Slots in use per key.
pub(crate) struct Slots<K: Eq + Hash + Clone> {
    held: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Slots {
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one slot of `key` if fewer than `max` are held (`max == 0`: no
    /// limit); `Err(held)` otherwise.
    pub(crate) fn acquire(self: &Arc<Self>, key: K, max: u32) -> Result<SlotGuard<K>, u32> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if max > 0 && *n >= max {
            return Err(*n);
        }
        *n += 1;
        Ok(SlotGuard {
            slots: self.clone(),
            key: Some(key),
        })
    }

    /// Keys with slots in use, and how many.
    pub(crate) fn snapshot(&self) -> Vec<(K, u32)> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().map(|(k, n)| (k.clone(), *n)).collect()
    }
}

/// One held slot; released on drop.
pub struct SlotGuard<K: Eq + Hash + Clone> {
    slots: Arc<Slots<K>>,
    key: Option<K>,
}

impl<K: Eq + Hash + Clone> Drop for SlotGuard<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&key);
            }
        }
    }
}

impl<K: Eq + Hash + Clone> std::fmt::Debug for SlotGuard<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotGuard")
    }
}
