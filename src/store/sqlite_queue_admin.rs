//! Operator queue actions on SQLite: the [`QueueAdminStore`] contract.

use async_trait::async_trait;

use super::sqlite::SqliteStore;
use super::sqlite_queue::{entry_of, LIST_SQL};
use super::*;

/// `?1`/`?2`/`?3`/`?4`: sender pattern, username, recipient pattern,
/// received-before; NULL matches everything. A pattern starting with `@`
/// matches the address's domain part, anything else the whole address.
const SELECT_WHERE: &str = " WHERE (?1 IS NULL OR lower(m.sender) = ?1
        OR (substr(?1, 1, 1) = '@' AND substr(lower(m.sender), -length(?1)) = ?1))
   AND (?2 IS NULL OR m.username = ?2)
   AND (?3 IS NULL OR EXISTS (SELECT 1 FROM queue_recipients x WHERE x.message_id = m.id
        AND (lower(x.recipient) = ?3
             OR (substr(?3, 1, 1) = '@' AND substr(lower(x.recipient), -length(?3)) = ?3))))
   AND (?4 IS NULL OR m.received_at <= ?4)
 ORDER BY m.received_at, m.id";

#[async_trait]
impl QueueAdminStore for SqliteStore {
    async fn queue_select(&self, filter: &QueueFilter) -> StoreResult<Vec<QueueEntry>> {
        let f = filter.normalized();
        let rows = sqlx::query(&format!("{LIST_SQL}{SELECT_WHERE}"))
            .bind(f.sender)
            .bind(f.username)
            .bind(f.recipient)
            .bind(f.received_before)
            .fetch_all(self.pool())
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        Ok(rows.iter().map(entry_of).collect())
    }

    async fn queue_hold(&self, id: &str, hold: bool, now: i64) -> StoreResult<u64> {
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM queue_messages WHERE id = ?1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!("queued message {id:?}")));
        }
        let done = sqlx::query(
            "UPDATE queue_recipients SET held = ?1, updated_at = ?2
             WHERE message_id = ?3 AND status = 'queued' AND held <> ?1",
        )
        .bind(hold)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "queue"))?;
        tx.commit().await.map_err(|e| map_sqlx(e, "queue"))?;
        Ok(done.rows_affected())
    }
}
