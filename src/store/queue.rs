//! The queue's contract: the types of outcomes and listings (the messages
//! themselves are `crate::message`'s, re-exported here), and
//! [`QueueStore`], which both backends implement.

use async_trait::async_trait;

use super::StoreResult;
pub use crate::message::{
    new_queue_id, ClaimedMessage, ClaimedRecipient, FinalRecipient, NewMessage, NewRecipient,
    CLAIM_BODY_MAX,
};

/// What happened to one claimed recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeKind {
    /// The upstream accepted it (2xx after DATA): final.
    Delivered,
    /// Try again at `next_attempt_at`, on upstream `route_index` of the route.
    /// `count_attempt = false` leaves `attempts` alone (throttled by the
    /// provider, or released without trying: shutdown, circuit open).
    Deferred {
        next_attempt_at: i64,
        route_index: u32,
        count_attempt: bool,
    },
    /// Permanent failure (5xx): final, bounces.
    Failed,
    /// The queue lifetime ran out: final, bounces.
    Expired,
}

/// One recipient's outcome, recorded by [`QueueStore::record_outcomes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// [`ClaimedRecipient::id`].
    pub recipient_id: i64,
    pub kind: OutcomeKind,
    /// Upstream name tried, when one was.
    pub upstream: Option<String>,
    /// The upstream's reply or a description of the failure.
    pub reply: Option<String>,
    /// Write a `delivery_log` row (false only for a release without attempt).
    pub log: bool,
}

/// One line of `queue list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueEntry {
    pub id: String,
    pub sender: String,
    pub username: Option<String>,
    pub size: i64,
    pub received_at: i64,
    pub is_dsn: bool,
    pub recipients: u32,
    /// Recipients still queued.
    pub pending: u32,
    /// Earliest next attempt of the pending recipients.
    pub next_attempt_at: Option<i64>,
    /// Some pending recipient is held (`queue hold`): never claimed until released.
    pub held: bool,
    /// Most attempts made for any pending recipient (0: never tried).
    pub attempts: u32,
    /// Latest lease end of the pending recipients (a delivery may be running
    /// while it lies in the future).
    pub lease_until: Option<i64>,
}

/// What an operator sees a queued message as doing, at a moment `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueState {
    /// Held by an operator: never delivered until released.
    Held,
    /// A delivery attempt is running (a lease is held).
    Active,
    /// Attempted at least once, waiting for its next attempt.
    Deferred,
    /// Waiting for its first attempt.
    Queued,
    /// No recipient pending (being finished: bounce or deletion due).
    Done,
}

impl QueueState {
    /// Every state, in the order `queue list` summarises them.
    pub const ALL: [QueueState; 5] = [
        QueueState::Queued,
        QueueState::Active,
        QueueState::Deferred,
        QueueState::Held,
        QueueState::Done,
    ];

    /// The name used by `--state` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::Held => "held",
            QueueState::Active => "active",
            QueueState::Deferred => "deferred",
            QueueState::Queued => "queued",
            QueueState::Done => "done",
        }
    }

    /// Parses a state name (`held`, `active`, `deferred`, `queued`, `done`).
    pub fn parse(s: &str) -> Result<QueueState, String> {
        QueueState::ALL
            .into_iter()
            .find(|st| st.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                format!("invalid queue state {s:?}: use queued, active, deferred, held or done")
            })
    }
}

impl QueueEntry {
    /// The message's state at `now`: held wins over a running attempt,
    /// which wins over deferred (attempted before) and queued (never tried).
    pub fn state(&self, now: i64) -> QueueState {
        if self.pending == 0 {
            QueueState::Done
        } else if self.held {
            QueueState::Held
        } else if self.lease_until.is_some_and(|l| l > now) {
            QueueState::Active
        } else if self.attempts > 0 {
            QueueState::Deferred
        } else {
            QueueState::Queued
        }
    }
}

/// Which messages `queue list` and the bulk queue commands act on. Every
/// `Some` must match. Address patterns are `user@domain` (exact,
/// case-insensitive) or `@domain` (any address at that domain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFilter {
    /// Envelope sender pattern.
    pub sender: Option<String>,
    /// Submitting user (case-insensitive).
    pub username: Option<String>,
    /// Pattern matched against any recipient of the message.
    pub recipient: Option<String>,
    /// Received at or before this Unix-ms time.
    pub received_before: Option<i64>,
}

impl QueueFilter {
    /// The filter with addresses and username lower-cased, as the store compares them.
    pub fn normalized(&self) -> QueueFilter {
        let low = |o: &Option<String>| o.as_ref().map(|s| s.trim().to_lowercase());
        QueueFilter {
            sender: low(&self.sender),
            username: low(&self.username),
            recipient: low(&self.recipient),
            received_before: self.received_before,
        }
    }
}

/// Operator actions on the queue beyond one message at a time.
#[async_trait]
pub trait QueueAdminStore: Send + Sync {
    /// Messages matching `filter` (see [`QueueFilter`]), oldest first,
    /// without limit: for the operator CLI and bulk actions.
    async fn queue_select(&self, filter: &QueueFilter) -> StoreResult<Vec<QueueEntry>>;

    /// Holds (`hold` true) or releases the queued recipients of message
    /// `id` at `now`: a held recipient is never claimed for delivery (an
    /// attempt already running finishes; its outcome is recorded and the
    /// recipient stays held if deferred). Returns how many recipients
    /// changed; `NotFound` if the message is missing.
    async fn queue_hold(&self, id: &str, hold: bool, now: i64) -> StoreResult<u64>;
}

/// One recipient in `queue show`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueRecipientDetail {
    pub address: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub route_index: u32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub last_upstream: Option<String>,
    pub last_reply: Option<String>,
    /// Held by an operator (`queue hold`).
    pub held: bool,
}

/// One `delivery_log` row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryLogEntry {
    pub at: i64,
    pub recipient: String,
    pub upstream: Option<String>,
    /// `delivered`, `deferred`, `failed`, `expired`, `bounced` or `deleted`.
    pub outcome: String,
    pub attempt: u32,
    pub reply: Option<String>,
}

/// `queue show`: a message's envelope, recipients and log (no body).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueDetail {
    pub entry: QueueEntry,
    pub envid: Option<String>,
    pub expires_at: i64,
    pub recipients: Vec<QueueRecipientDetail>,
    pub log: Vec<DeliveryLogEntry>,
}

/// What [`QueueStore::queue_stats`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSummary {
    /// Messages with at least one recipient in status `queued`.
    pub depth: u64,
    /// `now - received_at` of the oldest such message, in milliseconds;
    /// 0 when the queue is empty (never negative).
    pub oldest_age_ms: i64,
}

/// The queue: accepted messages and per-recipient delivery state.
///
/// Delivery never holds a transaction across an SMTP conversation: it claims
/// recipients with a lease ([`claim_due`](Self::claim_due)), talks to the
/// upstream, then records outcomes in a second short transaction. A lease
/// whose holder died expires and the recipient is claimable again, so
/// delivery is at least once.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Commits message, envelope and one row per recipient (status `queued`,
    /// due at `received_at`) in one transaction. When this returns `Ok` the
    /// message survives a crash; only then may the client be told 250.
    async fn enqueue(&self, message: &NewMessage) -> StoreResult<()>;

    /// Leases, to `owner` until `now + lease_ms` and in one transaction,
    /// the queued recipients that are due (`next_attempt_at <= now`) and not
    /// leased (or whose lease expired) of the messages of the oldest `limit`
    /// such recipients: whole messages, so every due recipient of a message
    /// is in one claim (and can share one upstream transaction). Concurrent
    /// claimers (any node) never get the same recipient while a lease holds.
    /// Returned grouped by message, envelope included, body only when small.
    async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMessage>>;

    /// The stored bytes of message `id`. `NotFound` if it is gone.
    async fn load_body(&self, id: &str) -> StoreResult<bytes::Bytes>;

    /// Records outcomes of recipients leased by `owner`, with a
    /// `delivery_log` row each (when `log`), in one transaction; clears the
    /// lease. A lease that expired still belongs to `owner` until someone
    /// else claims the recipient. Outcomes for recipients no longer leased
    /// by `owner` (taken over, outcome already recorded, message deleted)
    /// are skipped. A message whose
    /// recipients are now all delivered is deleted in the same transaction
    /// (no DSN is due; the log rows stay). Returns how many were recorded.
    async fn record_outcomes(
        &self,
        owner: &str,
        now: i64,
        outcomes: &[RecipientOutcome],
    ) -> StoreResult<u64>;

    /// The recipients of message `id` when every one of them is final
    /// (delivered, failed or expired); `None` when some are still queued or
    /// the message is gone. Read-only.
    async fn final_recipients(&self, id: &str) -> StoreResult<Option<Vec<FinalRecipient>>>;

    /// Finishes message `id` in one transaction: if every recipient is final,
    /// enqueues `dsn` (when given, writing a `bounced` log row per failed or
    /// expired recipient) and deletes the message. Returns `false` (and does
    /// nothing) if recipients are still queued or the message is gone; two
    /// concurrent callers never both enqueue a DSN.
    async fn finish_message(
        &self,
        id: &str,
        now: i64,
        dsn: Option<&NewMessage>,
    ) -> StoreResult<bool>;

    /// Enqueues `notice` (a success or delay DSN about recipients of
    /// another message, RFC 3461 §6.2) and marks the recipients with ids
    /// `delay_warned` as warned, in one transaction: a recipient marked is
    /// never warned again. Returns `false` (and enqueues nothing) when
    /// `delay_warned` is not empty and every one of them was marked already
    /// or is gone.
    async fn enqueue_notice(&self, notice: &NewMessage, delay_warned: &[i64]) -> StoreResult<bool>;

    /// Messages whose recipients are all final but which were not finished
    /// (the process died between recording outcomes and
    /// [`finish_message`](Self::finish_message)), oldest first, at most
    /// `limit`; `recipients` is empty. Read-only.
    async fn unfinished_messages(&self, limit: u32) -> StoreResult<Vec<ClaimedMessage>>;

    /// Extends to `now + lease_ms` the leases `owner` holds on the
    /// recipients `recipient_ids` (the heartbeat of a claim in progress:
    /// issue #13). Only recipients still `queued` and leased by `owner` are
    /// touched, so a lease already recorded, or expired and taken over by
    /// another claimer, is never taken back; a lease that expired but was
    /// not taken over is simply held again. Returns how many were renewed.
    async fn renew_leases(
        &self,
        owner: &str,
        recipient_ids: &[i64],
        now: i64,
        lease_ms: i64,
    ) -> StoreResult<u64>;

    /// Clears leases that expired before `now` (their holders died or could
    /// not reach the store); returns how many. Claims already ignore expired
    /// leases; this makes them visible. `lease_owner` keeps the last holder:
    /// its outcome, recorded late (the store was away), still counts until
    /// another holder claims the recipient.
    async fn reclaim_expired(&self, now: i64) -> StoreResult<u64>;

    /// Deletes `delivery_log` rows older than `before`; returns how many.
    async fn prune_delivery_log(&self, before: i64) -> StoreResult<u64>;

    /// One reading of the queue at `now` for the metrics sampler, in one
    /// statement: how many messages have at least one recipient still
    /// `queued` (leased or not), and how long ago the oldest of them was
    /// received. Finished recipients (delivered, failed, expired) do not
    /// count; an empty queue reads `depth` 0, `oldest_age_ms` 0.
    async fn queue_stats(&self, now: i64) -> StoreResult<QueueSummary>;

    /// Messages in the queue, oldest first, at most `limit`.
    async fn queue_list(&self, limit: u32) -> StoreResult<Vec<QueueEntry>>;

    /// One message's envelope, recipients and log. `NotFound` if missing.
    async fn queue_show(&self, id: &str) -> StoreResult<QueueDetail>;

    /// Makes every queued recipient of `id` due at `now` (attempts and route
    /// kept; a held lease is left alone). Returns how many; `NotFound` if the
    /// message is missing.
    async fn queue_retry(&self, id: &str, now: i64) -> StoreResult<u64>;

    /// Deletes message `id` without a DSN, logging `deleted` for each
    /// recipient still queued. `NotFound` if missing.
    async fn queue_delete(&self, id: &str, now: i64) -> StoreResult<()>;
}
