//! [`LimitStore`] for both backends: the statements that are the same text
//! on PostgreSQL and SQLite are written once in [`limit_store!`]; the GCRA
//! step and the multi-key lookups differ and stay in the backend files
//! (`postgres_limits.rs`, `sqlite_limits.rs`) as inherent methods of the
//! same names, which the macro calls.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::*;

/// The [`LimitCounter`] of a `key, tat, expires_at` row.
pub(super) fn counter<'r, R>(row: &'r R) -> LimitCounter
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    LimitCounter {
        key: row.get("key"),
        tat: row.get("tat"),
        expires_at: row.get("expires_at"),
    }
}

/// Sends `event` unless the receiver is gone (`Err`). When the channel is
/// full, a pending event already tells the receiver to invalidate: a
/// `Changed` may be dropped, a `Resync` waits for room.
pub(super) async fn send_coalesced(
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

/// Implements [`LimitStore`] for `$store` (a backend with a `pool` field and
/// inherent `limit_check`, `limit_get` and `limit_delete`).
macro_rules! limit_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl LimitStore for $store {
            async fn limit_check(&self, key: &str, step: &GcraStep) -> StoreResult<GcraOutcome> {
                <$store>::limit_check(self, key, step).await
            }

            async fn limit_get(&self, keys: &[String]) -> StoreResult<Vec<LimitCounter>> {
                <$store>::limit_get(self, keys).await
            }

            async fn limit_set(&self, c: &LimitCounter) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO limit_counters (key, tat, expires_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET tat = excluded.tat, expires_at = excluded.expires_at",
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
                <$store>::limit_delete(self, keys).await
            }

            async fn limit_delete_prefix(&self, prefix: &str) -> StoreResult<u64> {
                // substr() rather than LIKE: keys may contain % and _.
                let done = sqlx::query(
                    "DELETE FROM limit_counters WHERE substr(key, 1, length($1)) = $1",
                )
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
                Ok(rows.iter().map($crate::store::sql_limits::counter).collect())
            }

            async fn limit_purge(&self, now: i64) -> StoreResult<u64> {
                let done = sqlx::query("DELETE FROM limit_counters WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "limit counter"))?;
                Ok(done.rows_affected())
            }
        }
    };
}
pub(super) use limit_store;
