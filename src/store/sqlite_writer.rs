//! The SQLite enqueue writer: SQLite has one writer at a time and each
//! commit costs a disk flush (`synchronous = FULL`), so enqueues go through
//! one task that commits every enqueue waiting at that moment in a single
//! transaction (group commit). Each caller's `Ok` is that shared commit.
//!
//! The readiness probe goes through the same task and the same
//! `BEGIN IMMEDIATE`, and commits a one-row write: it answers "can an
//! enqueue commit now", not "does some connection answer" (issue 13: a
//! probe on another path said ready while every enqueue failed).

use futures::FutureExt;
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::oneshot;

use super::group_commit::{self, EnqueueJob, EnqueueSender};
use super::sqlite::WriteGate;
use super::{map_sqlx, NewMessage, StoreError, StoreResult};

/// Starts the writer task that group-commits enqueues on `pool`, each
/// commit under `gate`.
pub(crate) fn spawn_writer(pool: SqlitePool, gate: WriteGate) -> EnqueueSender {
    let (tx, mut jobs) = group_commit::channel();
    tokio::spawn(async move {
        // The gate after the first job, then the group: what arrives while
        // another write holds the gate joins this commit.
        while let Some((batch, _held)) = group_commit::next_batch(&mut jobs, gate.turn()).await {
            if !batch.enqueues.is_empty() {
                commit_batch(&pool, batch.enqueues).await;
            }
            for done in batch.probes {
                answer_probe(&pool, done).await;
            }
        }
    });
    tx
}

/// Key of the probe row in `limit_counters` (no limit key has this shape;
/// `expires_at` 0 lets the counter pruning delete it).
const PROBE_KEY: &str = "store:readiness-probe";

/// Commits the probe unless its caller stopped waiting (a `/readyz` that
/// timed out while the writer was blocked: no point in writing for it).
async fn answer_probe(pool: &SqlitePool, done: oneshot::Sender<StoreResult<()>>) {
    if !done.is_closed() {
        let _ = done.send(commit_probe(pool).await);
    }
}

async fn commit_probe(pool: &SqlitePool) -> StoreResult<()> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| map_sqlx(e, "health"))?;
    // A real change, so the commit appends to the WAL: a full disk fails here.
    sqlx::query(
        "INSERT INTO limit_counters (key, tat, expires_at) VALUES (?1, ?2, 0)
         ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
    )
    .bind(PROBE_KEY)
    .bind(crate::time::now_ms())
    .execute(&mut *tx)
    .await
    .map_err(|e| map_sqlx(e, "health"))?;
    tx.commit().await.map_err(|e| map_sqlx(e, "health"))
}

async fn commit_batch(pool: &SqlitePool, batch: Vec<EnqueueJob>) {
    let messages: Vec<&NewMessage> = batch.iter().map(|job| &job.message).collect();
    let all = commit_messages(pool, &messages).await;
    drop(messages);
    // SQLite's errors are the file's own and come at once: retrying each
    // message alone costs little, so `store_failed` is never claimed.
    group_commit::answer(batch, all, false, |m| {
        let pool = pool.clone();
        async move { commit_messages(&pool, &[m]).await }.boxed()
    })
    .await;
}

/// Commits `messages` in one `BEGIN IMMEDIATE` transaction.
async fn commit_messages(pool: &SqlitePool, messages: &[&NewMessage]) -> StoreResult<()> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| map_sqlx(e, "queue"))?;
    for m in messages {
        insert_message(&mut tx, m).await?;
    }
    tx.commit().await.map_err(|e| map_sqlx(e, "queue"))
}

/// Inserts message and recipients on `conn` (inside the caller's transaction).
pub(crate) async fn insert_message(conn: &mut SqliteConnection, m: &NewMessage) -> StoreResult<()> {
    if m.recipients.is_empty() {
        return Err(StoreError::Invalid("a message needs a recipient".into()));
    }
    sqlx::query(
        "INSERT INTO queue_messages (id, sender, user_id, username, credential, size, body,
                envid, dsn_ret, is_dsn, smtputf8, received_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .bind(&m.id)
    .bind(&m.sender)
    .bind(m.user_id)
    .bind(&m.username)
    .bind(&m.credential)
    .bind(m.body.len() as i64)
    .bind(&m.body[..])
    .bind(&m.envid)
    .bind(&m.dsn_ret)
    .bind(m.is_dsn)
    .bind(m.smtputf8)
    .bind(m.received_at)
    .bind(m.expires_at)
    .execute(&mut *conn)
    .await
    .map_err(|e| map_sqlx(e, "queued message"))?;
    for r in &m.recipients {
        sqlx::query(
            "INSERT INTO queue_recipients (message_id, recipient, notify, orcpt, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&m.id)
        .bind(&r.address)
        .bind(&r.notify)
        .bind(&r.orcpt)
        .bind(m.received_at)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, "queued recipient"))?;
    }
    // Its journal copy, in the same transaction (never one alone).
    if let Some(journal) = &m.journal {
        Box::pin(insert_message(conn, journal)).await?;
    }
    Ok(())
}
