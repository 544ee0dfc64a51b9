//! The queue on SQLite. Enqueues go through the group-commit writer task
//! of `sqlite_writer.rs`; everything else runs on the pool, the writes of
//! the delivery path under the store's `WriteGate` (see `sqlite.rs`).

use sqlx::{Row, SqliteConnection};

use super::sql_queue::{group_claims, message_of, recipient_of};
use super::sqlite::SqliteStore;
use super::sqlite_writer::insert_message;
use super::*;

fn u32_of(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
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

super::sql_queue::queue_store!(SqliteStore, SqliteConnection, u32_of, insert_message);
super::sql_queue::queue_admin_store!(SqliteStore, SELECT_WHERE);

impl SqliteStore {
    async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        // Most polls find nothing due: a read (no write lock, no wait for
        // one, nothing for enqueues to wait behind) says so.
        let due: Vec<i64> = sqlx::query_scalar(
            "SELECT 1 FROM queue_recipients
             WHERE status = 'queued' AND next_attempt_at <= ?1 AND held = 0
               AND (lease_until IS NULL OR lease_until <= ?1)
             LIMIT 1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "queue claim"))?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let _held = self.write_gate.turn().await;
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
            .map(|r| (r.get("message_id"), recipient_of(r, "id", u32_of)))
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

    async fn record_outcomes(
        &self,
        owner: &str,
        now: i64,
        outcomes: &[RecipientOutcome],
    ) -> StoreResult<u64> {
        let _held = self.write_gate.urgent_turn().await;
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

    /// `IN` a set of ids bound as `$1` ([`Self::id_list`]).
    const IN_ID_LIST: &str = "IN (SELECT value FROM json_each($1))";

    /// The ids as a JSON array.
    fn id_list(ids: &[i64]) -> String {
        format!(
            "[{}]",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        )
    }

    /// Nothing to lock: the write transaction (`BEGIN IMMEDIATE`) already
    /// excludes other finishers.
    async fn lock_message(_: &mut SqliteConnection, _: &str) -> StoreResult<bool> {
        Ok(true)
    }

    async fn renew_leases_until(&self, owner: &str, ids: &[i64], until: i64) -> StoreResult<u64> {
        // One write transaction; the ids go in chunks well under SQLite's
        // bound-parameter limit.
        let _held = self.write_gate.turn().await;
        let mut tx = self
            .begin_write()
            .await
            .map_err(|e| map_sqlx(e, "queue lease"))?;
        let mut renewed = 0;
        for chunk in ids.chunks(500) {
            let ids: Vec<String> = (3..chunk.len() + 3).map(|i| format!("?{i}")).collect();
            let ids = ids.join(",");
            let sql = format!(
                "UPDATE queue_recipients SET lease_until = ?1
                 WHERE lease_owner = ?2 AND status = 'queued' AND id IN ({ids})"
            );
            let mut q = sqlx::query(&sql).bind(until).bind(owner);
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

    /// Drops expired leases (see `QueueStore::reclaim_expired`).
    pub(crate) async fn reclaim_expired(&self, now: i64) -> StoreResult<u64> {
        let _held = self.write_gate.turn().await;
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
}
