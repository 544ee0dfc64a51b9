//! PostgreSQL side of [`LimitStore`]: GCRA counters shared by every node in
//! `limit_counters`, and account-change notifications over LISTEN/NOTIFY.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgListener;
use sqlx::Row;

use super::postgres::PgStore;
use super::*;

/// The channel the 0001/0006 migration triggers notify on.
const AUTH_CHANNEL: &str = "postgate_auth";

/// One statement, one round trip: the upsert applies the step only when it
/// fits (`WHERE` of `DO UPDATE`); when it does not, the `UNION ALL` branch
/// reads the current TAT (statement snapshot) for retry-after.
const CHECK_SQL: &str = "
WITH up AS (
    INSERT INTO limit_counters AS c (key, tat, expires_at)
    SELECT $1, $2 + $3, ($2 + $3 + $5 - 1) / $5 WHERE $3 <= $4
    ON CONFLICT (key) DO UPDATE
       SET tat = GREATEST(c.tat, $2) + $3,
           expires_at = (GREATEST(c.tat, $2) + $3 + $5 - 1) / $5
     WHERE GREATEST(c.tat, $2) + $3 <= $2 + $4
    RETURNING c.tat
)
SELECT tat, TRUE AS allowed FROM up
UNION ALL
SELECT tat, FALSE AS allowed FROM limit_counters
 WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM up)";

fn counter(row: &sqlx::postgres::PgRow) -> LimitCounter {
    LimitCounter {
        key: row.get("key"),
        tat: row.get("tat"),
        expires_at: row.get("expires_at"),
    }
}

#[async_trait]
impl LimitStore for PgStore {
    async fn limit_check(&self, key: &str, step: &GcraStep) -> StoreResult<GcraOutcome> {
        let row = sqlx::query(CHECK_SQL)
            .bind(key)
            .bind(step.now)
            .bind(step.increment)
            .bind(step.window)
            .bind(step.scale.max(1))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(match row {
            Some(r) if r.get::<bool, _>("allowed") => GcraOutcome::Allowed { tat: r.get("tat") },
            Some(r) => GcraOutcome::Refused {
                tat: Some(r.get("tat")),
            },
            None => GcraOutcome::Refused { tat: None },
        })
    }

    async fn limit_get(&self, keys: &[String]) -> StoreResult<Vec<LimitCounter>> {
        let rows =
            sqlx::query("SELECT key, tat, expires_at FROM limit_counters WHERE key = ANY($1)")
                .bind(keys)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(rows.iter().map(counter).collect())
    }

    async fn limit_set(&self, c: &LimitCounter) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO limit_counters (key, tat, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET tat = EXCLUDED.tat, expires_at = EXCLUDED.expires_at",
        )
        .bind(&c.key)
        .bind(c.tat)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(())
    }

    async fn limit_delete(&self, keys: &[String]) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM limit_counters WHERE key = ANY($1)")
            .bind(keys)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(done.rows_affected())
    }

    async fn limit_delete_prefix(&self, prefix: &str) -> StoreResult<u64> {
        // left() rather than LIKE: keys may contain % and _.
        let done = sqlx::query("DELETE FROM limit_counters WHERE left(key, length($1)) = $1")
            .bind(prefix)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(done.rows_affected())
    }

    async fn limit_list(&self, now: i64) -> StoreResult<Vec<LimitCounter>> {
        let rows = sqlx::query(
            "SELECT key, tat, expires_at FROM limit_counters WHERE expires_at > $1 ORDER BY key",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(rows.iter().map(counter).collect())
    }

    async fn limit_purge(&self, now: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM limit_counters WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(done.rows_affected())
    }

    async fn subscribe_auth_changes(&self) -> StoreResult<AuthChanges> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "auth change listener"))?;
        listener
            .listen(AUTH_CHANNEL)
            .await
            .map_err(|e| map_sqlx(e, "auth change listener"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                // try_recv: Ok(None) means the connection was lost and is
                // being re-established (notifications in between are lost).
                let received = tokio::select! {
                    r = listener.try_recv() => r,
                    _ = tx.closed() => break,
                };
                let event = match received {
                    Ok(Some(_)) => AuthChange::Changed,
                    Ok(None) => AuthChange::Resync,
                    Err(e) => {
                        tracing::warn!(error = %redact_url(&e.to_string()), "auth change listener failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        AuthChange::Resync
                    }
                };
                if send_coalesced(&tx, event).await.is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }
}

/// Sends `event` unless the receiver is gone (`Err`). When the channel is
/// full, a pending event already tells the receiver to invalidate: a
/// `Changed` may be dropped, a `Resync` waits for room.
pub(crate) async fn send_coalesced(
    tx: &tokio::sync::mpsc::Sender<AuthChange>,
    event: AuthChange,
) -> Result<(), ()> {
    match tx.try_send(event) {
        Ok(()) => Ok(()),
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(()),
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) if event == AuthChange::Changed => {
            Ok(())
        }
        Err(tokio::sync::mpsc::error::TrySendError::Full(ev)) => tx.send(ev).await.map_err(|_| ()),
    }
}
