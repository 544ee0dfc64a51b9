//! A connection pool per upstream: at most `max_connections` sessions at
//! once, each reused for up to `max_messages_per_connection` transactions
//! (RSET between them, RFC 5321 §4.1.1.5) while not idle past `idle_timeout`.

use std::sync::Mutex;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::upstream::{Connection, Envelope, SendError, TxReplies, Upstream};

/// Pooled sessions to one upstream.
pub struct Pool {
    upstream: Upstream,
    idle: Mutex<Vec<Connection>>,
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

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.upstream.config().name
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Sends one message over a pooled session (an idle one after a
    /// successful RSET, else a new one), waiting for a free slot first. A
    /// session that broke is dropped, never returned to the pool.
    pub async fn send(&self, env: Envelope<'_>) -> Result<TxReplies, SendError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::Io("pool closed".into()))?;
        let cfg = self.upstream.config();
        let mut reused = None;
        while let Some(mut conn) = self.take_idle() {
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
            None => self.upstream.connect().await?,
        };
        let result = conn.send(env).await;
        if result.is_ok() {
            if conn.transactions < cfg.max_messages_per_connection.max(1) {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
            } else {
                tokio::spawn(conn.quit());
            }
        }
        result
    }

    /// Closes idle sessions (QUIT).
    pub async fn close_idle(&self) {
        while let Some(conn) = self.take_idle() {
            conn.quit().await;
        }
    }
}
