//! The PostgreSQL enqueue writers ([`group_commit`]): a commit has a fixed
//! cost on the server (a transaction, a WAL commit record, a flush to wait
//! for, a backend woken per statement) that one transaction per message paid
//! a thousand times a second. A writer task takes every enqueue
//! waiting and commits them in one statement ([`insert_messages`]); while it
//! commits, the next group gathers, so a lone message waits for no timer.

use futures::FutureExt;
use sqlx::PgPool;

use super::group_commit::{self, EnqueueJob, EnqueueSender};
use super::postgres_queue::insert_messages;
use super::NewMessage;

/// Writer tasks per store. One: its batches grow with the load (while it
/// commits, the next group gathers), and that beat two writers' smaller
/// batches on every cell measured (`pg-c10`/`pg-c100-2k-rsa-n1`, README
/// Performance). It holds one pool connection while it commits.
const WRITERS: usize = 1;

/// Starts the writer tasks that group-commit enqueues on `pool`.
pub(crate) fn spawn_writers(pool: &PgPool) -> EnqueueSender {
    let (tx, jobs) = group_commit::channel();
    for _ in 0..WRITERS {
        let (pool, jobs) = (pool.clone(), jobs.clone());
        tokio::spawn(async move {
            while let Some((batch, ())) = group_commit::next_batch(&jobs, async {}).await {
                commit_batch(&pool, batch.enqueues).await;
                // PostgreSQL's readiness is checked on the pool (`check_ready`):
                // no probe is sent here, and one that were would get `Ok` only
                // after this batch, which is what it asks.
                for done in batch.probes {
                    let _ = done.send(Ok(()));
                }
            }
        });
    }
    tx
}

async fn commit_batch(pool: &PgPool, batch: Vec<EnqueueJob>) {
    if batch.is_empty() {
        return;
    }
    let messages: Vec<&NewMessage> = batch.iter().map(|job| &job.message).collect();
    let all = insert_messages(pool, &messages).await;
    drop(messages);
    group_commit::answer(batch, all, |m| {
        let pool = pool.clone();
        async move { insert_messages(&pool, &[m]).await }.boxed()
    })
    .await;
}
