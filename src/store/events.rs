//! Delivery events (issue #17): the outbox webhooks read.
//!
//! Each recipient's life produces events (`accepted`, `deferred`,
//! `delivered`, `bounced`, `expired`, `deleted`), written by database
//! triggers on `queue_recipients` (enqueue) and `delivery_log` (every
//! recorded outcome), so always in the transaction of the state change
//! they describe, whatever code path or node made it. The triggers exist
//! only while events are enabled ([`EventStore::events_install`]): with
//! events off the queue's statements cost exactly what they did before.
//! `rejected` (a refusal at submission, no queue state) is written on its
//! own ([`EventStore::event_rejected`]).
//!
//! Readers page through events with an [`EventCursor`] in commit order: on
//! PostgreSQL, ids are handed out before commit, so a reader only takes
//! events whose transaction precedes every transaction still running and
//! orders them by (transaction, id); no event can then commit behind a
//! cursor. On SQLite (one writer) the id alone is commit order.

use async_trait::async_trait;

use super::StoreResult;

/// The event kinds, as stored and sent.
pub const EVENT_KINDS: [&str; 7] = [
    "accepted",
    "deferred",
    "delivered",
    "bounced",
    "expired",
    "deleted",
    "rejected",
];

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryEvent {
    /// Unique, increasing within a transaction; see [`EventCursor`].
    pub id: i64,
    /// The writing transaction (PostgreSQL); 0 on SQLite.
    #[serde(skip)]
    pub tx: i64,
    /// Unix ms of the state change.
    pub at: i64,
    /// One of [`EVENT_KINDS`].
    pub kind: String,
    /// Queue id; `None` for a `rejected` event (nothing was queued).
    pub message_id: Option<String>,
    pub recipient: Option<String>,
    /// Envelope sender.
    pub sender: Option<String>,
    /// Submitting user.
    pub username: Option<String>,
    /// Upstream tried (delivered, deferred, bounced).
    pub upstream: Option<String>,
    /// Attempts made so far.
    pub attempt: u32,
    /// The upstream's reply, or why (deferred, bounced, expired, rejected).
    pub reply: Option<String>,
    /// `rejected`: which rule refused the message.
    pub rule: Option<String>,
}

impl DeliveryEvent {
    /// Where a reader stands after this event.
    pub fn cursor(&self) -> EventCursor {
        EventCursor {
            tx: self.tx,
            id: self.id,
        }
    }
}

/// A position in the event stream: events after it are `(tx, id) >` it.
/// The default is the start (every retained event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub tx: i64,
    pub id: i64,
}

/// A refusal at submission, written as one `rejected` event per recipient
/// (one without a recipient when there were none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRejection {
    pub at: i64,
    pub sender: String,
    pub username: Option<String>,
    pub recipients: Vec<String>,
    /// Which rule refused, e.g. `header_from`.
    pub rule: String,
    /// The reply the client got.
    pub reply: String,
}

/// The unread part of the stream behind a cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventBacklog {
    /// Events after the cursor.
    pub events: u64,
    /// `at` of the oldest of them.
    pub oldest_at: Option<i64>,
}

/// The events outbox and the webhooks' cursors.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Creates (`enabled`) or drops the triggers that write events. Cheap
    /// and idempotent: changes nothing when they are already as asked.
    async fn events_install(&self, enabled: bool) -> StoreResult<()>;

    /// Whether the event triggers exist.
    async fn events_installed(&self) -> StoreResult<bool>;

    /// Writes the `rejected` events of one refusal, in one transaction.
    async fn event_rejected(&self, rejection: &NewRejection) -> StoreResult<()>;

    /// The latest `limit` events (of message `message_id` when given),
    /// oldest first.
    async fn events_recent(
        &self,
        message_id: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryEvent>>;

    /// At most `limit` committed events after `cursor`, in commit order.
    /// An event not returned now can only come later in this order.
    async fn events_after(
        &self,
        cursor: EventCursor,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryEvent>>;

    /// How many events lie after `cursor`, and the oldest one's time.
    async fn events_backlog(&self, cursor: EventCursor) -> StoreResult<EventBacklog>;

    /// The stored cursor of webhook `name` (`None`: never sent).
    async fn webhook_cursor(&self, name: &str) -> StoreResult<Option<EventCursor>>;

    /// Takes or renews, for `owner` until `now + lease_ms`, the right to
    /// send for webhook `name`: `true` when `owner` holds it (it was free,
    /// expired or already `owner`'s). One node sends per webhook.
    async fn webhook_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        lease_ms: i64,
    ) -> StoreResult<bool>;

    /// Stores the cursor of webhook `name` (never moves it backwards).
    async fn webhook_cursor_set(
        &self,
        name: &str,
        cursor: EventCursor,
        now: i64,
    ) -> StoreResult<()>;

    /// Deletes events older than `before`, then the oldest beyond the
    /// newest `keep`; returns how many.
    async fn events_prune(&self, before: i64, keep: u64) -> StoreResult<u64>;
}
