//! A connection pool per upstream: at most `max_connections` sessions at
//! once, each reused for up to `max_messages_per_connection` transactions
//! (RSET between them, RFC 5321 §4.1.1.5) while not idle past `idle_timeout`.
//! With `username = "{sender}"` a session is authenticated as one mailbox,
//! so idle sessions are kept per mailbox (the pool key) and only reused for
//! mail of that mailbox; the connection cap stays per upstream.
//!
//! A transaction first takes a [`Slot`], waiting at most `max_pool_wait`:
//! a slow or hung upstream cannot hold claimed mail (issue #13). The slot
//! and its session are kept, as a [`Held`], after the transaction until the
//! message's outcome is committed: a session never starts a transaction
//! while the message it carried last may still be sent again after a crash,
//! so a crash repeats at most one message per connection (issue #13).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::upstream::{Connection, Envelope, SendError, TxReplies, Upstream};

/// Pooled sessions to one upstream.
pub struct Pool {
    upstream: Upstream,
    shared: Arc<Shared>,
}

/// What a [`Held`] needs of its pool after the transaction.
struct Shared {
    /// Idle sessions with their pool key, oldest first.
    idle: Mutex<Vec<(String, Connection)>>,
    /// One per connection: taken for a transaction, given back once its
    /// outcome is committed.
    permits: Arc<Semaphore>,
}

impl Shared {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(String, Connection)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pool {
    /// An empty pool for `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        let max = upstream.config().max_connections.max(1);
        Pool {
            upstream,
            shared: Arc::new(Shared {
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(max)),
            }),
        }
    }

    /// The upstream sessions are opened to.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.upstream.config().name
    }

    fn take_idle(&self, key: &str) -> Option<Connection> {
        let mut idle = self.shared.idle();
        let i = idle.iter().rposition(|(k, _)| k == key)?;
        Some(idle.remove(i).1)
    }

    /// Makes room for a new session: while idle sessions of other keys
    /// and the slots in use together reach `max_connections`, the
    /// oldest idle one is closed.
    fn evict_for_new(&self, max: usize) {
        let in_use = max.saturating_sub(self.shared.permits.available_permits());
        let mut idle = self.shared.idle();
        while !idle.is_empty() && idle.len() + in_use > max {
            let (_, conn) = idle.remove(0);
            tokio::spawn(conn.quit());
        }
    }

    /// A connection slot, waiting at most `max_wait` for one to free up;
    /// `None` if all `max_connections` stayed busy that long.
    pub async fn slot(&self, max_wait: Duration) -> Option<Slot<'_>> {
        let permit = tokio::time::timeout(max_wait, self.shared.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Slot { pool: self, permit })
    }

    /// Closes idle sessions (QUIT).
    pub async fn close_idle(&self) {
        let all = std::mem::take(&mut *self.shared.idle());
        for (_, conn) in all {
            conn.quit().await;
        }
    }
}

/// One of a pool's `max_connections` slots, held while a transaction runs.
pub struct Slot<'a> {
    pool: &'a Pool,
    permit: OwnedSemaphorePermit,
}

/// A slot after its transaction, with its session when that can be reused:
/// both go back to the pool when this is dropped, which the caller does
/// once the message's outcome is committed (or given up). Dropping it in
/// any other way (a panic, a shutdown) gives them back too.
#[must_use = "dropping it gives the connection back at once"]
pub struct Held {
    shared: Arc<Shared>,
    conn: Option<(String, Connection)>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Held {
    fn drop(&mut self) {
        // The session goes back before the permit (dropped after this), so
        // whoever takes the permit finds it idle.
        if let Some(idle) = self.conn.take() {
            self.shared.idle().push(idle);
        }
    }
}

impl Slot<'_> {
    /// Sends one message over a pooled session of its sender's pool key (an
    /// idle one after a successful RSET, else a new one). A session that
    /// broke is dropped, never returned to the pool. The returned [`Held`]
    /// keeps the slot (and the session, if reusable) until it is dropped.
    pub async fn send(self, env: Envelope<'_>) -> (Result<TxReplies, SendError>, Held) {
        let pool = self.pool;
        let mut held = Held {
            shared: pool.shared.clone(),
            conn: None,
            _permit: self.permit,
        };
        let cfg = pool.upstream.config();
        let key = pool.upstream.pool_key(env.sender);
        let mut reused = None;
        while let Some(mut conn) = pool.take_idle(&key) {
            if conn.last_used + cfg.idle_timeout < Instant::now() {
                tokio::spawn(conn.quit());
                continue;
            }
            // An idle session the upstream closed meanwhile fails here; that is
            // not the upstream failing, so just open a new one.
            if conn.reset().await.is_ok() {
                reused = Some(conn);
                break;
            }
        }
        let mut conn = match reused {
            Some(c) => c,
            None => {
                pool.evict_for_new(cfg.max_connections.max(1));
                match pool.upstream.connect_for(env.sender).await {
                    Ok(c) => c,
                    Err(e) => return (Err(e), held),
                }
            }
        };
        let result = conn.send(env).await;
        if result.is_ok() {
            if conn.transactions < cfg.max_messages_per_connection.max(1) {
                held.conn = Some((key, conn));
            } else {
                tokio::spawn(conn.quit());
            }
        }
        (result, held)
    }
}
