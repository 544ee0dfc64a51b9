//! The events outbox on SQLite (see `events.rs`). One writer at a time, so
//! ids (AUTOINCREMENT: never reused after pruning) are in commit order and
//! `tx` is always 0.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::sqlite::SqliteStore;
use super::*;

const COLUMNS: &str =
    "id, tx, at, kind, message_id, recipient, sender, username, upstream, attempt, reply, rule";

/// `accepted` for each recipient of a submitted message (not of a DSN nor
/// of a journal copy: the null sender; migration 0015).
const ACCEPTED_TRIGGER: &str = "CREATE TRIGGER IF NOT EXISTS postgate_events_accepted
    AFTER INSERT ON queue_recipients
    BEGIN
        INSERT INTO delivery_events (at, kind, message_id, recipient, sender, username)
        SELECT m.received_at, 'accepted', m.id, NEW.recipient, m.sender, m.username
        FROM queue_messages m WHERE m.id = NEW.message_id AND m.is_dsn = 0 AND m.sender <> '';
    END";

/// Each logged outcome of a message that has an `accepted` event.
const OUTCOME_TRIGGER: &str = "CREATE TRIGGER IF NOT EXISTS postgate_events_outcome
    AFTER INSERT ON delivery_log WHEN NEW.outcome <> 'bounced'
    BEGIN
        INSERT INTO delivery_events (at, kind, message_id, recipient, sender, username, upstream,
                                     attempt, reply)
        SELECT NEW.at, CASE NEW.outcome WHEN 'failed' THEN 'bounced' ELSE NEW.outcome END,
               NEW.message_id, NEW.recipient, a.sender, a.username, NEW.upstream, NEW.attempt,
               NEW.reply
        FROM (SELECT sender, username FROM delivery_events
              WHERE message_id = NEW.message_id AND kind = 'accepted' ORDER BY id LIMIT 1) a;
    END";

fn event_of(r: &SqliteRow) -> DeliveryEvent {
    DeliveryEvent {
        id: r.get("id"),
        tx: r.get("tx"),
        at: r.get("at"),
        kind: r.get("kind"),
        message_id: r.get("message_id"),
        recipient: r.get("recipient"),
        sender: r.get("sender"),
        username: r.get("username"),
        upstream: r.get("upstream"),
        attempt: u32::try_from(r.get::<i64, _>("attempt").max(0)).unwrap_or(0),
        reply: r.get("reply"),
        rule: r.get("rule"),
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn events_install(&self, enabled: bool) -> StoreResult<()> {
        if self.events_installed().await? == enabled {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "events"))?;
        let statements: &[&str] = if enabled {
            &[ACCEPTED_TRIGGER, OUTCOME_TRIGGER]
        } else {
            &[
                "DROP TRIGGER IF EXISTS postgate_events_accepted",
                "DROP TRIGGER IF EXISTS postgate_events_outcome",
            ]
        };
        for s in statements {
            sqlx::query(s)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "events"))?;
        }
        tx.commit().await.map_err(|e| map_sqlx(e, "events"))
    }

    async fn events_installed(&self) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'
             AND name IN ('postgate_events_accepted', 'postgate_events_outcome')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "events"))?;
        Ok(n == 2)
    }

    async fn event_rejected(&self, r: &NewRejection) -> StoreResult<()> {
        let recipients: Vec<Option<&str>> = if r.recipients.is_empty() {
            vec![None]
        } else {
            r.recipients.iter().map(|a| Some(a.as_str())).collect()
        };
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "event"))?;
        for rcpt in recipients {
            sqlx::query(
                "INSERT INTO delivery_events (at, kind, recipient, sender, username, reply, rule)
                 VALUES (?1, 'rejected', ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(r.at)
            .bind(rcpt)
            .bind(&r.sender)
            .bind(&r.username)
            .bind(&r.reply)
            .bind(&r.rule)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "event"))?;
        }
        tx.commit().await.map_err(|e| map_sqlx(e, "event"))
    }

    async fn events_recent(
        &self,
        message_id: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT * FROM (SELECT {COLUMNS} FROM delivery_events
                            WHERE ?1 IS NULL OR message_id = ?1
                            ORDER BY id DESC LIMIT ?2)
             ORDER BY id"
        ))
        .bind(message_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "events"))?;
        Ok(rows.iter().map(event_of).collect())
    }

    async fn events_after(
        &self,
        cursor: EventCursor,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM delivery_events WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))
        .bind(cursor.id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "events"))?;
        Ok(rows.iter().map(event_of).collect())
    }

    async fn events_backlog(&self, cursor: EventCursor) -> StoreResult<EventBacklog> {
        let row = sqlx::query(
            "SELECT count(*) AS n, min(at) AS oldest FROM delivery_events WHERE id > ?1",
        )
        .bind(cursor.id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "events"))?;
        Ok(EventBacklog {
            events: u64::try_from(row.get::<i64, _>("n")).unwrap_or(0),
            oldest_at: row.get("oldest"),
        })
    }

    async fn webhook_cursor(&self, name: &str) -> StoreResult<Option<EventCursor>> {
        let row = sqlx::query("SELECT tx, id FROM webhook_cursors WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "webhook cursor"))?;
        Ok(row.map(|r| EventCursor {
            tx: r.get("tx"),
            id: r.get("id"),
        }))
    }

    async fn webhook_cursor_set(
        &self,
        name: &str,
        cursor: EventCursor,
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO webhook_cursors (name, tx, id, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE
             SET tx = excluded.tx, id = excluded.id, updated_at = excluded.updated_at
             WHERE (webhook_cursors.tx, webhook_cursors.id) < (excluded.tx, excluded.id)",
        )
        .bind(name)
        .bind(cursor.tx)
        .bind(cursor.id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "webhook cursor"))?;
        Ok(())
    }

    async fn webhook_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let held = sqlx::query(
            "INSERT INTO webhook_cursors (name, tx, id, updated_at, owner, lease_until)
             VALUES (?1, 0, 0, ?3, ?2, ?4)
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                 lease_until = excluded.lease_until
             WHERE webhook_cursors.owner IS NULL OR webhook_cursors.owner = excluded.owner
                OR webhook_cursors.lease_until < ?3",
        )
        .bind(name)
        .bind(owner)
        .bind(now)
        .bind(now.saturating_add(lease_ms))
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "webhook lease"))?
        .rows_affected();
        Ok(held == 1)
    }

    async fn events_prune(&self, before: i64, keep: u64) -> StoreResult<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let old = sqlx::query("DELETE FROM delivery_events WHERE at < ?1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "events"))?
            .rows_affected();
        let over = sqlx::query(
            "DELETE FROM delivery_events WHERE id <= (
                 SELECT id FROM delivery_events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        )
        .bind(keep)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "events"))?
        .rows_affected();
        Ok(old + over)
    }
}
