//! A message as intake, the queue and delivery pass it around: the one to
//! enqueue, the one a claim returns, and its recipients' final state. Plain
//! data with no I/O, so pure modules (`delivery/dsn.rs`) use it without
//! depending on the store; `store` re-exports it.

/// A recipient of a message being queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecipient {
    pub address: String,
    /// RFC 3461 NOTIFY parameter as given (e.g. `FAILURE,DELAY`).
    pub notify: Option<String>,
    /// RFC 3461 ORCPT parameter as given.
    pub orcpt: Option<String>,
}

/// A message ready to be committed to the queue. `body` is final: the bytes
/// stored are the bytes delivered (fixups and DKIM already applied).
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Queue id, unique (see [`new_queue_id`]).
    pub id: String,
    /// Envelope sender; empty only for DSNs and journal copies postgate generates.
    pub sender: String,
    pub recipients: Vec<NewRecipient>,
    pub user_id: Option<i64>,
    pub username: Option<String>,
    pub credential: Option<String>,
    pub body: bytes::Bytes,
    pub envid: Option<String>,
    /// RFC 3461 RET: `FULL` or `HDRS`.
    pub dsn_ret: Option<String>,
    pub is_dsn: bool,
    pub smtputf8: bool,
    pub received_at: i64,
    pub expires_at: i64,
    /// Its journal copy ([`crate::journal`]): committed in the same
    /// transaction as this message, so never one without the other.
    pub journal: Option<Box<NewMessage>>,
}

/// A new, time-ordered queue id (UUID v7, 32 lower-case hex digits).
pub fn new_queue_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A recipient claimed for delivery (its lease is held by the claimer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRecipient {
    /// Row id in `queue_recipients`; what outcomes refer to.
    pub id: i64,
    pub address: String,
    pub notify: Option<String>,
    pub orcpt: Option<String>,
    /// Attempts made so far (before this one).
    pub attempts: u32,
    /// Index into the route's upstream list to try (fail-over position).
    pub route_index: u32,
    /// A delay warning (RFC 3461 NOTIFY=DELAY) was sent for it already.
    pub delay_warned: bool,
}

/// A message with the recipients of it that one claim returned. The body is
/// loaded separately ([`QueueStore::load_body`](crate::store::QueueStore::load_body)) so claims stay small.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub id: String,
    pub sender: String,
    pub user_id: Option<i64>,
    pub username: Option<String>,
    pub envid: Option<String>,
    pub dsn_ret: Option<String>,
    pub is_dsn: bool,
    pub smtputf8: bool,
    pub size: i64,
    pub received_at: i64,
    pub expires_at: i64,
    /// Never empty (except from [`QueueStore::unfinished_messages`](crate::store::QueueStore::unfinished_messages)).
    pub recipients: Vec<ClaimedRecipient>,
    /// The stored bytes when the message is small (at most
    /// [`CLAIM_BODY_MAX`] bytes) and came from a claim: saves a round trip
    /// per message. Otherwise load it with [`QueueStore::load_body`](crate::store::QueueStore::load_body).
    pub body: Option<bytes::Bytes>,
}

/// Bodies up to this size are returned with their claim.
pub const CLAIM_BODY_MAX: i64 = 64 * 1024;

/// Final state of one recipient, for building a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalRecipient {
    pub address: String,
    pub notify: Option<String>,
    pub orcpt: Option<String>,
    /// `delivered`, `failed` or `expired`.
    pub status: String,
    pub attempts: u32,
    pub last_upstream: Option<String>,
    pub last_reply: Option<String>,
}
