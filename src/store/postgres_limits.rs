//! PostgreSQL side of [`LimitStore`] (the GCRA step in one statement, the
//! multi-key statements with arrays; the rest is `sql_limits.rs`) and of
//! [`AuthChangeStore`]: account-change notifications over LISTEN/NOTIFY.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgListener;
use sqlx::Row;

use super::postgres::PgStore;
use super::sql_limits::{counter, send_coalesced};
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

super::sql_limits::limit_store!(PgStore);

impl PgStore {
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

    async fn limit_delete(&self, keys: &[String]) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM limit_counters WHERE key = ANY($1)")
            .bind(keys)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl AuthChangeStore for PgStore {
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
