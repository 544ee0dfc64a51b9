//! The PostgreSQL enqueue writer ([`group_commit`]): a commit has a fixed
//! cost on the server (a transaction, a WAL commit record, a flush to wait
//! for, a backend woken per statement) that one transaction per message
//! paid a thousand times a second. One writer task takes every enqueue
//! waiting and commits them in one statement ([`insert_messages`]); while it
//! commits, the next group gathers, so a lone message waits for no timer.
//! One writer beat two in every cell measured (README, Performance): its
//! groups are larger. It holds one pool connection while it commits. The
//! readiness probe goes through it too ([`commit_probe`]).

use futures::FutureExt;
use sqlx::PgPool;

use super::group_commit::{self, EnqueueJob, EnqueueSender};
use super::postgres_queue::{insert_messages, insert_messages_sql, lacks_recipient};
use super::{map_sqlx, NewMessage, StoreError, StoreResult};

/// Starts the writer task that group-commits enqueues on `pool`.
pub(crate) fn spawn_writer(pool: &PgPool) -> EnqueueSender {
    let (tx, mut jobs) = group_commit::channel();
    let pool = pool.clone();
    tokio::spawn(async move {
        while let Some((batch, ())) = group_commit::next_batch(&mut jobs, async {}).await {
            if !batch.enqueues.is_empty() {
                commit_batch(&pool, batch.enqueues).await;
            }
            for done in batch.probes {
                // Unless its caller stopped waiting (a `/readyz` that timed
                // out while the writer was blocked).
                if !done.is_closed() {
                    let _ = done.send(commit_probe(&pool).await);
                }
            }
        }
    });
    tx
}

/// The readiness probe (`HealthStore::check_ready`), answered by the writer
/// after the group ahead of it, so it says whether an enqueue could commit
/// now (issue 13: a probe on another path said ready while every enqueue
/// failed). One statement, its own transaction: a write to the queue that
/// changes nothing fails in a read-only database or without the right to
/// write the queue, and taking a transaction id makes the commit write a
/// record that is flushed before it returns (`synchronous_commit`), so a
/// WAL that cannot be written fails it too. It changes no row, so probes of
/// several nodes never wait for each other.
async fn commit_probe(pool: &PgPool) -> StoreResult<()> {
    sqlx::query(
        "WITH nothing AS (DELETE FROM queue_messages WHERE false RETURNING 1)
         SELECT pg_current_xact_id()",
    )
    .execute(pool)
    .await
    .map_err(|e| map_sqlx(e, "health"))?;
    Ok(())
}

async fn commit_batch(pool: &PgPool, batch: Vec<EnqueueJob>) {
    let messages: Vec<&NewMessage> = batch.iter().map(|job| &job.message).collect();
    let (all, store_failed) = if messages.iter().any(|m| lacks_recipient(m)) {
        // Refused below, one by one, each with its own answer.
        let refused = StoreError::Invalid("a message needs a recipient".into());
        (Err(refused), false)
    } else {
        match insert_messages_sql(pool, &messages).await {
            Ok(()) => (Ok(()), false),
            Err(e) => {
                let store_failed = is_store_failure(&e);
                (Err(map_sqlx(e, "queued message")), store_failed)
            }
        }
    };
    drop(messages);
    group_commit::answer(batch, all, store_failed, |m| {
        let pool = pool.clone();
        async move { insert_messages(&pool, &[m]).await }.boxed()
    })
    .await;
}

/// Whether `e` is the store's failure rather than something one message
/// holds: anything but an error the database raised (a lost connection, a
/// pool timeout, TLS trouble), or a database error of a class about the
/// server rather than the statement ([`is_server_sqlstate`]).
fn is_store_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => is_server_sqlstate(&db.code().unwrap_or_default()),
        _ => true,
    }
}

/// SQLSTATE classes about the server, not the statement (PostgreSQL
/// documentation, Appendix A): 08 connection exception, 53 insufficient
/// resources (disk full, out of memory), 57 operator intervention
/// (shutdown, terminated backend), 58 system error (I/O).
fn is_server_sqlstate(code: &str) -> bool {
    ["08", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_troubles_fail_a_whole_group() {
        assert!(is_store_failure(&sqlx::Error::PoolTimedOut));
        assert!(is_store_failure(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        for server in ["08006", "53100", "57P01", "58030"] {
            assert!(is_server_sqlstate(server), "{server}");
        }
        // unique violation, value too long, invalid byte sequence, check violation
        for message in ["23505", "22001", "22021", "23514"] {
            assert!(!is_server_sqlstate(message), "{message}");
        }
    }
}
