//! The SQLite enqueue writer: SQLite has one writer at a time and each
//! commit costs a disk flush (`synchronous = FULL`), so enqueues go through
//! one task that commits every enqueue waiting at that moment in a single
//! transaction (group commit). Each caller's `Ok` is that shared commit.
//!
//! The readiness probe goes through the same task and the same
//! `BEGIN IMMEDIATE`, and commits a one-row write: it answers "can an
//! enqueue commit now", not "does some connection answer" (issue 13: a
//! probe on another path said ready while every enqueue failed).

use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::sql_queue::{bind_message, insert_message_sql};
use super::sqlite::WriteGate;
use super::{map_sqlx, NewMessage, StoreError, StoreResult};

/// Most messages one group commit carries.
const BATCH_MESSAGES: usize = 256;
/// Most body bytes one group commit carries (a batch always takes at least one).
const BATCH_BYTES: usize = 64 * 1024 * 1024;

/// One enqueue waiting for the writer task.
pub(crate) struct EnqueueJob {
    message: NewMessage,
    done: oneshot::Sender<StoreResult<()>>,
}

/// What the writer task is asked to do.
pub(crate) enum WriterJob {
    Enqueue(Box<EnqueueJob>),
    /// Commit the readiness probe row (see [`probe`]).
    Probe(oneshot::Sender<StoreResult<()>>),
}

/// Handle to the writer task; dropping every clone stops the task.
pub(crate) type EnqueueSender = mpsc::Sender<WriterJob>;

/// Starts the writer task that group-commits enqueues on `pool`, each
/// commit under `gate`.
pub(crate) fn spawn_writer(pool: SqlitePool, gate: WriteGate) -> EnqueueSender {
    let (tx, mut rx) = mpsc::channel::<WriterJob>(1024);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // The gate first, then the group: what arrives while another
            // write holds the gate joins this commit.
            let _held = gate.turn().await;
            let first = match first {
                WriterJob::Enqueue(job) => *job,
                WriterJob::Probe(done) => {
                    answer_probe(&pool, done).await;
                    continue;
                }
            };
            let mut bytes = first.message.body.len();
            let mut batch = vec![first];
            let mut probes = Vec::new();
            while batch.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(WriterJob::Enqueue(job)) => {
                        bytes += job.message.body.len();
                        batch.push(*job);
                    }
                    Ok(WriterJob::Probe(done)) => probes.push(done),
                    Err(_) => break,
                }
            }
            commit_batch(&pool, batch).await;
            for done in probes {
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
    let all = async {
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        for job in &batch {
            insert_message(&mut tx, &job.message).await?;
        }
        tx.commit().await.map_err(|e| map_sqlx(e, "queue"))
    }
    .await;
    match all {
        Ok(()) => {
            for job in batch {
                let _ = job.done.send(Ok(()));
            }
        }
        Err(_) if batch.len() > 1 => {
            // One bad message (e.g. a duplicate id) must not fail the others:
            // commit them one by one so each gets its own answer.
            for job in batch {
                let one = async {
                    let mut tx = pool
                        .begin_with("BEGIN IMMEDIATE")
                        .await
                        .map_err(|e| map_sqlx(e, "queue"))?;
                    insert_message(&mut tx, &job.message).await?;
                    tx.commit().await.map_err(|e| map_sqlx(e, "queue"))
                }
                .await;
                let _ = job.done.send(one);
            }
        }
        Err(e) => {
            // A batch of one: its own error, as is.
            if let Some(job) = batch.into_iter().next() {
                let _ = job.done.send(Err(e));
            }
        }
    }
}

/// Inserts message and recipients on `conn` (inside the caller's transaction).
pub(crate) async fn insert_message(conn: &mut SqliteConnection, m: &NewMessage) -> StoreResult<()> {
    if m.recipients.is_empty() {
        return Err(StoreError::Invalid("a message needs a recipient".into()));
    }
    bind_message(sqlx::query(insert_message_sql!()), m)
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

/// Hands `message` to the writer; returns once its group commit is done
/// (or failed). `Unavailable` when the writer has stopped.
pub(crate) async fn enqueue(writer: &EnqueueSender, message: NewMessage) -> StoreResult<()> {
    let (done, wait) = oneshot::channel();
    writer
        .send(WriterJob::Enqueue(Box::new(EnqueueJob { message, done })))
        .await
        .map_err(|_| StoreError::Unavailable("queue writer stopped".into()))?;
    wait.await
        .map_err(|_| StoreError::Unavailable("queue writer stopped".into()))?
}

/// Commits the readiness probe through the writer task: `Ok` when an
/// enqueue could commit now (write lock taken, WAL appended, synced).
pub(crate) async fn probe(writer: &EnqueueSender) -> StoreResult<()> {
    let (done, wait) = oneshot::channel();
    writer
        .send(WriterJob::Probe(done))
        .await
        .map_err(|_| StoreError::Unavailable("queue writer stopped".into()))?;
    wait.await
        .map_err(|_| StoreError::Unavailable("queue writer stopped".into()))?
}
