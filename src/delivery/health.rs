//! A cheap, cloneable view of every upstream's circuit breaker: what
//! `/health/upstreams` reads to tell whether this node can deliver at all
//! (never readiness: a node without a usable upstream still accepts mail).

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::circuit::Circuit;
use super::lock;
use crate::http::{UpstreamHealth, UpstreamStatus};
use crate::metrics::CircuitState;

/// The circuit breakers of the configured upstreams, shared with the
/// delivery workers (reading takes each breaker's lock for a moment).
#[derive(Clone, Default)]
pub struct Circuits {
    entries: Arc<Vec<(String, Arc<Mutex<Circuit>>)>>,
}

impl Circuits {
    pub(super) fn new(entries: Vec<(String, Arc<Mutex<Circuit>>)>) -> Self {
        Circuits {
            entries: Arc::new(entries),
        }
    }

    /// True when no upstream is configured (an intake-only node).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each configured upstream's breaker state now, in config order.
    pub fn states(&self) -> Vec<(String, CircuitState)> {
        let now = Instant::now();
        self.entries
            .iter()
            .map(|(name, c)| (name.clone(), lock(c).state_at(now)))
            .collect()
    }

    /// `configured` upstreams, `usable` = those whose circuit
    /// is not open (closed, or half-open: the next delivery may go there).
    pub fn upstream_status(&self) -> UpstreamStatus {
        let states = self.states();
        UpstreamStatus {
            usable: states
                .iter()
                .filter(|(_, s)| *s != CircuitState::Open)
                .count(),
            configured: states.len(),
        }
    }
}

impl UpstreamHealth for Circuits {
    fn upstream_status(&self) -> UpstreamStatus {
        Circuits::upstream_status(self)
    }

    fn upstream_states(&self) -> Vec<(String, CircuitState)> {
        self.states()
    }
}
