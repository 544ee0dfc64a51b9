//! The queue on SQLite. Enqueues go through the group-commit writer task
//! of `sqlite_writer.rs`; everything else runs on the pool.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::sqlite::SqliteStore;
use super::sqlite_writer::insert_message;
use super::*;

fn u32_of(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// Groups claimed recipient rows `(message_id, recipient)` under their messages.
pub(crate) fn group_claims(
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

fn message_of(r: &SqliteRow) -> ClaimedMessage {
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

fn outcome_parts(kind: &OutcomeKind) -> (&'static str, i64, Option<i64>, Option<i64>) {
    match kind {
        OutcomeKind::Delivered => ("delivered", 1, None, None),
        OutcomeKind::Failed => ("failed", 1, None, None),
        OutcomeKind::Expired => ("expired", 0, None, None),
        OutcomeKind::Deferred {
            next_attempt_at,
            route_index,
            count_attempt,
        } => (
            "deferred",
            i64::from(*count_attempt),
            Some(*next_attempt_at),
            Some(i64::from(*route_index)),
        ),
    }
}

#[async_trait]
impl QueueStore for SqliteStore {
    async fn enqueue(&self, m: &NewMessage) -> StoreResult<()> {
        super::sqlite_writer::enqueue(&self.writer, m.clone()).await
    }

    async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        // After the enqueue writer's current commit, never polling behind it.
        let _turn = super::sqlite_writer::turn(&self.writer).await?;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        let rows = sqlx::query(
            // Whole messages: every due recipient of the messages of the
            // oldest `limit` due recipients (BEGIN IMMEDIATE serialises
            // claimers), so a message goes out in one transaction.
            "UPDATE queue_recipients SET lease_owner = ?3, lease_until = ?4, updated_at = ?1
             WHERE status = 'queued' AND next_attempt_at <= ?1 AND held = 0
               AND (lease_until IS NULL OR lease_until <= ?1)
               AND message_id IN (SELECT message_id FROM queue_recipients
                                  WHERE status = 'queued' AND next_attempt_at <= ?1 AND held = 0
                                    AND (lease_until IS NULL OR lease_until <= ?1)
                                  ORDER BY next_attempt_at, id LIMIT ?2)
             RETURNING id, message_id, recipient, notify, orcpt, attempts, route_index, delay_warned",
        )
        .bind(now)
        .bind(i64::from(limit))
        .bind(owner)
        .bind(now.saturating_add(lease_ms))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "queue claim"))?;
        let claimed: Vec<(String, ClaimedRecipient)> = rows
            .iter()
            .map(|r| {
                (
                    r.get("message_id"),
                    ClaimedRecipient {
                        id: r.get("id"),
                        address: r.get("recipient"),
                        notify: r.get("notify"),
                        orcpt: r.get("orcpt"),
                        attempts: u32_of(r.get("attempts")),
                        route_index: u32_of(r.get("route_index")),
                        delay_warned: r.get("delay_warned"),
                    },
                )
            })
            .collect();
        if claimed.is_empty() {
            tx.rollback().await.map_err(|e| map_sqlx(e, "queue"))?;
            return Ok(Vec::new());
        }
        let mut ids: Vec<&str> = claimed.iter().map(|(m, _)| m.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let ids_json = format!(
            "[{}]",
            ids.iter()
                .map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect::<Vec<_>>()
                .join(",")
        );
        let msgs = sqlx::query(
            "SELECT id, sender, user_id, username, envid, dsn_ret, is_dsn, smtputf8, size,
                    received_at, expires_at, CASE WHEN size <= ?2 THEN body END AS small_body
             FROM queue_messages WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(ids_json)
        .bind(CLAIM_BODY_MAX)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "queue claim"))?;
        tx.commit().await.map_err(|e| map_sqlx(e, "queue claim"))?;
        let messages = msgs
            .iter()
            .map(|r| {
                let m = message_of(r);
                (m.id.clone(), m)
            })
            .collect();
        Ok(group_claims(messages, claimed))
    }

    async fn load_body(&self, id: &str) -> StoreResult<bytes::Bytes> {
        let body: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM queue_messages WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "queued message"))?;
        body.map(bytes::Bytes::from)
            .ok_or_else(|| StoreError::NotFound(format!("queued message {id:?}")))
    }

    async fn record_outcomes(
        &self,
        owner: &str,
        now: i64,
        outcomes: &[RecipientOutcome],
    ) -> StoreResult<u64> {
        let _turn = super::sqlite_writer::turn(&self.writer).await?;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        let mut recorded = 0;
        let mut touched = std::collections::BTreeSet::new();
        for o in outcomes {
            let (status, inc, next, route) = outcome_parts(&o.kind);
            let new_status = if status == "deferred" {
                "queued"
            } else {
                status
            };
            let row = sqlx::query(
                "UPDATE queue_recipients SET status = ?1, attempts = attempts + ?2,
                        next_attempt_at = COALESCE(?3, next_attempt_at),
                        route_index = COALESCE(?4, route_index),
                        lease_owner = NULL, lease_until = NULL,
                        last_upstream = COALESCE(?5, last_upstream),
                        last_reply = COALESCE(?6, last_reply), updated_at = ?7
                 WHERE id = ?8 AND lease_owner = ?9 AND status = 'queued'
                 RETURNING message_id, recipient, attempts",
            )
            .bind(new_status)
            .bind(inc)
            .bind(next)
            .bind(route)
            .bind(&o.upstream)
            .bind(&o.reply)
            .bind(now)
            .bind(o.recipient_id)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "queue outcome"))?;
            let Some(row) = row else { continue };
            recorded += 1;
            if status == "delivered" {
                touched.insert(row.get::<String, _>("message_id"));
            }
            if o.log {
                sqlx::query(
                    "INSERT INTO delivery_log (at, message_id, recipient, upstream, outcome, attempt, reply)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .bind(now)
                .bind(row.get::<String, _>("message_id"))
                .bind(row.get::<String, _>("recipient"))
                .bind(&o.upstream)
                .bind(status)
                .bind(row.get::<i64, _>("attempts"))
                .bind(&o.reply)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "delivery log"))?;
            }
        }
        // The common case, every recipient delivered: finish here, saving a
        // transaction. Anything else is finished by `finish_message`.
        for id in &touched {
            sqlx::query(
                "DELETE FROM queue_messages WHERE id = ?1 AND NOT EXISTS
                   (SELECT 1 FROM queue_recipients WHERE message_id = ?1 AND status <> 'delivered')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        }
        tx.commit().await.map_err(|e| map_sqlx(e, "queue"))?;
        Ok(recorded)
    }

    async fn final_recipients(&self, id: &str) -> StoreResult<Option<Vec<FinalRecipient>>> {
        let rows = sqlx::query(
            "SELECT recipient, notify, orcpt, status, attempts, last_upstream, last_reply
             FROM queue_recipients WHERE message_id = ?1 ORDER BY id",
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
                    attempts: u32_of(r.get("attempts")),
                    last_upstream: r.get("last_upstream"),
                    last_reply: r.get("last_reply"),
                })
                .collect(),
        ))
    }

    async fn finish_message(
        &self,
        id: &str,
        now: i64,
        dsn: Option<&NewMessage>,
    ) -> StoreResult<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        let (total, queued): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(status = 'queued'), 0) FROM queue_recipients
             WHERE message_id = ?1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "queue"))?;
        if total == 0 || queued > 0 {
            tx.rollback().await.map_err(|e| map_sqlx(e, "queue"))?;
            return Ok(false);
        }
        if let Some(dsn) = dsn {
            insert_message(&mut tx, dsn).await?;
            sqlx::query(
                "INSERT INTO delivery_log (at, message_id, recipient, upstream, outcome, attempt, reply)
                 SELECT ?1, message_id, recipient, NULL, 'bounced', attempts, ?2
                 FROM queue_recipients WHERE message_id = ?3 AND status IN ('failed', 'expired')",
            )
            .bind(now)
            .bind(format!("DSN {}", dsn.id))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "delivery log"))?;
        }
        sqlx::query("DELETE FROM queue_messages WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        tx.commit().await.map_err(|e| map_sqlx(e, "queue"))?;
        Ok(true)
    }

    async fn enqueue_notice(&self, notice: &NewMessage, delay_warned: &[i64]) -> StoreResult<bool> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        if !delay_warned.is_empty() {
            let ids = format!(
                "[{}]",
                delay_warned
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let marked = sqlx::query(
                "UPDATE queue_recipients SET delay_warned = 1
                 WHERE id IN (SELECT value FROM json_each(?1)) AND NOT delay_warned",
            )
            .bind(ids)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "queue"))?
            .rows_affected();
            if marked == 0 {
                tx.rollback().await.map_err(|e| map_sqlx(e, "queue"))?;
                return Ok(false);
            }
        }
        insert_message(&mut tx, notice).await?;
        tx.commit().await.map_err(|e| map_sqlx(e, "queue"))?;
        Ok(true)
    }

    async fn unfinished_messages(&self, limit: u32) -> StoreResult<Vec<ClaimedMessage>> {
        let rows = sqlx::query(
            "SELECT id, sender, user_id, username, envid, dsn_ret, is_dsn, smtputf8, size,
                    received_at, expires_at
             FROM queue_messages m
             WHERE NOT EXISTS (SELECT 1 FROM queue_recipients r
                               WHERE r.message_id = m.id AND r.status = 'queued')
             ORDER BY received_at, id LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "queue"))?;
        Ok(rows.iter().map(message_of).collect())
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
        // One write transaction; the ids go in chunks well under SQLite's
        // bound-parameter limit.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "queue lease"))?;
        let mut renewed = 0;
        for chunk in recipient_ids.chunks(500) {
            let ids: Vec<String> = (3..chunk.len() + 3).map(|i| format!("?{i}")).collect();
            let ids = ids.join(",");
            let sql = format!(
                "UPDATE queue_recipients SET lease_until = ?1
                 WHERE lease_owner = ?2 AND status = 'queued' AND id IN ({ids})"
            );
            let mut q = sqlx::query(&sql)
                .bind(now.saturating_add(lease_ms))
                .bind(owner);
            for id in chunk {
                q = q.bind(id);
            }
            renewed += q
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "queue lease"))?
                .rows_affected();
        }
        tx.commit().await.map_err(|e| map_sqlx(e, "queue lease"))?;
        Ok(renewed)
    }

    async fn reclaim_expired(&self, now: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            // The owner stays: a late outcome of the last holder still
            // counts until another holder claims the recipient (issue 13).
            "UPDATE queue_recipients SET lease_until = NULL, updated_at = ?1
             WHERE status = 'queued' AND lease_until IS NOT NULL AND lease_until <= ?1",
        )
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "queue"))?;
        Ok(done.rows_affected())
    }

    async fn prune_delivery_log(&self, before: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM delivery_log WHERE at < ?1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "delivery log"))?;
        Ok(done.rows_affected())
    }

    async fn queue_stats(&self, now: i64) -> StoreResult<QueueSummary> {
        let row = sqlx::query(QUEUE_STATS_SQL)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        Ok(queue_summary(now, row.get(0), row.get(1)))
    }

    async fn queue_list(&self, limit: u32) -> StoreResult<Vec<QueueEntry>> {
        let rows = sqlx::query(&format!("{LIST_SQL} ORDER BY m.received_at, m.id LIMIT ?1"))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        Ok(rows.iter().map(entry_of).collect())
    }

    async fn queue_show(&self, id: &str) -> StoreResult<QueueDetail> {
        let row = sqlx::query(&format!("{LIST_SQL} WHERE m.id = ?1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx(e, "queue"))?
            .ok_or_else(|| StoreError::NotFound(format!("queued message {id:?}")))?;
        let recipients = sqlx::query(
            "SELECT recipient, status, attempts, next_attempt_at, route_index, lease_owner,
                    lease_until, last_upstream, last_reply, held
             FROM queue_recipients WHERE message_id = ?1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "queue"))?;
        let log = sqlx::query(
            "SELECT at, recipient, upstream, outcome, attempt, reply FROM delivery_log
             WHERE message_id = ?1 ORDER BY at, id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "delivery log"))?;
        Ok(QueueDetail {
            entry: entry_of(&row),
            envid: row.get("envid"),
            expires_at: row.get("expires_at"),
            recipients: recipients
                .iter()
                .map(|r| QueueRecipientDetail {
                    address: r.get("recipient"),
                    status: r.get("status"),
                    attempts: u32_of(r.get("attempts")),
                    next_attempt_at: r.get("next_attempt_at"),
                    route_index: u32_of(r.get("route_index")),
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
                    attempt: u32_of(r.get("attempt")),
                    reply: r.get("reply"),
                })
                .collect(),
        })
    }

    async fn queue_retry(&self, id: &str, now: i64) -> StoreResult<u64> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        exists(&mut tx, id).await?;
        let done = sqlx::query(
            "UPDATE queue_recipients SET next_attempt_at = ?1, updated_at = ?1
             WHERE message_id = ?2 AND status = 'queued'",
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        exists(&mut tx, id).await?;
        sqlx::query(
            "INSERT INTO delivery_log (at, message_id, recipient, upstream, outcome, attempt, reply)
             SELECT ?1, message_id, recipient, NULL, 'deleted', attempts, 'deleted by admin'
             FROM queue_recipients WHERE message_id = ?2 AND status = 'queued'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "delivery log"))?;
        sqlx::query("DELETE FROM queue_messages WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "queue"))?;
        tx.commit().await.map_err(|e| map_sqlx(e, "queue"))
    }
}

async fn exists(conn: &mut SqliteConnection, id: &str) -> StoreResult<()> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM queue_messages WHERE id = ?1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, "queue"))?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("queued message {id:?}")))
}

pub(crate) const LIST_SQL: &str = "SELECT m.id, m.sender, m.username, m.size, m.received_at, m.is_dsn,
        m.envid, m.expires_at,
        (SELECT count(*) FROM queue_recipients r WHERE r.message_id = m.id) AS recipients,
        (SELECT count(*) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued') AS pending,
        (SELECT min(next_attempt_at) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued') AS next_at,
        (SELECT count(*) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued' AND r.held = 1) AS held,
        (SELECT max(attempts) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued') AS max_attempts,
        (SELECT max(lease_until) FROM queue_recipients r WHERE r.message_id = m.id AND r.status = 'queued') AS lease_until
     FROM queue_messages m";

pub(crate) fn entry_of(r: &SqliteRow) -> QueueEntry {
    QueueEntry {
        id: r.get("id"),
        sender: r.get("sender"),
        username: r.get("username"),
        size: r.get("size"),
        received_at: r.get("received_at"),
        is_dsn: r.get("is_dsn"),
        recipients: u32_of(r.get("recipients")),
        pending: u32_of(r.get("pending")),
        next_attempt_at: r.get("next_at"),
        held: r.get::<i64, _>("held") > 0,
        attempts: u32_of(r.get::<Option<i64>, _>("max_attempts").unwrap_or(0)),
        lease_until: r.get("lease_until"),
    }
}

/// Depth and oldest `received_at` of the messages with a recipient still
/// queued (the same text on both backends; `COUNT` is 64-bit on both).
pub(crate) const QUEUE_STATS_SQL: &str = "SELECT COUNT(*), MIN(m.received_at) FROM queue_messages m
     WHERE EXISTS (SELECT 1 FROM queue_recipients r
                   WHERE r.message_id = m.id AND r.status = 'queued')";

/// The [`QueueSummary`] of one `QUEUE_STATS_SQL` row read at `now`.
pub(crate) fn queue_summary(now: i64, count: i64, oldest: Option<i64>) -> QueueSummary {
    QueueSummary {
        depth: count.max(0) as u64,
        oldest_age_ms: oldest.map_or(0, |t| (now - t).max(0)),
    }
}
