//! SQLite backend: the embedded default for one node. WAL mode,
//! `synchronous = FULL` (a committed enqueue survives power loss), foreign
//! keys on, WAL checkpoints off the commit path (`sqlite_checkpoint`).

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqlitePool};

use super::*;

/// Embedded store on one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// The queue's group-commit writer task (see `sqlite_queue`).
    pub(crate) writer: super::group_commit::EnqueueSender,
    /// See [`WriteGate`].
    pub(crate) write_gate: WriteGate,
}

/// The process's own write lock, taken before `BEGIN IMMEDIATE` by the
/// writes of the hot path (enqueue groups and the readiness probe, claims
/// that found something due, outcomes, lease renewals and reclaims) and by
/// the checkpoint's catch-up
/// (`sqlite_checkpoint`). Waiters queue in order and each starts the moment
/// the previous one is done. Without it they met SQLite's busy handler,
/// which sleeps 1, 2, 5, 10, 15, 20, 25 ... up to 100 ms between tries of
/// the file lock whenever it is released (issue 16). Other writes
/// (finishing a message that was not all delivered, administration,
/// limits, events) still wait in SQLite's handler.
///
/// Outcome commits ([`urgent_turn`](Self::urgent_turn)) wait behind at most
/// the write running and one other: every other write first queues in a
/// lane, one at a time, before the lock itself. Upstream connections wait
/// for their outcome's commit before their next message (issue #13's
/// crash bound), so an outcome queued behind every claim loop's claim and
/// the enqueue writer held up all delivery (a backlog of 25,000 at C=100).
/// There is one outcome committer per node, so the others are never held
/// back by more than one outcome commit per turn.
#[derive(Clone, Default)]
pub(crate) struct WriteGate {
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    lane: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write's hold on the [`WriteGate`], released on drop.
pub(crate) type WriteTurn = tokio::sync::OwnedMutexGuard<()>;

impl WriteGate {
    /// Waits for the writes queued before this one.
    pub(crate) async fn turn(&self) -> WriteTurn {
        let _lane = self.lane.clone().lock_owned().await;
        self.lock.clone().lock_owned().await
    }

    /// Waits for the write running and at most one other (see the type).
    pub(crate) async fn urgent_turn(&self) -> WriteTurn {
        self.lock.clone().lock_owned().await
    }
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
            .busy_timeout(std::time::Duration::from_secs(10))
            // No commit runs a checkpoint: `sqlite_checkpoint` does, beside them.
            .pragma("wal_autocheckpoint", "0")
            .pragma(
                "journal_size_limit",
                super::sqlite_checkpoint::WAL_LIMIT_BYTES.to_string(),
            );
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
        let write_gate = WriteGate::default();
        let writer = super::sqlite_writer::spawn_writer(pool.clone(), write_gate.clone());
        super::sqlite_checkpoint::spawn_checkpointer(
            pool.clone(),
            write_gate.clone(),
            writer.downgrade(),
        );
        Ok(SqliteStore {
            pool,
            writer,
            write_gate,
        })
    }

    /// Applies pending migrations from `migrations/sqlite` (embedded at build time).
    pub async fn migrate(&self) -> StoreResult<()> {
        run_migrations(&sqlx::migrate!("migrations/sqlite"), &self.pool).await
    }

    /// A write transaction: `BEGIN IMMEDIATE` takes the write lock at once,
    /// so a later statement never fails to upgrade a read lock.
    pub(super) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
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

super::sql_accounts::account_store!(
    SqliteStore,
    super::rows::USER_DETAIL_COLUMNS,
    "(SELECT json_group_array(pattern) FROM sender_permissions WHERE user_id = u.id)"
);

impl SqliteStore {
    /// The `senders` column of a login lookup (see `account_store!`), JSON.
    fn login_senders(u: &sqlx::sqlite::SqliteRow) -> StoreResult<Vec<String>> {
        let senders: String = u.get("senders");
        let mut senders: Vec<String> = serde_json::from_str(&senders)
            .map_err(|e| StoreError::Unavailable(format!("sender permissions: {e}")))?;
        senders.sort();
        Ok(senders)
    }
}

#[async_trait]
impl HealthStore for SqliteStore {
    async fn check_ready(&self) -> StoreResult<()> {
        // The enqueue path itself: the writer task, BEGIN IMMEDIATE, a commit.
        super::group_commit::probe(&self.writer).await
    }
}

super::sql_dkim::dkim_store!(SqliteStore);
super::sql_api::api_store!(SqliteStore);

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod gate_tests {
    use super::WriteGate;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Three ordinary writes queue while one runs, then an outcome commit
    /// asks: it goes after the running write and at most one other, not
    /// after all three (issue #13's connections wait for it).
    #[tokio::test]
    async fn an_urgent_turn_waits_behind_at_most_one_queued_write() {
        let gate = WriteGate::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let running = gate.turn().await;
        let mut tasks = Vec::new();
        for name in ["a", "b", "c"] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _t = gate.turn().await;
                order.lock().unwrap().push(name);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (g, o) = (gate.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let _t = g.urgent_turn().await;
            o.lock().unwrap().push("outcome");
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(running);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order, ["a", "outcome", "b", "c"]);
    }
}
