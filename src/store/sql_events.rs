//! [`EventStore`] written once for both backends: the webhooks' cursors and
//! leases and the pruning are the same statements on PostgreSQL and SQLite
//! (`$N` placeholders), and the reads differ only in their text (an
//! [`EventSql`] of each backend), so [`event_store!`] expands them for each
//! store type. Writing `rejected` rows differs and stays in
//! `events_postgres.rs` and `events_sqlite.rs`, as an inherent method the
//! macro calls.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::DeliveryEvent;

/// The columns [`event_of`] reads (`attempt` as BIGINT on both backends),
/// a literal for `concat!`.
macro_rules! event_columns {
    () => {
        "id, tx, at, kind, message_id, recipient, sender, username, upstream,
         CAST(attempt AS BIGINT) AS attempt, reply, rule"
    };
}
pub(super) use event_columns;

/// A backend's statements of [`EventStore`](super::EventStore) that differ.
pub(super) struct EventSql {
    /// Creates the event triggers, in one write transaction.
    pub install: &'static [&'static str],
    /// Drops them, likewise.
    pub uninstall: &'static [&'static str],
    /// How many of the two event triggers exist (no parameters).
    pub triggers: &'static str,
    /// [`EventStore::events_recent`](super::EventStore::events_recent):
    /// `$1` message id or NULL, `$2` limit.
    pub recent: &'static str,
    /// [`EventStore::events_after`](super::EventStore::events_after):
    /// `$1`, `$2` the cursor's tx and id, `$3` limit.
    pub after: &'static str,
    /// [`EventStore::events_backlog`](super::EventStore::events_backlog):
    /// `$1`, `$2` the cursor's tx and id; columns `n` and `oldest`.
    pub backlog: &'static str,
}

/// The [`DeliveryEvent`] of a `delivery_events` row selected with [`event_columns!`].
pub(super) fn event_of<'r, R>(r: &'r R) -> DeliveryEvent
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
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

/// The recipients of a `rejected` refusal, one `None` when there were none.
pub(super) fn rejected_recipients(r: &super::NewRejection) -> Vec<Option<&str>> {
    if r.recipients.is_empty() {
        vec![None]
    } else {
        r.recipients.iter().map(|a| Some(a.as_str())).collect()
    }
}

/// Implements [`EventStore`] for `$store` (a backend with a `pool` field
/// and the inherent `begin_write` and `event_rejected_insert`) with the
/// statements of `$sql` (an [`EventSql`]).
macro_rules! event_store {
    ($store:ty, $sql:expr) => {
        // A block of its own, so the imports stay out of the backend module.
        const _: () = {
        use super::*;
        use super::sql_events::event_of;
        use sqlx::Row;

        #[async_trait::async_trait]
        impl EventStore for $store {
            async fn events_install(&self, enabled: bool) -> StoreResult<()> {
                if self.events_installed().await? == enabled {
                    return Ok(());
                }
                let mut tx = self.begin_write().await.map_err(|e| map_sqlx(e, "events"))?;
                for s in if enabled { $sql.install } else { $sql.uninstall } {
                    sqlx::query(s)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx(e, "events"))?;
                }
                tx.commit().await.map_err(|e| map_sqlx(e, "events"))
            }

            async fn events_installed(&self) -> StoreResult<bool> {
                let n: i64 = sqlx::query_scalar($sql.triggers)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "events"))?;
                Ok(n == 2)
            }

            async fn event_rejected(&self, r: &NewRejection) -> StoreResult<()> {
                self.event_rejected_insert(r).await
            }

            async fn events_recent(
                &self,
                message_id: Option<&str>,
                limit: u32,
            ) -> StoreResult<Vec<DeliveryEvent>> {
                let rows = sqlx::query($sql.recent)
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
                let rows = sqlx::query($sql.after)
                    .bind(cursor.tx)
                    .bind(cursor.id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "events"))?;
                Ok(rows.iter().map(event_of).collect())
            }

            async fn events_backlog(&self, cursor: EventCursor) -> StoreResult<EventBacklog> {
                let row = sqlx::query($sql.backlog)
                    .bind(cursor.tx)
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
                let row = sqlx::query("SELECT tx, id FROM webhook_cursors WHERE name = $1")
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
                    "INSERT INTO webhook_cursors (name, tx, id, updated_at) VALUES ($1, $2, $3, $4)
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
                     VALUES ($1, 0, 0, $3, $2, $4)
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                         lease_until = excluded.lease_until
                     WHERE webhook_cursors.owner IS NULL OR webhook_cursors.owner = excluded.owner
                        OR webhook_cursors.lease_until < $3",
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
                let old = sqlx::query("DELETE FROM delivery_events WHERE at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "events"))?
                    .rows_affected();
                let over = sqlx::query(
                    "DELETE FROM delivery_events WHERE id <= (
                         SELECT id FROM delivery_events ORDER BY id DESC LIMIT 1 OFFSET $1)",
                )
                .bind(keep)
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "events"))?
                .rows_affected();
                Ok(old + over)
            }
        }
        };
    };
}
pub(super) use event_store;
