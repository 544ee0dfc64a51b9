//! SQLite backend: the embedded default for one node. WAL mode,
//! `synchronous = FULL` (a committed enqueue survives power loss), foreign keys on.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqlitePool};

use super::*;
use crate::time::now_ms;

/// Embedded store on one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// The queue's group-commit writer task (see `sqlite_queue`).
    pub(crate) writer: super::sqlite_writer::EnqueueSender,
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url`.
    pub async fn connect(url: &str, options: &StoreOptions) -> StoreResult<Self> {
        create_private(url)?;
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("bad sqlite url {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Checkpoints run in the background, never inside a commit
            // (issue #16; see `sqlite_writer::checkpointer`).
            .pragma("wal_autocheckpoint", "0")
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.connect_timeout)
            // On SQLITE_FULL / SQLITE_IOERR SQLite may roll the transaction
            // back itself; the ROLLBACK that sqlx then sends fails and sqlx
            // keeps counting the connection as inside a transaction, so every
            // later `BEGIN IMMEDIATE` on it fails ("cannot start a transaction
            // within a transaction") until a restart (issue 13). Such a
            // connection is closed instead of going back to the pool. The
            // ping waits for the rollback queued by a dropped transaction.
            .after_release(|conn, _| {
                Box::pin(async move {
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_with(connect)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {url}: {e}")))?;
        let writer = super::sqlite_writer::spawn_writer(pool.clone());
        Ok(SqliteStore { pool, writer })
    }

    /// Applies pending migrations from `migrations/sqlite` (embedded at build time).
    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    /// The underlying pool, for the other SQLite modules of the store.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Creates the database file of `url` empty with mode 0600 when it does
/// not exist yet: it holds password hashes and DKIM private keys. SQLite
/// gives its `-wal` and `-shm` files the database file's mode.
fn create_private(url: &str) -> StoreResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = super::sqlite_path(url).filter(|p| !p.is_empty() && *p != ":memory:") else {
        return Ok(());
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create {path}: {e}"
        ))),
    }
}

async fn user_id<'e, E: sqlx::SqliteExecutor<'e>>(exec: E, username: &str) -> StoreResult<i64> {
    let name = normalize_username(username)?;
    sqlx::query_scalar::<_, i64>("SELECT id FROM users WHERE username = ?1")
        .bind(&name)
        .fetch_optional(exec)
        .await
        .map_err(|e| map_sqlx(e, "user"))?
        .ok_or_else(|| StoreError::NotFound(format!("user {name:?}")))
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn user_add(&self, username: &str, label: &str, password_hash: &str) -> StoreResult<()> {
        let name = normalize_username(username)?;
        validate_label(label)?;
        let mut tx = self.pool.begin().await.map_err(|e| map_sqlx(e, "user"))?;
        let inserted = async {
            let id: i64 =
                sqlx::query_scalar("INSERT INTO users (username) VALUES (?1) RETURNING id")
                    .bind(&name)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(e, &format!("user {name:?}")))?;
            sqlx::query(
                "INSERT INTO credentials (user_id, label, password_hash) VALUES (?1, ?2, ?3)",
            )
            .bind(id)
            .bind(label)
            .bind(password_hash)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, &format!("credential {label:?}")))?;
            Ok::<(), StoreError>(())
        }
        .await;
        match inserted {
            Ok(()) => tx.commit().await.map_err(|e| map_sqlx(e, "user")),
            Err(e) => {
                // Roll back now rather than on drop, so no lock outlives the call.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn credential_set_hash(
        &self,
        username: &str,
        label: &str,
        password_hash: &str,
    ) -> StoreResult<()> {
        let name = normalize_username(username)?;
        let done = sqlx::query(
            "UPDATE credentials SET password_hash = ?1, updated_at = ?2
             WHERE label = ?4 AND user_id = (SELECT id FROM users WHERE username = ?3)",
        )
        .bind(password_hash)
        .bind(now_ms())
        .bind(&name)
        .bind(label)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "credential"))?;
        if done.rows_affected() == 0 {
            user_id(&self.pool, &name).await?;
            return Err(StoreError::NotFound(format!(
                "credential {label:?} of user {name:?}"
            )));
        }
        Ok(())
    }

    async fn user_set_enabled(&self, username: &str, enabled: bool) -> StoreResult<()> {
        let name = normalize_username(username)?;
        let done =
            sqlx::query("UPDATE users SET enabled = ?1, updated_at = ?2 WHERE username = ?3")
                .bind(enabled)
                .bind(now_ms())
                .bind(&name)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "user"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {name:?}")));
        }
        Ok(())
    }

    async fn user_delete(&self, username: &str) -> StoreResult<()> {
        let name = normalize_username(username)?;
        let done = sqlx::query("DELETE FROM users WHERE username = ?1")
            .bind(&name)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "user"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {name:?}")));
        }
        Ok(())
    }

    async fn user_list(&self) -> StoreResult<Vec<UserSummary>> {
        let rows = sqlx::query(
            "SELECT u.id, u.username, u.enabled, u.created_at,
                    (SELECT count(*) FROM credentials c WHERE c.user_id = u.id) AS creds,
                    (SELECT count(*) FROM sender_permissions s WHERE s.user_id = u.id) AS senders
             FROM users u ORDER BY u.username",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "users"))?;
        Ok(rows
            .iter()
            .map(|r| UserSummary {
                id: r.get("id"),
                username: r.get("username"),
                enabled: r.get("enabled"),
                credentials: r.get("creds"),
                senders: r.get("senders"),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    async fn user_set_limits(&self, username: &str, l: &LimitOverrides) -> StoreResult<()> {
        let name = normalize_username(username)?;
        let done = sqlx::query(
            "UPDATE users SET max_messages_per_minute = ?1, max_messages_per_hour = ?2,
                    max_messages_per_day = ?3, max_recipients_per_day = ?4,
                    max_concurrent_sessions = ?5, updated_at = ?6
             WHERE username = ?7",
        )
        .bind(l.messages_per_minute.map(i64::from))
        .bind(l.messages_per_hour.map(i64::from))
        .bind(l.messages_per_day.map(i64::from))
        .bind(l.recipients_per_day.map(i64::from))
        .bind(l.concurrent_sessions.map(i64::from))
        .bind(now_ms())
        .bind(&name)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "user limits"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {name:?}")));
        }
        Ok(())
    }

    async fn credential_add(
        &self,
        username: &str,
        label: &str,
        password_hash: &str,
    ) -> StoreResult<()> {
        let name = normalize_username(username)?;
        validate_label(label)?;
        let done = sqlx::query(
            "INSERT INTO credentials (user_id, label, password_hash)
             SELECT id, ?2, ?3 FROM users WHERE username = ?1",
        )
        .bind(&name)
        .bind(label)
        .bind(password_hash)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, &format!("credential {label:?} of user {name:?}")))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {name:?}")));
        }
        Ok(())
    }

    async fn credential_list(&self, username: &str) -> StoreResult<Vec<CredentialSummary>> {
        let uid = user_id(&self.pool, username).await?;
        let rows = sqlx::query(
            "SELECT label, enabled, created_at, last_used_at FROM credentials WHERE user_id = ?1 ORDER BY label",
        )
        .bind(uid)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "credentials"))?;
        Ok(rows
            .iter()
            .map(|r| CredentialSummary {
                label: r.get("label"),
                enabled: r.get("enabled"),
                created_at: r.get("created_at"),
                last_used_at: r.get("last_used_at"),
            })
            .collect())
    }

    async fn credential_set_enabled(
        &self,
        username: &str,
        label: &str,
        enabled: bool,
    ) -> StoreResult<()> {
        let name = normalize_username(username)?;
        let done = sqlx::query(
            "UPDATE credentials SET enabled = ?1, updated_at = ?2
             WHERE label = ?3 AND user_id = (SELECT id FROM users WHERE username = ?4)",
        )
        .bind(enabled)
        .bind(now_ms())
        .bind(label)
        .bind(&name)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "credential"))?;
        if done.rows_affected() == 0 {
            user_id(&self.pool, &name).await?;
            return Err(StoreError::NotFound(format!(
                "credential {label:?} of user {name:?}"
            )));
        }
        Ok(())
    }

    async fn user_get(&self, username: &str) -> StoreResult<UserDetail> {
        let name = normalize_username(username)?;
        let row = sqlx::query(&format!(
            "SELECT {} FROM users WHERE username = ?1",
            super::rows::USER_DETAIL_COLUMNS
        ))
        .bind(&name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "user"))?
        .ok_or_else(|| StoreError::NotFound(format!("user {name:?}")))?;
        Ok(super::rows::user_detail(&row))
    }

    async fn credential_revoke(&self, username: &str, label: &str) -> StoreResult<()> {
        let name = normalize_username(username)?;
        let done = sqlx::query(
            "DELETE FROM credentials WHERE label = ?2 AND user_id = (SELECT id FROM users WHERE username = ?1)",
        )
        .bind(&name)
        .bind(label)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "credential"))?;
        if done.rows_affected() == 0 {
            user_id(&self.pool, &name).await?;
            return Err(StoreError::NotFound(format!(
                "credential {label:?} of user {name:?}"
            )));
        }
        Ok(())
    }

    async fn sender_allow(&self, username: &str, pattern: &str) -> StoreResult<()> {
        let name = normalize_username(username)?;
        let done = sqlx::query(
            "INSERT INTO sender_permissions (user_id, pattern) SELECT id, ?2 FROM users WHERE username = ?1",
        )
        .bind(&name)
        .bind(pattern)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, &format!("sender permission {pattern:?} of user {name:?}")))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {name:?}")));
        }
        Ok(())
    }

    async fn sender_revoke(&self, username: &str, pattern: &str) -> StoreResult<()> {
        let name = normalize_username(username)?;
        let done = sqlx::query(
            "DELETE FROM sender_permissions WHERE pattern = ?2 AND user_id = (SELECT id FROM users WHERE username = ?1)",
        )
        .bind(&name)
        .bind(pattern)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "sender permission"))?;
        if done.rows_affected() == 0 {
            user_id(&self.pool, &name).await?;
            return Err(StoreError::NotFound(format!(
                "sender permission {pattern:?} of user {name:?}"
            )));
        }
        Ok(())
    }

    async fn sender_list(&self, username: &str) -> StoreResult<Vec<String>> {
        let uid = user_id(&self.pool, username).await?;
        sqlx::query_scalar(
            "SELECT pattern FROM sender_permissions WHERE user_id = ?1 ORDER BY pattern",
        )
        .bind(uid)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "senders"))
    }

    async fn login_lookup(&self, username: &str) -> StoreResult<Option<LoginRecord>> {
        let Ok(name) = normalize_username(username) else {
            return Ok(None);
        };
        // One statement (one snapshot): the user, a row per enabled
        // credential (none: one row of NULLs), sender patterns as JSON.
        let found = sqlx::query(
            "SELECT u.id, u.username, u.max_messages_per_minute, u.max_messages_per_hour,
                    u.max_messages_per_day, u.max_recipients_per_day, u.max_concurrent_sessions,
                    u.normalize_line_endings,
                    (SELECT json_group_array(pattern) FROM sender_permissions
                     WHERE user_id = u.id) AS senders,
                    c.id AS c_id, c.label AS c_label, c.password_hash AS c_password_hash,
                    c.max_messages_per_minute AS c_max_messages_per_minute,
                    c.max_messages_per_hour AS c_max_messages_per_hour,
                    c.max_messages_per_day AS c_max_messages_per_day,
                    c.max_recipients_per_day AS c_max_recipients_per_day
             FROM users u LEFT JOIN credentials c ON c.user_id = u.id AND c.enabled = 1
             WHERE u.username = ?1 AND u.enabled = 1
             ORDER BY c.id",
        )
        .bind(&name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "user"))?;
        let Some(u) = found.first() else {
            return Ok(None);
        };
        let senders: String = u.get("senders");
        let mut senders: Vec<String> = serde_json::from_str(&senders)
            .map_err(|e| StoreError::Unavailable(format!("sender permissions: {e}")))?;
        senders.sort();
        Ok(rows::login_record(&found, senders))
    }

    async fn credential_used(
        &self,
        credential_id: i64,
        now: i64,
        upgraded_hash: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE credentials SET last_used_at = ?1,
                    password_hash = COALESCE(?2, password_hash),
                    updated_at = CASE WHEN ?2 IS NULL THEN updated_at ELSE ?1 END
             WHERE id = ?3",
        )
        .bind(now)
        .bind(upgraded_hash)
        .bind(credential_id)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "credential"))?;
        Ok(())
    }
}

#[async_trait]
impl HealthStore for SqliteStore {
    async fn check_ready(&self) -> StoreResult<()> {
        // The enqueue path itself: the writer task, BEGIN IMMEDIATE, a commit.
        super::sqlite_writer::probe(&self.writer).await
    }
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
