//! The store: every byte of state postgate keeps, behind one trait.
//!
//! Two backends implement [`Store`]: [`postgres::PgStore`] (production, shared
//! by several nodes) and [`sqlite::SqliteStore`] (embedded default). They are
//! picked by URL scheme in [`open`]. All SQL of postgate lives below this
//! module; callers see only the types declared here (the queue's and DKIM's
//! in `queue.rs` and `dkim.rs`, re-exported).
//!
//! Conventions every method follows:
//! - timestamps are Unix milliseconds (`i64`), passed in by the caller when
//!   the method's outcome depends on "now" (so tests control time);
//! - usernames are stored and compared lower-cased ([`normalize_username`]);
//! - each method is one transaction: it either happens whole or not at all;
//! - errors are [`StoreError`]; `NotFound`/`Conflict`/`Invalid` are the
//!   caller's fault and name what is wrong, `Unavailable` means "try later".

pub mod api;
mod dkim;
mod events;
mod events_postgres;
mod events_sqlite;
mod group_commit;
pub mod postgres;
mod postgres_limits;
mod postgres_queue;
mod postgres_writer;
mod queue;
mod rows;
mod sql_accounts;
mod sql_api;
mod sql_dkim;
mod sql_events;
mod sql_limits;
mod sql_queue;
pub mod sqlite;
mod sqlite_checkpoint;
mod sqlite_limits;
mod sqlite_queue;
mod sqlite_writer;

use std::sync::Arc;

use async_trait::async_trait;

pub use dkim::*;
pub use events::*;
pub use queue::*;

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

/// `user show`: one user's own row (credentials and senders are listed
/// with [`AccountStore::credential_list`] / [`AccountStore::sender_list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDetail {
    pub id: i64,
    pub username: String,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Per-user overrides; `None` fields use the `[limits]` defaults.
    pub limits: LimitOverrides,
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
    /// Enables or disables credential `label` of `username` (a disabled
    /// credential fails login like a wrong password). `NotFound` if either is missing.
    async fn credential_set_enabled(
        &self,
        username: &str,
        label: &str,
        enabled: bool,
    ) -> StoreResult<()>;
    /// One user's row with its limit overrides, enabled or not. `NotFound` if missing.
    async fn user_get(&self, username: &str) -> StoreResult<UserDetail>;
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

pub use crate::limits::gcra::{GcraOutcome, GcraStep};

/// A change to accounts that cached logins may depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthChange {
    /// A user, credential or sender permission changed or was deleted.
    Changed,
    /// The watch was interrupted (reconnect): changes may have been missed,
    /// so the receiver must drop everything it cached.
    Resync,
}

/// The receiving end of [`AuthChangeStore::subscribe_auth_changes`]. The watch
/// stops when this is dropped.
pub type AuthChanges = tokio::sync::mpsc::Receiver<AuthChange>;

/// Shared rate-limit counters (`limit_counters`), for [`crate::limits`].
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
}

/// Account-change notifications, for [`crate::auth_cache`].
#[async_trait]
pub trait AuthChangeStore: Send + Sync {
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
    AccountStore
    + AuthChangeStore
    + QueueStore
    + QueueAdminStore
    + DkimStore
    + EventStore
    + HealthStore
    + LimitStore
    + api::ApiStore
    + Send
    + Sync
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

/// Whether `url` names a PostgreSQL store (else SQLite, or an error).
fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the store named by `url` (`postgres://…`/`postgresql://…` or
/// `sqlite://PATH`, `sqlite::memory:`), without migrating it.
pub async fn open(url: &str, options: &StoreOptions) -> StoreResult<Arc<dyn Store>> {
    if is_postgres(url) {
        Ok(Arc::new(postgres::PgStore::connect(url, options).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url, options).await?))
    } else {
        Err(StoreError::Invalid(
            "store url must start with postgres://, postgresql:// or sqlite:".into(),
        ))
    }
}

/// The store delivery uses, beside `shared` (the one sessions use, opened
/// from the same `url`): on PostgreSQL a pool of its own, of
/// `options.max_connections` sessions named `postgate-delivery` (the shared
/// pool's are `postgate`), so delivery's claims and outcome commits never
/// wait behind submissions for a connection; on SQLite `shared` itself (one
/// writer per database file).
pub async fn open_for_delivery(
    url: &str,
    options: &StoreOptions,
    shared: &Arc<dyn Store>,
) -> StoreResult<Arc<dyn Store>> {
    if is_postgres(url) {
        Ok(Arc::new(
            postgres::PgStore::connect_as(url, options, "postgate-delivery").await?,
        ))
    } else {
        Ok(shared.clone())
    }
}

/// Opens the store named by `url` and applies pending migrations.
pub async fn open_and_migrate(url: &str, options: &StoreOptions) -> StoreResult<Arc<dyn Store>> {
    if is_postgres(url) {
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

/// Whether the store named by `url` exists, without creating anything: a
/// SQLite URL names a file that exists (`sqlite::memory:` always does); a
/// PostgreSQL database answers and holds postgate's migration table.
/// `Ok(false)` means "there is no postgate store there"; `Err` means the
/// question could not be answered (unreachable server, bad URL).
pub async fn exists(url: &str, options: &StoreOptions) -> StoreResult<bool> {
    if let Some(path) = sqlite_path(url) {
        return Ok(path.is_empty() || path == ":memory:" || std::path::Path::new(path).exists());
    }
    if is_postgres(url) {
        let store = postgres::PgStore::connect(url, options).await?;
        return store.has_schema().await;
    }
    Err(StoreError::Invalid(
        "store url must start with postgres://, postgresql:// or sqlite:".into(),
    ))
}

/// The file path of a `sqlite:` URL (`sqlite://PATH?opts`, `sqlite:PATH`),
/// `None` for other schemes.
pub fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    Some(rest.split('?').next().unwrap_or(rest))
}

/// Applies the pending migrations of `migrator` on `pool`.
async fn run_migrations<DB: sqlx::Database>(
    migrator: &sqlx::migrate::Migrator,
    pool: &sqlx::Pool<DB>,
) -> StoreResult<()>
where
    DB::Connection: sqlx::migrate::Migrate,
{
    migrator
        .run(pool)
        .await
        .map_err(|e| StoreError::Migration(e.to_string()))
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
