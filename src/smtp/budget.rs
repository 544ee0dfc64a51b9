//! The node-wide budget of message bytes held in memory by SMTP sessions
//! (`smtp.message_memory_budget`, issue 12 item 8).
//!
//! Every session receiving message content holds a [`Lease`] on the budget
//! covering the memory its body buffer has reserved (the declared `SIZE=`
//! up front, else a small start, growing with the buffer). When the budget
//! cannot cover a new lease or a lease's growth, the session refuses the
//! message with `452 4.3.1` (RFC 3463: mail system full) and the session
//! goes on; the client retries later. A lease is given back when its
//! transaction ends: the message was stored or refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;

/// Bytes held by all sessions of one node, at most `limit`. Cheap to
/// share; every method is lock-free.
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    /// Where the bytes in use are shown (`postgate_smtp_message_memory_bytes`).
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit)
            .field("used", &self.in_use())
            .finish()
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes, none of it in use.
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            metrics: Metrics::detached(),
        })
    }

    /// A budget of `limit` bytes whose use is shown in `metrics`.
    pub fn with_metrics(limit: usize, metrics: Arc<Metrics>) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            metrics,
        })
    }

    fn show(&self, delta: i64) {
        self.metrics.message_memory(delta);
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes leased now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether `n` more bytes would fit now (a hint: nothing is taken).
    pub fn fits(&self, n: usize) -> bool {
        self.in_use().saturating_add(n) <= self.limit
    }

    /// Takes `n` bytes, all or nothing.
    fn take(&self, n: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok();
        if taken {
            self.show(n as i64);
        }
        taken
    }

    /// A lease of `n` bytes, or `None` when they do not fit.
    pub fn lease(self: &Arc<Self>, n: usize) -> Option<Lease> {
        self.take(n).then(|| Lease {
            budget: self.clone(),
            held: n,
        })
    }
}

/// Bytes of a [`MemoryBudget`] held by one transaction; given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Lease {
    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Grows the lease to at least `n` bytes; false (and unchanged) when the
    /// budget cannot cover the difference. Never shrinks.
    pub fn grow_to(&mut self, n: usize) -> bool {
        if n <= self.held {
            return true;
        }
        if !self.budget.take(n - self.held) {
            return false;
        }
        self.held = n;
        true
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
        self.budget.show(-(self.held as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_fit_grow_and_are_given_back() {
        let b = MemoryBudget::new(100);
        let mut a = b.lease(60).unwrap();
        assert!(b.fits(40) && !b.fits(41));
        assert!(b.lease(41).is_none(), "all or nothing");
        let c = b.lease(40).unwrap();
        assert!(!a.grow_to(61), "the budget is spent");
        assert_eq!((a.held(), b.in_use()), (60, 100));
        assert!(a.grow_to(10), "never shrinks");
        drop(c);
        assert!(a.grow_to(100));
        assert_eq!(b.in_use(), 100);
        drop(a);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn bytes_in_use_are_shown_in_metrics() {
        let metrics = Metrics::detached();
        let b = MemoryBudget::with_metrics(100, metrics.clone());
        let shown = || {
            metrics
                .render()
                .lines()
                .find_map(|l| l.strip_prefix("postgate_smtp_message_memory_bytes "))
                .map(str::to_string)
        };
        assert_eq!(shown().as_deref(), Some("0"));
        let mut a = b.lease(60).unwrap();
        assert!(a.grow_to(70) && !a.grow_to(101));
        assert_eq!(shown().as_deref(), Some("70"));
        drop(a);
        assert_eq!(shown().as_deref(), Some("0"));
    }

    #[test]
    fn concurrent_leases_never_exceed_the_limit() {
        let b = MemoryBudget::new(1000);
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..1000)
                            .filter_map(|_| b.lease(7))
                            .map(|l| {
                                let n = l.held();
                                std::mem::forget(l);
                                n
                            })
                            .sum::<usize>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 994, "142 leases of 7 fit in 1000");
        assert_eq!(b.in_use(), 994);
    }
}
