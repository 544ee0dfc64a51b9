//! The queue on PostgreSQL. Concurrent enqueues are independent transactions
//! that PostgreSQL group-commits by itself; claims use `FOR UPDATE SKIP
//! LOCKED` so any number of nodes share the queue without blocking each other.
//! Enqueue, claim and outcome recording are each ONE statement (data-modifying
//! CTEs) run as its own transaction: one round trip and one commit, no
//! BEGIN/COMMIT round trips (issue #4's throughput: statements and round trips
//! per message were the PostgreSQL path's main cost).

use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use super::postgres::PgStore;
use super::sql_queue::{group_claims, message_of};
use super::*;

/// Inserts message and recipients in ONE statement (a data-modifying CTE):
/// on the pool it is its own transaction, so an enqueue costs one round trip
/// and one commit instead of BEGIN, two INSERTs and COMMIT; inside a caller's
/// transaction (a DSN) it is one statement of it.
pub(crate) async fn insert_message<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    m: &NewMessage,
) -> StoreResult<()> {
    if m.recipients.is_empty() {
        return Err(StoreError::Invalid("a message needs a recipient".into()));
    }
    let addresses: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
    let notify: Vec<Option<&str>> = m.recipients.iter().map(|r| r.notify.as_deref()).collect();
    let orcpt: Vec<Option<&str>> = m.recipients.iter().map(|r| r.orcpt.as_deref()).collect();
    // The recipients' foreign key is checked at the end of the statement, when
    // the message row of the CTE is visible; ORDER BY keeps their ids in the
    // order given (DSNs and `queue show` list recipients by id).
    sqlx::query(
        "WITH m AS (
             INSERT INTO queue_messages (id, sender, user_id, username, credential, size, body,
                    envid, dsn_ret, is_dsn, smtputf8, received_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             RETURNING id, received_at)
         INSERT INTO queue_recipients (message_id, recipient, notify, orcpt, next_attempt_at)
         SELECT m.id, t.r, t.n, t.o, m.received_at
         FROM m, unnest($14::TEXT[], $15::TEXT[], $16::TEXT[]) WITH ORDINALITY AS t(r, n, o, i)
         ORDER BY t.i",
    )
    .bind(&m.id)
    .bind(&m.sender)
    .bind(m.user_id)
    .bind(&m.username)
    .bind(&m.credential)
    .bind(m.body.len() as i64)
    .bind(&m.body[..])
    .bind(&m.envid)
    .bind(&m.dsn_ret)
    .bind(m.is_dsn)
    .bind(m.smtputf8)
    .bind(m.received_at)
    .bind(m.expires_at)
    .bind(&addresses)
    .bind(&notify)
    .bind(&orcpt)
    .execute(exec)
    .await
    .map_err(|e| map_sqlx(e, "queued message"))?;
    Ok(())
}

fn u32_of(v: i32) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(0)
}

fn outcome_parts(kind: &OutcomeKind) -> (&'static str, i32, Option<i64>, Option<i32>) {
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
            i32::from(*count_attempt),
            Some(*next_attempt_at),
            Some(i32::try_from(*route_index).unwrap_or(0)),
        ),
    }
}

/// `$1`/`$2`/`$3`/`$4`: sender pattern, username, recipient pattern,
/// received-before; NULL matches everything. A pattern starting with `@`
/// matches the address's domain part, anything else the whole address.
const SELECT_WHERE: &str = " WHERE ($1::text IS NULL OR lower(m.sender) = $1
        OR (left($1, 1) = '@' AND right(lower(m.sender), length($1)) = $1))
   AND ($2::text IS NULL OR m.username = $2)
   AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM queue_recipients x WHERE x.message_id = m.id
        AND (lower(x.recipient) = $3
             OR (left($3, 1) = '@' AND right(lower(x.recipient), length($3)) = $3))))
   AND ($4::bigint IS NULL OR m.received_at <= $4)
 ORDER BY m.received_at, m.id";

super::sql_queue::queue_store!(PgStore, PgConnection, u32_of, insert_message);
super::sql_queue::queue_admin_store!(PgStore, SELECT_WHERE);

impl PgStore {
    async fn enqueue(&self, m: &NewMessage) -> StoreResult<()> {
        // One statement on the pool: its own transaction, committed (WAL
        // flushed, synchronous_commit) before this returns and the 250 goes out.
        insert_message(&self.pool, m).await
    }

    async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        // One statement, its own short transaction. A claim takes whole
        // messages, so a message goes to an upstream in one transaction with
        // all its due recipients: `due` locks the messages of the oldest due
        // recipients (messages another claimer holds are skipped; FOR NO KEY
        // UPDATE does not block the foreign-key checks of enqueues), and
        // `claimed` leases every due recipient of those messages. A recipient
        // another claimer leased since this statement's snapshot fails the
        // re-checked WHERE and is left alone. A small body comes once per
        // message (on its first row).
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT m.id FROM queue_recipients r JOIN queue_messages m ON m.id = r.message_id
                 WHERE r.status = 'queued' AND r.next_attempt_at <= $1 AND NOT r.held
                   AND (r.lease_until IS NULL OR r.lease_until <= $1)
                 ORDER BY r.next_attempt_at, r.id LIMIT $2
                 FOR NO KEY UPDATE OF m SKIP LOCKED),
             claimed AS (
                 UPDATE queue_recipients r SET lease_owner = $3, lease_until = $4, updated_at = $1
                 WHERE r.message_id IN (SELECT id FROM due)
                   AND r.status = 'queued' AND r.next_attempt_at <= $1 AND NOT r.held
                   AND (r.lease_until IS NULL OR r.lease_until <= $1)
                 RETURNING r.id, r.message_id, r.recipient, r.notify, r.orcpt, r.attempts,
                           r.route_index, r.delay_warned)
             SELECT c.id AS rid, c.recipient, c.notify, c.orcpt, c.attempts, c.route_index,
                    c.delay_warned,
                    m.id, m.sender, m.user_id, m.username, m.envid, m.dsn_ret, m.is_dsn,
                    m.smtputf8, m.size, m.received_at, m.expires_at,
                    CASE WHEN m.size <= $5
                          AND c.id = min(c.id) OVER (PARTITION BY c.message_id)
                         THEN m.body END AS small_body
             FROM claimed c JOIN queue_messages m ON m.id = c.message_id",
        )
        .bind(now)
        .bind(i64::from(limit))
        .bind(owner)
        .bind(now.saturating_add(lease_ms))
        .bind(CLAIM_BODY_MAX)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "queue claim"))?;
        let mut messages: HashMap<String, ClaimedMessage> = HashMap::new();
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            let mid: String = r.get("id");
            let recipient = ClaimedRecipient {
                id: r.get("rid"),
                address: r.get("recipient"),
                notify: r.get("notify"),
                orcpt: r.get("orcpt"),
                attempts: u32_of(r.get("attempts")),
                route_index: u32_of(r.get("route_index")),
                delay_warned: r.get("delay_warned"),
            };
            match messages.get_mut(&mid) {
                // The row that carries the body (if any) may come second.
                Some(m) if m.body.is_none() => m.body = message_of(r).body,
                Some(_) => {}
                None => {
                    messages.insert(mid.clone(), message_of(r));
                }
            }
            claimed.push((mid, recipient));
        }
        Ok(group_claims(messages, claimed))
    }

    async fn record_outcomes(
        &self,
        owner: &str,
        now: i64,
        outcomes: &[RecipientOutcome],
    ) -> StoreResult<u64> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        // One statement whatever the number of outcomes (arrays through
        // unnest), so one round trip and one commit. `cur` locks the
        // recipients still leased by `owner` (outcomes of a lost lease are
        // ignored); messages whose recipients are now all delivered are
        // deleted (the common case; anything else is finished by
        // `finish_message`), their recipients by the cascade, without first
        // writing a new 'delivered' version of each row; only the others
        // are updated. Every attempt is logged. The sub-statements share
        // one snapshot, so the DELETE counts the recipients delivered now
        // through `cur`, not through their (old) status.
        let mut ids = Vec::with_capacity(outcomes.len());
        let mut kinds = Vec::with_capacity(outcomes.len());
        let mut incs = Vec::with_capacity(outcomes.len());
        let mut nexts = Vec::with_capacity(outcomes.len());
        let mut routes = Vec::with_capacity(outcomes.len());
        let mut upstreams = Vec::with_capacity(outcomes.len());
        let mut replies = Vec::with_capacity(outcomes.len());
        let mut logs = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let (kind, inc, next, route) = outcome_parts(&o.kind);
            ids.push(o.recipient_id);
            kinds.push(kind);
            incs.push(inc);
            nexts.push(next);
            routes.push(route);
            upstreams.push(o.upstream.as_deref());
            replies.push(o.reply.as_deref());
            logs.push(o.log);
        }
        let updated: i64 = sqlx::query_scalar(
            "WITH o AS (
                 SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::INTEGER[], $4::BIGINT[],
                                      $5::INTEGER[], $6::TEXT[], $7::TEXT[], $8::BOOLEAN[])
                          AS o(id, kind, inc, next_at, route, upstream, reply, log)),
             cur AS (
                 SELECT r.id, r.message_id, r.recipient, r.attempts + o.inc AS attempts,
                        o.kind, o.next_at, o.route, o.upstream, o.reply, o.log
                 FROM queue_recipients r JOIN o ON r.id = o.id
                 WHERE r.lease_owner = $10 AND r.status = 'queued'
                 FOR UPDATE OF r),
             finished AS (
                 DELETE FROM queue_messages m
                 WHERE m.id IN (SELECT message_id FROM cur WHERE kind = 'delivered')
                   AND NOT EXISTS (
                       SELECT 1 FROM queue_recipients r
                       WHERE r.message_id = m.id AND r.status <> 'delivered'
                         AND r.id NOT IN (SELECT id FROM cur WHERE kind = 'delivered'))
                 RETURNING m.id),
             upd AS (
                 UPDATE queue_recipients r
                 SET status = CASE WHEN c.kind = 'deferred' THEN 'queued' ELSE c.kind END,
                     attempts = c.attempts,
                     next_attempt_at = COALESCE(c.next_at, r.next_attempt_at),
                     route_index = COALESCE(c.route, r.route_index),
                     lease_owner = NULL, lease_until = NULL,
                     last_upstream = COALESCE(c.upstream, r.last_upstream),
                     last_reply = COALESCE(c.reply, r.last_reply), updated_at = $9
                 FROM cur c
                 WHERE r.id = c.id AND c.message_id NOT IN (SELECT id FROM finished)),
             logged AS (
                 INSERT INTO delivery_log (at, message_id, recipient, upstream, outcome, attempt,
                                           reply)
                 SELECT $9, message_id, recipient, upstream, kind, attempts, reply
                 FROM cur WHERE log ORDER BY id)
             SELECT count(*) FROM cur",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(&incs)
        .bind(&nexts)
        .bind(&routes)
        .bind(&upstreams)
        .bind(&replies)
        .bind(&logs)
        .bind(now)
        .bind(owner)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "queue outcome"))?;
        Ok(u64::try_from(updated).unwrap_or(0))
    }

    async fn finish_message(
        &self,
        id: &str,
        now: i64,
        dsn: Option<&NewMessage>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| map_sqlx(e, "queue"))?;
        // Lock the message row: of two finishers, the second waits and then
        // finds the message gone, so a DSN is never enqueued twice.
        let locked: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM queue_messages WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "queue"))?;
        if locked.is_none() {
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

    /// Sets `delay_warned` on the recipients `ids` not yet warned; returns how many.
    async fn mark_delay_warned(conn: &mut PgConnection, ids: &[i64]) -> StoreResult<u64> {
        Ok(sqlx::query(
            "UPDATE queue_recipients SET delay_warned = TRUE
             WHERE id = ANY($1) AND NOT delay_warned",
        )
        .bind(ids)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, "queue"))?
        .rows_affected())
    }

    async fn renew_leases(
        &self,
        owner: &str,
        recipient_ids: &[i64],
        now: i64,
        lease_ms: i64,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE queue_recipients SET lease_until = $1
             WHERE id = ANY($2) AND lease_owner = $3 AND status = 'queued'",
        )
        .bind(now.saturating_add(lease_ms))
        .bind(recipient_ids)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "queue lease"))?;
        Ok(done.rows_affected())
    }
}
