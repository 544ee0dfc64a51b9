//! The store: every byte of state postgate keeps, behind one trait.
//!
//! Two backends implement [`Store`]: [`postgres::PgStore`] (production, shared
//! by several nodes) and [`sqlite::SqliteStore`] (embedded default). They are
//! picked by URL scheme in [`open`]. All SQL of postgate lives below this
//! module; callers see only the types declared here.
//!
//! Conventions every method follows:
//! - timestamps are Unix milliseconds (`i64`), passed in by the caller when
//!   the method's outcome depends on "now" (so tests control time);
//! - usernames are stored and compared lower-cased ([`normalize_username`]);
//! - each method is one transaction: it either happens whole or not at all;
//! - errors are [`StoreError`]; `NotFound`/`Conflict`/`Invalid` are the
//!   caller's fault and name what is wrong, `Unavailable` means "try later".

pub mod postgres;
mod postgres_dkim;
mod postgres_limits;
mod postgres_queue;
mod rows;
pub mod sqlite;
mod sqlite_dkim;
mod sqlite_limits;
mod sqlite_queue;

use std::sync::Arc;

use async_trait::async_trait;

/// What went wrong in the store. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist (e.g. `user "bob"`).
    #[error("{0} not found")]
    NotFound(String),
    /// The thing exists already (e.g. `user "bob" already exists`).
    #[error("{0}")]
    Conflict(String),
    /// The input was rejected (bad pattern, bad username, constraint).
    #[error("{0}")]
    Invalid(String),
    /// The database could not be reached or failed; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
}

/// Result type of every store method.
pub type StoreResult<T> = Result<T, StoreError>;

/// Lower-cases and checks a username: 1..=255 bytes, no whitespace or
/// control characters. Usernames are case-insensitive everywhere.
pub fn normalize_username(name: &str) -> StoreResult<String> {
    let lower = name.trim().to_lowercase();
    if lower.is_empty() || lower.len() > 255 {
        return Err(StoreError::Invalid(format!(
            "invalid username {name:?}: must be 1 to 255 bytes"
        )));
    }
    if lower.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Invalid(format!(
            "invalid username {name:?}: no spaces or control characters allowed"
        )));
    }
    Ok(lower)
}

/// Checks a credential label: 1..=64 of `[A-Za-z0-9._-]`.
pub fn validate_label(label: &str) -> StoreResult<()> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid credential label {label:?}: use 1 to 64 of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Per-user or per-credential limit overrides; `None` means "config default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    pub messages_per_minute: Option<u32>,
    pub messages_per_hour: Option<u32>,
    pub messages_per_day: Option<u32>,
    pub recipients_per_day: Option<u32>,
    /// Users only; always `None` on a credential.
    pub concurrent_sessions: Option<u32>,
}

/// One row of `user list`.
#[derive(Debug, Clone)]
pub struct UserSummary {
    pub id: i64,
    pub username: String,
    pub enabled: bool,
    pub credentials: i64,
    pub senders: i64,
    pub created_at: i64,
}

/// One row of `user credential list`. Never carries the hash.
#[derive(Debug, Clone)]
pub struct CredentialSummary {
    pub label: String,
    pub enabled: bool,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// Everything login needs about one user, loaded in one query.
/// Only returned for an enabled user; `credentials` holds only enabled ones.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub user_id: i64,
    pub username: String,
    pub limits: LimitOverrides,
    pub normalize_line_endings: Option<bool>,
    pub credentials: Vec<LoginCredential>,
    /// Sender permissions: exact lower-case addresses or `@domain`.
    pub senders: Vec<String>,
}

/// One enabled credential of a [`LoginRecord`].
#[derive(Debug, Clone)]
pub struct LoginCredential {
    pub id: i64,
    pub label: String,
    /// PHC string (argon2id) or an imported crypt hash (`$2b$`, `$6$`).
    pub password_hash: String,
    pub limits: LimitOverrides,
}

/// Accounts: users, their credentials and sender permissions.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates `username` with one credential `label` holding `password_hash`.
    /// `Conflict` if the user exists.
    async fn user_add(&self, username: &str, label: &str, password_hash: &str) -> StoreResult<()>;
    /// Replaces the hash of credential `label` of `username`. `NotFound` if either is missing.
    async fn credential_set_hash(
        &self,
        username: &str,
        label: &str,
        password_hash: &str,
    ) -> StoreResult<()>;
    /// Enables or disables a user. `NotFound` if missing.
    async fn user_set_enabled(&self, username: &str, enabled: bool) -> StoreResult<()>;
    /// Deletes a user with its credentials and sender permissions. `NotFound` if missing.
    async fn user_delete(&self, username: &str) -> StoreResult<()>;
    /// All users, ordered by username.
    async fn user_list(&self) -> StoreResult<Vec<UserSummary>>;
    /// Sets the per-user limit overrides (all fields replace the stored ones).
    async fn user_set_limits(&self, username: &str, limits: &LimitOverrides) -> StoreResult<()>;
    /// Adds credential `label` to `username`. `Conflict` if the label exists.
    async fn credential_add(
        &self,
        username: &str,
        label: &str,
        password_hash: &str,
    ) -> StoreResult<()>;
    /// Credentials of `username`, ordered by label.
    async fn credential_list(&self, username: &str) -> StoreResult<Vec<CredentialSummary>>;
    /// Deletes credential `label` of `username`. `NotFound` if missing.
    async fn credential_revoke(&self, username: &str, label: &str) -> StoreResult<()>;
    /// Allows `username` to send as `pattern` (already validated and
    /// lower-cased by [`crate::policy::SenderPattern`]). `Conflict` if present.
    async fn sender_allow(&self, username: &str, pattern: &str) -> StoreResult<()>;
    /// Removes a sender permission. `NotFound` if missing.
    async fn sender_revoke(&self, username: &str, pattern: &str) -> StoreResult<()>;
    /// Sender permissions of `username`, ordered.
    async fn sender_list(&self, username: &str) -> StoreResult<Vec<String>>;
    /// The login record of an enabled user, or `None` (unknown or disabled:
    /// the caller must not be able to tell which).
    async fn login_lookup(&self, username: &str) -> StoreResult<Option<LoginRecord>>;
    /// Records a successful login of credential `credential_id` at `now`, and
    /// replaces its hash with `upgraded_hash` when given (rehash on login).
    /// Must be cheap: one short UPDATE.
    async fn credential_used(
        &self,
        credential_id: i64,
        now: i64,
        upgraded_hash: Option<&str>,
    ) -> StoreResult<()>;
}

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
    /// Envelope sender; empty only for DSNs postgate generates.
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
}

/// A message with the recipients of it that one claim returned. The body is
/// loaded separately ([`QueueStore::load_body`]) so claims stay small.
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
    /// Never empty (except from [`QueueStore::unfinished_messages`]).
    pub recipients: Vec<ClaimedRecipient>,
    /// The stored bytes when the message is small (at most
    /// [`CLAIM_BODY_MAX`] bytes) and came from a claim: saves a round trip
    /// per message. Otherwise load it with [`QueueStore::load_body`].
    pub body: Option<bytes::Bytes>,
}

/// Bodies up to this size are returned with their claim.
pub const CLAIM_BODY_MAX: i64 = 64 * 1024;

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
    /// lease. Outcomes for recipients no longer leased by `owner` (lease
    /// expired and taken over, message deleted) are skipped. A message whose
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

    /// Messages whose recipients are all final but which were not finished
    /// (the process died between recording outcomes and
    /// [`finish_message`](Self::finish_message)), oldest first, at most
    /// `limit`; `recipients` is empty. Read-only.
    async fn unfinished_messages(&self, limit: u32) -> StoreResult<Vec<ClaimedMessage>>;

    /// Clears leases that expired before `now` (their holders died); returns
    /// how many. Claims already ignore expired leases; this makes them visible.
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

/// A DKIM signing algorithm as stored in `dkim_keys.algorithm` (RFC 6376
/// `rsa-sha256`, RFC 8463 `ed25519-sha256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DkimAlgorithm {
    RsaSha256,
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The name used in the store, the CLI and the `a=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// Parses `rsa-sha256` or `ed25519-sha256` (also `rsa`, `ed25519`).
    pub fn parse(s: &str) -> StoreResult<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rsa-sha256" | "rsa" => Ok(DkimAlgorithm::RsaSha256),
            "ed25519-sha256" | "ed25519" => Ok(DkimAlgorithm::Ed25519Sha256),
            _ => Err(StoreError::Invalid(format!(
                "invalid DKIM algorithm {s:?}: use rsa-sha256 or ed25519-sha256"
            ))),
        }
    }
}

impl std::fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lower-cases and checks a DKIM signing domain (`d=`): a host name of
/// dot-separated labels of letters, digits and hyphens, at most 253 bytes.
/// An internationalized name is stored as A-labels (`bücher.example` ->
/// `xn--bcher-kva.example`), the form DNS and verifiers use.
pub fn normalize_dkim_domain(domain: &str) -> StoreResult<String> {
    let d = domain_to_ascii(domain.trim().trim_end_matches('.'));
    if is_dns_name(&d) {
        Ok(d)
    } else {
        Err(StoreError::Invalid(format!(
            "invalid DKIM domain {domain:?}: expected a host name like example.com"
        )))
    }
}

/// A domain name in lower-case ASCII: U-labels become A-labels (IDNA,
/// UTS #46); a name IDNA rejects is only lower-cased, for the caller's own
/// syntax check to refuse.
pub fn domain_to_ascii(domain: &str) -> String {
    if domain.is_ascii() {
        return domain.to_ascii_lowercase();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase())
}

/// Checks a DKIM selector (`s=`, RFC 6376 §3.1: sub-domain syntax, may
/// contain dots). Selectors are compared case-insensitively, stored lower-case.
pub fn normalize_dkim_selector(selector: &str) -> StoreResult<String> {
    let s = selector.trim().to_ascii_lowercase();
    if is_dns_name(&s) {
        Ok(s)
    } else {
        Err(StoreError::Invalid(format!(
            "invalid DKIM selector {selector:?}: use letters, digits, hyphens and dots"
        )))
    }
}

fn is_dns_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A key to add with [`DkimStore::dkim_add`]. The key material must already
/// be checked (the `dkim` module builds these); the store checks names only.
#[derive(Clone)]
pub struct NewDkimKey {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// PKCS#8 PEM. A secret: never logged or printed.
    pub private_key_pem: String,
    /// Base64 public key as published in DNS (`p=`).
    pub public_key: String,
}

impl std::fmt::Debug for NewDkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

/// One row of `dkim list`. Never carries the private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyInfo {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// Base64 public key (`p=`).
    pub public_key: String,
    pub active: bool,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// An active key with its private part, for signing.
#[derive(Clone)]
pub struct DkimSigningKey {
    pub info: DkimKeyInfo,
    /// PKCS#8 PEM. A secret: never logged or printed.
    pub private_key_pem: String,
}

impl std::fmt::Debug for DkimSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigningKey")
            .field("info", &self.info)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

/// DKIM keys (table `dkim_keys`). Domain and selector are normalised with
/// [`normalize_dkim_domain`] / [`normalize_dkim_selector`] by every method.
#[async_trait]
pub trait DkimStore: Send + Sync {
    /// Stores `key` as active, created at `now`. `Conflict` if a key (active
    /// or retired) with the same domain and selector exists: selectors are
    /// never reused, since verifiers may cache the old DNS record.
    /// `Invalid` for a bad domain or selector.
    async fn dkim_add(&self, key: &NewDkimKey, now: i64) -> StoreResult<()>;
    /// All keys, active and retired, ordered by domain, then selector.
    async fn dkim_list(&self) -> StoreResult<Vec<DkimKeyInfo>>;
    /// Marks the key retired at `now`: it signs no more. `NotFound` if no
    /// such key; retiring a retired key changes nothing and is `Ok`.
    async fn dkim_retire(&self, domain: &str, selector: &str, now: i64) -> StoreResult<()>;
    /// Every active key with its private key, ordered by domain, then
    /// selector. Called at start and on reload, not per message.
    async fn dkim_active_keys(&self) -> StoreResult<Vec<DkimSigningKey>>;
}

/// Liveness of the store itself.
#[async_trait]
pub trait HealthStore: Send + Sync {
    /// Ok when the database answers and the queue is writable.
    async fn check_ready(&self) -> StoreResult<()>;
}

/// One row of `limit_counters`: a GCRA theoretical arrival time (or a
/// lockout end) under an opaque key owned by [`crate::limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCounter {
    /// Primary key, e.g. `uid:42/messages/100/3600000`.
    pub key: String,
    /// In the key's own units (see [`crate::limits`]).
    pub tat: i64,
    /// Unix ms after which the row means nothing and may be deleted.
    pub expires_at: i64,
}

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

/// What [`LimitStore::limit_check`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcraOutcome {
    /// The step was applied; `tat` is the new stored value.
    Allowed { tat: i64 },
    /// Nothing changed; `tat` is the stored value when it could be read in
    /// the same statement (`None` only under a concurrent first insert).
    Refused { tat: Option<i64> },
}

/// A change to accounts that cached logins may depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthChange {
    /// A user, credential or sender permission changed or was deleted.
    Changed,
    /// The watch was interrupted (reconnect): changes may have been missed,
    /// so the receiver must drop everything it cached.
    Resync,
}

/// The receiving end of [`LimitStore::subscribe_auth_changes`]. The watch
/// stops when this is dropped.
pub type AuthChanges = tokio::sync::mpsc::Receiver<AuthChange>;

/// Shared rate-limit counters (`limit_counters`) and account-change
/// notifications, for [`crate::limits`] and [`crate::auth_cache`].
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Applies one GCRA step to `key` atomically. On PostgreSQL this is one
    /// statement (one round trip), safe against any number of concurrent
    /// callers on any number of nodes.
    async fn limit_check(&self, key: &str, step: &GcraStep) -> StoreResult<GcraOutcome>;
    /// The rows of `keys` that exist (expired or not), in no particular order.
    async fn limit_get(&self, keys: &[String]) -> StoreResult<Vec<LimitCounter>>;
    /// Inserts or replaces one row.
    async fn limit_set(&self, counter: &LimitCounter) -> StoreResult<()>;
    /// Deletes the rows of `keys` (primary-key lookups); returns how many.
    async fn limit_delete(&self, keys: &[String]) -> StoreResult<u64>;
    /// Deletes every row whose key starts with `prefix`; returns how many.
    /// Scans the table: for operators, not for every request.
    async fn limit_delete_prefix(&self, prefix: &str) -> StoreResult<u64>;
    /// Every row with `expires_at > now`, ordered by key.
    async fn limit_list(&self, now: i64) -> StoreResult<Vec<LimitCounter>>;
    /// Deletes rows with `expires_at <= now`; returns how many.
    async fn limit_purge(&self, now: i64) -> StoreResult<u64>;
    /// Starts watching account changes (users, credentials, sender
    /// permissions: update, delete, and sender insert). When this returns
    /// the watch is active: any later committed change yields an event.
    /// PostgreSQL: LISTEN on channel `postgate_auth` (fed by triggers, so
    /// plain SQL counts too), reconnecting on error with a `Resync`.
    /// SQLite: polls the `auth_version` row (bumped by triggers) every
    /// [`SQLITE_AUTH_POLL`].
    async fn subscribe_auth_changes(&self) -> StoreResult<AuthChanges>;
}

/// How often the SQLite store polls for account changes made by another
/// process (the CLI, plain SQL).
pub const SQLITE_AUTH_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// The whole store. Cheap to clone behind an `Arc`.
pub trait Store:
    AccountStore + QueueStore + DkimStore + HealthStore + LimitStore + Send + Sync
{
    /// `"postgres"` or `"sqlite"`, for logs and metrics.
    fn backend(&self) -> &'static str;
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub connect_timeout: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            connect_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Opens the store named by `url` (`postgres://…`/`postgresql://…` or
/// `sqlite://PATH`, `sqlite::memory:`), without migrating it.
pub async fn open(url: &str, options: &StoreOptions) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url, options).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url, options).await?))
    } else {
        Err(StoreError::Invalid(
            "store url must start with postgres://, postgresql:// or sqlite:".into(),
        ))
    }
}

/// Opens the store named by `url` and applies pending migrations.
pub async fn open_and_migrate(url: &str, options: &StoreOptions) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = postgres::PgStore::connect(url, options).await?;
        store.migrate().await?;
        Ok(Arc::new(store))
    } else if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::connect(url, options).await?;
        store.migrate().await?;
        Ok(Arc::new(store))
    } else {
        open(url, options).await
    }
}

/// Maps an sqlx error to a [`StoreError`], naming `what` on constraint errors.
pub(crate) fn map_sqlx(err: sqlx::Error, what: &str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{what} already exists"))
        }
        sqlx::Error::Database(db) if db.is_check_violation() || db.is_foreign_key_violation() => {
            StoreError::Invalid(format!("{what} rejected by the database: {}", db.message()))
        }
        sqlx::Error::RowNotFound => StoreError::NotFound(what.to_string()),
        _ => StoreError::Unavailable(redact_url(&err.to_string())),
    }
}

/// Removes a password from any `scheme://user:password@` in `text`.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lowercased_and_checked() {
        assert_eq!(
            normalize_username(" Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        assert!(normalize_username("").is_err());
        assert!(normalize_username("a b").is_err());
        assert!(normalize_username("a\u{0}b").is_err());
        assert!(normalize_username(&"x".repeat(256)).is_err());
    }

    #[test]
    fn labels_are_checked() {
        assert!(validate_label("printer-3rd-floor").is_ok());
        assert!(validate_label("").is_err());
        assert!(validate_label("has space").is_err());
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("error connecting to postgres://app:s3cret@db:5432/pg"),
            "error connecting to postgres://app:***@db:5432/pg"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
