//! SQLite side of [`LimitStore`] (the same GCRA counters for a single node,
//! `[limits] backend = "store"`: the step and the multi-key statements; the
//! rest is `sql_limits.rs`) and of [`AuthChangeStore`]: account-change
//! detection by polling the `auth_version` row that the 0006 migration's
//! triggers bump.

use async_trait::async_trait;
use sqlx::Row;

use super::sql_limits::{counter, send_coalesced};
use super::sqlite::SqliteStore;
use super::*;

super::sql_limits::limit_store!(SqliteStore);

impl SqliteStore {
    async fn limit_check(&self, key: &str, step: &GcraStep) -> StoreResult<GcraOutcome> {
        let scale = step.scale.max(1);
        if step.increment <= step.window {
            let row = sqlx::query(
                "INSERT INTO limit_counters (key, tat, expires_at)
                 VALUES (?1, ?2 + ?3, (?2 + ?3 + ?5 - 1) / ?5)
                 ON CONFLICT (key) DO UPDATE
                    SET tat = max(tat, ?2) + ?3,
                        expires_at = (max(tat, ?2) + ?3 + ?5 - 1) / ?5
                  WHERE max(tat, ?2) + ?3 <= ?2 + ?4
                 RETURNING tat",
            )
            .bind(key)
            .bind(step.now)
            .bind(step.increment)
            .bind(step.window)
            .bind(scale)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "limit counter"))?;
            if let Some(r) = row {
                return Ok(GcraOutcome::Allowed { tat: r.get("tat") });
            }
        }
        let tat = sqlx::query_scalar::<_, i64>("SELECT tat FROM limit_counters WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(GcraOutcome::Refused { tat })
    }

    async fn limit_get(&self, keys: &[String]) -> StoreResult<Vec<LimitCounter>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (1..=keys.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "SELECT key, tat, expires_at FROM limit_counters WHERE key IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for k in keys {
            q = q.bind(k);
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "limit counter"))?;
        Ok(rows.iter().map(counter).collect())
    }

    async fn limit_delete(&self, keys: &[String]) -> StoreResult<u64> {
        let mut n = 0;
        for k in keys {
            n += sqlx::query("DELETE FROM limit_counters WHERE key = ?1")
                .bind(k)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "limit counter"))?
                .rows_affected();
        }
        Ok(n)
    }
}

#[async_trait]
impl AuthChangeStore for SqliteStore {
    async fn subscribe_auth_changes(&self) -> StoreResult<AuthChanges> {
        let pool = self.pool.clone();
        let read = move |pool: sqlx::SqlitePool| async move {
            sqlx::query_scalar::<_, i64>("SELECT version FROM auth_version WHERE id = 1")
                .fetch_one(&pool)
                .await
        };
        let mut seen = read(pool.clone())
            .await
            .map_err(|e| map_sqlx(e, "auth version"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SQLITE_AUTH_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tx.closed() => break,
                }
                let event = match read(pool.clone()).await {
                    Ok(v) if v == seen => continue,
                    Ok(v) => {
                        seen = v;
                        AuthChange::Changed
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "auth version poll failed");
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
