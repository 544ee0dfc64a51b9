//! A connection pool per upstream: at most `max_connections` sessions at
//! once, each reused for up to `max_messages_per_connection` transactions
//! (RSET between them, RFC 5321 §4.1.1.5) while not idle past `idle_timeout`.
//! With `username = "{sender}"` a session is authenticated as one mailbox,
//! so idle sessions are kept per mailbox (the pool key) and only reused for
//! mail of that mailbox; the connection cap stays per upstream.
//!
//! A transaction first takes a [`Slot`], waiting at most `max_pool_wait`:
//! a slow or hung upstream cannot hold claimed mail (issue #13).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::upstream::{Connection, Envelope, SendError, TxReplies, Upstream};

/// Pooled sessions to one upstream.
pub struct Pool {
    upstream: Upstream,
    /// Idle sessions with their pool key, oldest first.
    idle: Mutex<Vec<(String, Connection)>>,
    permits: Semaphore,
}

impl Pool {
    /// An empty pool for `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        let max = upstream.config().max_connections.max(1);
        Pool {
            upstream,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max),
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
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let i = idle.iter().rposition(|(k, _)| k == key)?;
        Some(idle.remove(i).1)
    }

    /// Makes room for a new session: while idle sessions of other keys
    /// and the sessions in use together reach `max_connections`, the
    /// oldest idle one is closed.
    fn evict_for_new(&self, max: usize) {
        let in_use = max.saturating_sub(self.permits.available_permits());
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while !idle.is_empty() && idle.len() + in_use > max {
            let (_, conn) = idle.remove(0);
            tokio::spawn(conn.quit());
        }
    }

    /// A connection slot, waiting at most `max_wait` for one to free up;
    /// `None` if all `max_connections` stayed busy that long.
    pub async fn slot(&self, max_wait: Duration) -> Option<Slot<'_>> {
        let permit = tokio::time::timeout(max_wait, self.permits.acquire())
            .await
            .ok()?
            .ok()?;
        Some(Slot {
            pool: self,
            _permit: permit,
        })
    }

    /// Closes idle sessions (QUIT).
    pub async fn close_idle(&self) {
        let all = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, conn) in all {
            conn.quit().await;
        }
    }
}

/// One of a pool's `max_connections` slots, held while a transaction runs.
pub struct Slot<'a> {
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Slot<'_> {
    /// Sends one message over a pooled session of its sender's pool key (an
    /// idle one after a successful RSET, else a new one). A session that
    /// broke is dropped, never returned to the pool.
    pub async fn send(self, env: Envelope<'_>) -> Result<TxReplies, SendError> {
        let pool = self.pool;
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
                pool.upstream.connect_for(env.sender).await?
            }
        };
        let result = conn.send(env).await;
        if result.is_ok() {
            if conn.transactions < cfg.max_messages_per_connection.max(1) {
                pool.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((key, conn));
            } else {
                tokio::spawn(conn.quit());
            }
        }
        result
    }
}
