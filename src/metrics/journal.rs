//! The metrics of journaling copies (issue #17 item 4).

use prometheus::{IntCounter, IntCounterVec};

use super::Declarer;

/// Journal copies queued and their failed delivery attempts.
pub struct JournalMetrics {
    queued: IntCounter,
    failures: IntCounterVec,
}

/// Why a journal copy's attempt did not deliver it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalFailure {
    /// Tried again later (4xx, no upstream answer, circuit open, throttled).
    Deferred,
    /// The upstream refused it permanently (5xx): the archive lost it.
    Failed,
    /// The queue lifetime ran out: the archive lost it.
    Expired,
}

impl JournalFailure {
    fn as_str(self) -> &'static str {
        match self {
            JournalFailure::Deferred => "deferred",
            JournalFailure::Failed => "failed",
            JournalFailure::Expired => "expired",
        }
    }
}

impl JournalMetrics {
    pub(super) fn declare(d: &mut Declarer) -> JournalMetrics {
        let m = JournalMetrics {
            queued: d.counter(
                "postgate_journal_copies_total",
                "Journal copies queued (one per archive address), with the message they copy.",
            ),
            failures: d.counter_vec(
                "postgate_journal_failures_total",
                "Journal copy recipients not delivered by an attempt, by result (deferred: retried; failed, expired: lost).",
                &["result"],
            ),
        };
        // Every series exists from the start, so `increase()` sees the first one.
        for why in [
            JournalFailure::Deferred,
            JournalFailure::Failed,
            JournalFailure::Expired,
        ] {
            m.failures.with_label_values(&[why.as_str()]);
        }
        m
    }

    /// A message was queued with a copy to `recipients` archive addresses.
    pub fn queued(&self, recipients: usize) {
        self.queued.inc_by(recipients as u64);
    }

    /// `recipients` of a journal copy were not delivered, for `why`.
    pub fn failed(&self, why: JournalFailure, recipients: u64) {
        if recipients > 0 {
            self.failures
                .with_label_values(&[why.as_str()])
                .inc_by(recipients);
        }
    }
}
