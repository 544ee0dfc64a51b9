//! WAL checkpoints off the commit path (issue 16). SQLite's automatic
//! checkpoint runs inside the `COMMIT` that takes the WAL past 1,000 pages:
//! the caller of that commit waits while the WAL's pages are copied into
//! the database file and the file is flushed. Most often that caller is the
//! enqueue writer, so a whole group of 250s waited, and every enqueue
//! queued behind it. Every connection therefore runs with
//! `wal_autocheckpoint = 0` and this task checkpoints on its own, beside
//! the writers: a `PASSIVE` checkpoint takes neither the write lock nor
//! waits for readers, so no commit waits for it.
//!
//! The WAL stays bounded: after a complete checkpoint the next writer
//! starts the WAL over from its beginning (see [`checkpoint`] for how one
//! completes under sustained writes), and `journal_size_limit` truncates
//! the file back to [`WAL_LIMIT_BYTES`] when it had grown past that.
//! Should readers on old snapshots keep a checkpoint from completing while
//! the WAL holds more than [`WAL_LIMIT_BYTES`], one `RESTART` checkpoint
//! waits for them (within the busy timeout).

use std::time::{Duration, Instant};

use sqlx::SqlitePool;
use tokio::sync::mpsc::WeakSender;

use super::group_commit::WriterJob;
use super::sqlite::WriteGate;

/// How often the WAL is checkpointed.
pub(crate) const INTERVAL: Duration = Duration::from_millis(250);
/// `journal_size_limit`, and the WAL size (pages not yet checkpointed)
/// above which a checkpoint that could not finish is redone as `RESTART`.
pub(crate) const WAL_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// Starts the checkpoint task on `pool` (catching up under `gate`); it
/// stops once every handle to the store's writer (`writer`) is dropped.
pub(crate) fn spawn_checkpointer(pool: SqlitePool, gate: WriteGate, writer: WeakSender<WriterJob>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut page_size = None;
        loop {
            tick.tick().await;
            if writer.upgrade().is_none() {
                break;
            }
            if page_size.is_none() {
                page_size = sqlx::query_scalar::<_, i64>("PRAGMA page_size")
                    .fetch_all(&pool)
                    .await
                    .ok()
                    .and_then(|p| p.first().copied());
            }
            if let Err(e) = checkpoint(&pool, &gate, page_size.unwrap_or(4096)).await {
                tracing::debug!(error = %e, "WAL checkpoint failed; trying again");
            }
        }
    });
}

/// What one checkpoint found: pages in the WAL and pages copied to the
/// database file (`-1` each when the database is not in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) wal_pages: i64,
    pub(crate) copied_pages: i64,
}

/// One passive checkpoint beside the writers, then a second one under
/// `gate`: it copies what writers added during the first (usually little:
/// a short hold), and the in-process writer that comes next finds the WAL
/// complete and starts it over. Without that second step, under sustained
/// writes a writer always begins during the checkpoint and the WAL never
/// starts over. When even that leaves more than [`WAL_LIMIT_BYTES`] behind
/// (readers on old snapshots), `RESTART`.
pub(crate) async fn checkpoint(
    pool: &SqlitePool,
    gate: &WriteGate,
    page_size: i64,
) -> Result<Checkpoint, sqlx::Error> {
    let passive = run(pool, "PASSIVE").await?;
    if passive.wal_pages <= 0 {
        return Ok(passive);
    }
    let _held = gate.turn().await;
    let catch_up = run(pool, "PASSIVE").await?;
    if catch_up.copied_pages >= catch_up.wal_pages
        || catch_up.wal_pages.saturating_mul(page_size) <= WAL_LIMIT_BYTES
    {
        return Ok(catch_up);
    }
    let started = Instant::now();
    let restart = run(pool, "RESTART").await?;
    tracing::warn!(
        wal_bytes = catch_up.wal_pages.saturating_mul(page_size),
        waited_ms = started.elapsed().as_millis() as u64,
        "SQLite WAL past its limit with readers on old snapshots: checkpointed with RESTART (writers waited)"
    );
    Ok(restart)
}

async fn run(pool: &SqlitePool, mode: &str) -> Result<Checkpoint, sqlx::Error> {
    let (_busy, wal_pages, copied_pages): (i64, i64, i64) =
        sqlx::query_as(&format!("PRAGMA wal_checkpoint({mode})"))
            .fetch_all(pool)
            .await?
            .pop()
            .unwrap_or((0, -1, -1));
    Ok(Checkpoint {
        wal_pages,
        copied_pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::StoreOptions;

    async fn store(dir: &tempfile::TempDir) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path().join("q.db").display());
        let s = SqliteStore::connect(&url, &StoreOptions::default())
            .await
            .unwrap();
        s.migrate().await.unwrap();
        s
    }

    /// No commit on any of the store's connections runs a checkpoint.
    #[tokio::test]
    async fn no_connection_checkpoints_in_its_commits() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let mut held = Vec::new();
        for _ in 0..StoreOptions::default().max_connections {
            let mut c = s.pool.acquire().await.unwrap();
            let auto: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
                .fetch_one(&mut *c)
                .await
                .unwrap();
            assert_eq!(auto, 0, "a connection checkpoints inside its commits");
            held.push(c);
        }
    }

    /// A checkpoint that a reader on an old snapshot keeps from finishing
    /// is redone as RESTART once the WAL is past the limit, and then
    /// copies everything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wal_past_the_limit_is_checkpointed_completely() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        sqlx::query("CREATE TABLE filler (b BLOB)")
            .execute(&s.pool)
            .await
            .unwrap();
        let write = || async {
            sqlx::query("INSERT INTO filler VALUES (zeroblob(200000))")
                .execute(&s.pool)
                .await
                .unwrap();
        };
        write().await;
        // A reader on the snapshot of now: passive checkpoints cannot copy
        // what is written after it.
        let mut reader = s.pool.acquire().await.unwrap();
        sqlx::query("BEGIN").execute(&mut *reader).await.unwrap();
        let _: i64 = sqlx::query_scalar("SELECT count(*) FROM filler")
            .fetch_one(&mut *reader)
            .await
            .unwrap();
        for _ in 0..40 {
            write().await;
        }
        let passive = run(&s.pool, "PASSIVE").await.unwrap();
        assert!(passive.copied_pages < passive.wal_pages, "{passive:?}");
        // Below the limit a checkpoint stays passive (pretend a page is
        // big enough for the WAL to be past it only in the second call).
        let small = checkpoint(&s.pool, &s.write_gate, 1).await.unwrap();
        assert!(small.copied_pages < small.wal_pages, "{small:?}");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sqlx::query("COMMIT").execute(&mut *reader).await.unwrap();
        });
        let big = checkpoint(&s.pool, &s.write_gate, WAL_LIMIT_BYTES)
            .await
            .unwrap();
        release.await.unwrap();
        assert!(
            big.wal_pages > 0 && big.copied_pages == big.wal_pages,
            "{big:?}"
        );
    }
}
