//! The queue statements that are the same text on PostgreSQL and SQLite,
//! written once: [`queue_store!`] implements [`QueueStore`] and
//! [`queue_admin_store!`] [`QueueAdminStore`] for a backend. What differs
//! stays in the backend files as inherent methods of the same names, which
//! the macros call: claim, outcome recording, the checks before a message is
//! finished, marking delay notices and lease renewal (`postgres_queue.rs`,
//! `sqlite_queue.rs`), and the admin filter's `WHERE` clause. Enqueues go
//! through each backend's group-commit writer (`group_commit.rs`), whose
//! insert statements differ (`postgres_queue::insert_messages`,
//! `sqlite_writer::insert_message`).

use std::collections::HashMap;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::*;

/// A count read as `bigint`: negative is 0, too large is `u32::MAX`.
pub(super) fn count_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// The [`ClaimedMessage`] (no recipients yet) of a `queue_messages` row;
/// its body when the row has a non-NULL `small_body` column.
pub(super) fn message_of<'r, R>(r: &'r R) -> ClaimedMessage
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    ClaimedMessage {
        id: r.get("id"),
        sender: r.get("sender"),
        user_id: r.get("user_id"),
        username: r.get("username"),
        envid: r.get("envid"),
        dsn_ret: r.get("dsn_ret"),
        is_dsn: r.get("is_dsn"),
        smtputf8: r.get("smtputf8"),
        size: r.get("size"),
        received_at: r.get("received_at"),
        expires_at: r.get("expires_at"),
        recipients: Vec::new(),
        body: r
            .try_get::<Option<Vec<u8>>, _>("small_body")
            .ok()
            .flatten()
            .map(bytes::Bytes::from),
    }
}

/// Groups claimed recipient rows `(message_id, recipient)` under their messages.
pub(super) fn group_claims(
    mut messages: HashMap<String, ClaimedMessage>,
    rows: Vec<(String, ClaimedRecipient)>,
) -> Vec<ClaimedMessage> {
    for (mid, r) in rows {
        if let Some(m) = messages.get_mut(&mid) {
            m.recipients.push(r);
        }
    }
    let mut out: Vec<ClaimedMessage> = messages
        .into_values()
        .filter(|m| !m.recipients.is_empty())
        .collect();
    for m in &mut out {
        m.recipients.sort_by_key(|r| r.id);
    }
    out.sort_by(|a, b| a.received_at.cmp(&b.received_at).then(a.id.cmp(&b.id)));
    out
}

/// Depth and oldest `received_at` of the messages with a recipient still
/// queued (`COUNT` is 64-bit on both backends).
pub(super) const QUEUE_STATS_SQL: &str = "SELECT COUNT(*), MIN(m.received_at) FROM queue_messages m
     WHERE EXISTS (SELECT 1 FROM queue_recipients r
                   WHERE r.message_id = m.id AND r.status = 'queued')";

/// The [`QueueSummary`] of one `QUEUE_STATS_SQL` row read at `now`.
pub(super) fn queue_summary(now: i64, count: i64, oldest: Option<i64>) -> QueueSummary {
    QueueSummary {
        depth: count.max(0) as u64,
        oldest_age_ms: oldest.map_or(0, |t| (now - t).max(0)),
    }
}

/// One [`QueueEntry`] per message; every count is read as `bigint`.
pub(super) const LIST_SQL: &str = "SELECT m.id, m.sender, m.username, m.size, m.received_at, m.is_dsn,
        m.envid, m.expires_at,
        (SELECT count(*) FROM queue_recipients r WHERE r.message_id = m.id) AS recipients,
        (SELECT count(*) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued') AS pending,
        (SELECT min(next_attempt_at) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued') AS next_at,
        (SELECT count(*) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued' AND r.held = true) AS held,
        (SELECT CAST(max(attempts) AS BIGINT) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued') AS max_attempts,
        (SELECT max(lease_until) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued') AS lease_until
     FROM queue_messages m";

/// The [`ClaimedRecipient`] of a claimed row whose recipient id is column
/// `id`; `u32_of` reads the backend's integer columns.
pub(super) fn recipient_of<'r, R, N>(r: &'r R, id: &str, u32_of: fn(N) -> u32) -> ClaimedRecipient
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    N: Decode<'r, R::Database> + Type<R::Database>,
{
    ClaimedRecipient {
        id: r.get(id),
        address: r.get("recipient"),
        notify: r.get("notify"),
        orcpt: r.get("orcpt"),
        attempts: u32_of(r.get("attempts")),
        route_index: u32_of(r.get("route_index")),
        delay_warned: r.get("delay_warned"),
    }
}

/// The [`QueueEntry`] of a [`LIST_SQL`] row.
pub(super) fn entry_of<'r, R>(r: &'r R) -> QueueEntry
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    QueueEntry {
        id: r.get("id"),
        sender: r.get("sender"),
        username: r.get("username"),
        size: r.get("size"),
        received_at: r.get("received_at"),
        is_dsn: r.get("is_dsn"),
        recipients: count_u32(r.get("recipients")),
        pending: count_u32(r.get("pending")),
        next_attempt_at: r.get("next_at"),
        held: r.get::<i64, _>("held") > 0,
        attempts: count_u32(r.get::<Option<i64>, _>("max_attempts").unwrap_or(0)),
        lease_until: r.get("lease_until"),
    }
}

/// Implements [`QueueStore`] for `$store`: a backend with a `pool` field,
/// a `writer` field (its group-commit writer, `group_commit.rs`), a
/// `begin_write` method (the transaction of a write), inherent
/// `claim_due`, `record_outcomes`, `lock_message`, `renew_leases_until`,
/// `IN_ID_LIST` (` IN` a set of ids bound as `$1`) and `id_list` (that
/// set's value); `$conn` is its connection type, `$u32_of` reads its
/// integer columns (`attempts`, `route_index`) as `u32` and
/// `$insert_message` inserts a message inside a transaction.
macro_rules! queue_store {
    ($store:ty, $conn:ty, $u32_of:path, $insert_message:path) => {
        #[async_trait::async_trait]
        impl QueueStore for $store {
            async fn enqueue(&self, m: &NewMessage) -> StoreResult<()> {
                // Through the store's group-commit writer: committed (SQLite
                // synced, PostgreSQL's WAL flushed) with whatever else was
                // waiting, before this returns and the 250 goes out.
                super::group_commit::enqueue(&self.writer, m.clone()).await
            }

            async fn claim_due(
                &self,
                owner: &str,
                now: i64,
                lease_ms: i64,
                limit: u32,
            ) -> StoreResult<Vec<ClaimedMessage>> {
                <$store>::claim_due(self, owner, now, lease_ms, limit).await
            }

            async fn record_outcomes(
                &self,
                owner: &str,
                now: i64,
                outcomes: &[RecipientOutcome],
            ) -> StoreResult<u64> {
                <$store>::record_outcomes(self, owner, now, outcomes).await
            }

            async fn finish_message(
                &self,
                id: &str,
                now: i64,
                dsn: Option<&NewMessage>,
            ) -> StoreResult<bool> {
                let mut tx = self.begin_write().await.map_err(|e| map_sqlx(e, "queue"))?;
                if !Self::lock_message(&mut *tx, id).await? {
                    tx.rollback().await.map_err(|e| map_sqlx(e, "queue"))?;
                    return Ok(false);
                }
                let (total, queued): (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'queued') FROM queue_recipients
                     WHERE message_id = $1",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "queue"))?;
                if total == 0 || queued > 0 {
                    tx.rollback().await.map_err(|e| map_sqlx(e, "queue"))?;
                    return Ok(false);
                }
                Self::finish_final_message(tx, id, now, dsn).await
            }

            async fn enqueue_notice(
                &self,
                notice: &NewMessage,
                delay_warned: &[i64],
            ) -> StoreResult<bool> {
                let mut tx = self.begin_write().await.map_err(|e| map_sqlx(e, "queue"))?;
                if !delay_warned.is_empty() && Self::mark_delay_warned(&mut *tx, delay_warned).await? == 0
                {
                    tx.rollback().await.map_err(|e| map_sqlx(e, "queue"))?;
                    return Ok(false);
                }
                $insert_message(&mut *tx, notice).await?;
                tx.commit().await.map_err(|e| map_sqlx(e, "queue"))?;
                Ok(true)
            }

            async fn renew_leases(
                &self,
                owner: &str,
                recipient_ids: &[i64],
                now: i64,
                lease_ms: i64,
            ) -> StoreResult<u64> {
                if recipient_ids.is_empty() {
                    return Ok(0);
                }
                let until = now.saturating_add(lease_ms);
                <$store>::renew_leases_until(self, owner, recipient_ids, until).await
            }

            async fn load_body(&self, id: &str) -> StoreResult<bytes::Bytes> {
                let body: Option<Vec<u8>> =
                    sqlx::query_scalar("SELECT body FROM queue_messages WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(|e| map_sqlx(e, "queued message"))?;
                body.map(bytes::Bytes::from)
                    .ok_or_else(|| StoreError::NotFound(format!("queued message {id:?}")))
            }

            async fn final_recipients(&self, id: &str) -> StoreResult<Option<Vec<FinalRecipient>>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT recipient, notify, orcpt, status, attempts, last_upstream, last_reply
                     FROM queue_recipients WHERE message_id = $1 ORDER BY id",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "queue"))?;
                if rows.is_empty()
                    || rows
                        .iter()
                        .any(|r| r.get::<String, _>("status") == "queued")
                {
                    return Ok(None);
                }
                Ok(Some(
                    rows.iter()
                        .map(|r| FinalRecipient {
                            address: r.get("recipient"),
                            notify: r.get("notify"),
                            orcpt: r.get("orcpt"),
                            status: r.get("status"),
                            attempts: $u32_of(r.get("attempts")),
                            last_upstream: r.get("last_upstream"),
                            last_reply: r.get("last_reply"),
                        })
                        .collect(),
                ))
            }

            async fn unfinished_messages(&self, limit: u32) -> StoreResult<Vec<ClaimedMessage>> {
                let rows = sqlx::query(
                    "SELECT id, sender, user_id, username, envid, dsn_ret, is_dsn, smtputf8, size,
                            received_at, expires_at
                     FROM queue_messages m
                     WHERE NOT EXISTS (SELECT 1 FROM queue_recipients r
                                       WHERE r.message_id = m.id AND r.status = 'queued')
                     ORDER BY received_at, id LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "queue"))?;
                Ok(rows.iter().map($crate::store::sql_queue::message_of).collect())
            }

            async fn reclaim_expired(&self, now: i64) -> StoreResult<u64> {
                // Per backend: PostgreSQL skips locked rows (issue #16).
                <$store>::reclaim_expired(self, now).await
            }

            async fn prune_delivery_log(&self, before: i64) -> StoreResult<u64> {
                let done = sqlx::query("DELETE FROM delivery_log WHERE at < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "delivery log"))?;
                Ok(done.rows_affected())
            }

            async fn queue_stats(&self, now: i64) -> StoreResult<QueueSummary> {
                use sqlx::Row;
                let row = sqlx::query($crate::store::sql_queue::QUEUE_STATS_SQL)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "queue"))?;
                Ok($crate::store::sql_queue::queue_summary(now, row.get(0), row.get(1)))
            }

            async fn queue_list(&self, limit: u32) -> StoreResult<Vec<QueueEntry>> {
                let rows = sqlx::query(&format!("{} ORDER BY m.received_at, m.id LIMIT $1", $crate::store::sql_queue::LIST_SQL))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "queue"))?;
                Ok(rows.iter().map($crate::store::sql_queue::entry_of).collect())
            }

            async fn queue_show(&self, id: &str) -> StoreResult<QueueDetail> {
                use sqlx::Row;
                let row = sqlx::query(&format!("{} WHERE m.id = $1", $crate::store::sql_queue::LIST_SQL))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "queue"))?
                    .ok_or_else(|| StoreError::NotFound(format!("queued message {id:?}")))?;
                let recipients = sqlx::query(
                    "SELECT recipient, status, attempts, next_attempt_at, route_index, lease_owner,
                            lease_until, last_upstream, last_reply, held
                     FROM queue_recipients WHERE message_id = $1 ORDER BY id",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "queue"))?;
                let log = sqlx::query(
                    "SELECT at, recipient, upstream, outcome, attempt, reply FROM delivery_log
                     WHERE message_id = $1 ORDER BY at, id",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "delivery log"))?;
                Ok(QueueDetail {
                    entry: $crate::store::sql_queue::entry_of(&row),
                    envid: row.get("envid"),
                    expires_at: row.get("expires_at"),
                    recipients: recipients
                        .iter()
                        .map(|r| QueueRecipientDetail {
                            address: r.get("recipient"),
                            status: r.get("status"),
                            attempts: $u32_of(r.get("attempts")),
                            next_attempt_at: r.get("next_attempt_at"),
                            route_index: $u32_of(r.get("route_index")),
                            lease_owner: r.get("lease_owner"),
                            lease_until: r.get("lease_until"),
                            last_upstream: r.get("last_upstream"),
                            last_reply: r.get("last_reply"),
                            held: r.get("held"),
                        })
                        .collect(),
                    log: log
                        .iter()
                        .map(|r| DeliveryLogEntry {
                            at: r.get("at"),
                            recipient: r.get("recipient"),
                            upstream: r.get("upstream"),
                            outcome: r.get("outcome"),
                            attempt: $u32_of(r.get("attempt")),
                            reply: r.get("reply"),
                        })
                        .collect(),
                })
            }

            async fn queue_retry(&self, id: &str, now: i64) -> StoreResult<u64> {
                let mut tx = self.begin_write().await.map_err(|e| map_sqlx(e, "queue"))?;
                Self::queue_message_exists(&mut tx, id).await?;
                let done = sqlx::query(
                    "UPDATE queue_recipients SET next_attempt_at = $1, updated_at = $1
                     WHERE message_id = $2 AND status = 'queued'",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "queue"))?;
                tx.commit().await.map_err(|e| map_sqlx(e, "queue"))?;
                Ok(done.rows_affected())
            }

            async fn queue_delete(&self, id: &str, now: i64) -> StoreResult<()> {
                let mut tx = self.begin_write().await.map_err(|e| map_sqlx(e, "queue"))?;
                Self::queue_message_exists(&mut tx, id).await?;
                sqlx::query(
                    "INSERT INTO delivery_log (at, message_id, recipient, upstream, outcome, attempt, reply)
                     SELECT $1, message_id, recipient, NULL, 'deleted', attempts, 'deleted by admin'
                     FROM queue_recipients WHERE message_id = $2 AND status = 'queued'",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "delivery log"))?;
                sqlx::query("DELETE FROM queue_messages WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(e, "queue"))?;
                tx.commit().await.map_err(|e| map_sqlx(e, "queue"))
            }
        }

        impl $store {
            /// Sets `delay_warned` on the recipients `ids` not yet warned;
            /// returns how many.
            async fn mark_delay_warned(conn: &mut $conn, ids: &[i64]) -> StoreResult<u64> {
                let sql = format!(
                    "UPDATE queue_recipients SET delay_warned = true
                     WHERE id {} AND NOT delay_warned",
                    Self::IN_ID_LIST
                );
                Ok(sqlx::query(&sql)
                    .bind(Self::id_list(ids))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| map_sqlx(e, "queue"))?
                    .rows_affected())
            }

            /// The end of `finish_message`, once `tx` has made sure that
            /// every recipient of message `id` is final: enqueues
            /// the DSN (logging its recipients as bounced), deletes the
            /// message, commits.
            async fn finish_final_message(
                mut tx: sqlx::Transaction<'static, <$conn as sqlx::Connection>::Database>,
                id: &str,
                now: i64,
                dsn: Option<&NewMessage>,
            ) -> StoreResult<bool> {
                if let Some(dsn) = dsn {
                    $insert_message(&mut *tx, dsn).await?;
                    sqlx::query(
                        "INSERT INTO delivery_log (at, message_id, recipient, upstream, outcome, attempt, reply)
                         SELECT $1, message_id, recipient, NULL, 'bounced', attempts, $2
                         FROM queue_recipients WHERE message_id = $3 AND status IN ('failed', 'expired')",
                    )
                    .bind(now)
                    .bind(format!("DSN {}", dsn.id))
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(e, "delivery log"))?;
                }
                sqlx::query("DELETE FROM queue_messages WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(e, "queue"))?;
                tx.commit().await.map_err(|e| map_sqlx(e, "queue"))?;
                Ok(true)
            }

            /// `NotFound` unless message `id` exists (inside the caller's transaction).
            async fn queue_message_exists(
                conn: &mut $conn,
                id: &str,
            ) -> StoreResult<()> {
                sqlx::query("SELECT 1 FROM queue_messages WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| map_sqlx(e, "queue"))?
                    .map(|_| ())
                    .ok_or_else(|| StoreError::NotFound(format!("queued message {id:?}")))
            }
        }
    };
}
pub(super) use queue_store;

/// Implements [`QueueAdminStore`] for `$store` (as for [`queue_store!`]);
/// `$select_where` is its filter clause: `$1`/`$2`/`$3`/`$4` are the sender
/// pattern, username, recipient pattern and received-before, NULL matching
/// everything, and it ends with the order.
macro_rules! queue_admin_store {
    ($store:ty, $select_where:expr) => {
        #[async_trait::async_trait]
        impl QueueAdminStore for $store {
            async fn queue_select(&self, filter: &QueueFilter) -> StoreResult<Vec<QueueEntry>> {
                let f = filter.normalized();
                let rows = sqlx::query(&format!(
                    "{}{}",
                    $crate::store::sql_queue::LIST_SQL,
                    $select_where
                ))
                .bind(f.sender)
                .bind(f.username)
                .bind(f.recipient)
                .bind(f.received_before)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "queue"))?;
                Ok(rows
                    .iter()
                    .map($crate::store::sql_queue::entry_of)
                    .collect())
            }

            async fn queue_hold(&self, id: &str, hold: bool, now: i64) -> StoreResult<u64> {
                let mut tx = self.begin_write().await.map_err(|e| map_sqlx(e, "queue"))?;
                Self::queue_message_exists(&mut tx, id).await?;
                let done = sqlx::query(
                    "UPDATE queue_recipients SET held = $1, updated_at = $2
                     WHERE message_id = $3 AND status = 'queued' AND held <> $1",
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
    };
}
pub(super) use queue_admin_store;
