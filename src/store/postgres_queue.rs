//! The queue on PostgreSQL. Enqueues are group-committed by a writer task
//! (`postgres_writer.rs`): every enqueue waiting at that moment goes in one
//! statement and one commit. Claims use `FOR UPDATE SKIP LOCKED` so any
//! number of nodes share the queue without blocking each other. Enqueue,
//! claim and outcome recording are each ONE statement (data-modifying CTEs;
//! issue #4's throughput: statements and round trips per message were the
//! PostgreSQL path's main cost). An enqueue group is its own transaction,
//! one round trip and one commit; outcomes and claims add BEGIN with one
//! `SET LOCAL` and COMMIT: outcomes use a cached generic plan instead of
//! planning each call, and a claim's plan cannot fall back to sorting the
//! backlog (`enable_sort = off`, issue #16).

use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use super::postgres::PgStore;
use super::sql_queue::{group_claims, message_of, recipient_of};
use super::*;

/// Inserts `m` (and its journal copy) in ONE statement; see [`insert_messages`].
pub(crate) async fn insert_message<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    m: &NewMessage,
) -> StoreResult<()> {
    insert_messages(exec, &[m]).await
}

/// Inserts `messages`, their journal copies and all their recipients in ONE
/// statement (a data-modifying CTE over arrays): on the pool it is its own
/// transaction, so a group commit of any size costs one round trip and one
/// commit; inside a caller's transaction (a DSN) it is one statement of it.
pub(crate) async fn insert_messages<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    messages: &[&NewMessage],
) -> StoreResult<()> {
    if messages.iter().any(|m| lacks_recipient(m)) {
        return Err(StoreError::Invalid("a message needs a recipient".into()));
    }
    insert_messages_sql(exec, messages)
        .await
        .map_err(|e| map_sqlx(e, "queued message"))
}

/// Whether `m` or its journal copy has no recipient (the statement below
/// would store it without one).
pub(crate) fn lacks_recipient(m: &NewMessage) -> bool {
    m.recipients.is_empty() || m.journal.as_ref().is_some_and(|j| j.recipients.is_empty())
}

/// The statement of [`insert_messages`], its error as the driver gave it
/// (the group-commit writer tells the database's refusals from a lost
/// connection). Callers first refuse messages that [`lacks_recipient`].
pub(crate) async fn insert_messages_sql<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    messages: &[&NewMessage],
) -> Result<(), sqlx::Error> {
    let mut all: Vec<&NewMessage> = Vec::with_capacity(messages.len());
    for m in messages {
        all.push(m);
        // Its journal copy, in the same statement (never one alone).
        all.extend(m.journal.as_deref());
    }
    let column = |f: fn(&NewMessage) -> Option<&str>| -> Vec<Option<&str>> {
        all.iter().map(|m| f(m)).collect()
    };
    let (ids, senders) = (column(|m| Some(&m.id)), column(|m| Some(&m.sender)));
    let (usernames, credentials) = (
        column(|m| m.username.as_deref()),
        column(|m| m.credential.as_deref()),
    );
    let (envids, rets) = (
        column(|m| m.envid.as_deref()),
        column(|m| m.dsn_ret.as_deref()),
    );
    let user_ids: Vec<Option<i64>> = all.iter().map(|m| m.user_id).collect();
    let sizes: Vec<i64> = all.iter().map(|m| m.body.len() as i64).collect();
    let bodies: Vec<&[u8]> = all.iter().map(|m| &m.body[..]).collect();
    let is_dsn: Vec<bool> = all.iter().map(|m| m.is_dsn).collect();
    let smtputf8: Vec<bool> = all.iter().map(|m| m.smtputf8).collect();
    let received: Vec<i64> = all.iter().map(|m| m.received_at).collect();
    let expires: Vec<i64> = all.iter().map(|m| m.expires_at).collect();
    let recipients = all
        .iter()
        .flat_map(|m| m.recipients.iter().map(move |r| (*m, r)));
    let (mut r_ids, mut r_addresses, mut r_notify, mut r_orcpt, mut r_due) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (m, r) in recipients {
        r_ids.push(m.id.as_str());
        r_addresses.push(r.address.as_str());
        r_notify.push(r.notify.as_deref());
        r_orcpt.push(r.orcpt.as_deref());
        r_due.push(m.received_at);
    }
    // The recipients' foreign key is checked at the end of the statement,
    // when the message rows of the CTE are visible; ORDER BY keeps their ids
    // in the order given (DSNs and `queue show` list recipients by id).
    sqlx::query(
        "WITH m AS (
             INSERT INTO queue_messages (id, sender, user_id, username, credential, size, body,
                                         envid, dsn_ret, is_dsn, smtputf8, received_at, expires_at)
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[],
                                  $6::BIGINT[], $7::BYTEA[], $8::TEXT[], $9::TEXT[],
                                  $10::BOOLEAN[], $11::BOOLEAN[], $12::BIGINT[], $13::BIGINT[]))
         INSERT INTO queue_recipients (message_id, recipient, notify, orcpt, next_attempt_at)
         SELECT t.m, t.r, t.n, t.o, t.due
         FROM unnest($14::TEXT[], $15::TEXT[], $16::TEXT[], $17::TEXT[], $18::BIGINT[])
              WITH ORDINALITY AS t(m, r, n, o, due, i)
         ORDER BY t.i",
    )
    .bind(&ids)
    .bind(&senders)
    .bind(&user_ids)
    .bind(&usernames)
    .bind(&credentials)
    .bind(&sizes)
    .bind(&bodies)
    .bind(&envids)
    .bind(&rets)
    .bind(&is_dsn)
    .bind(&smtputf8)
    .bind(&received)
    .bind(&expires)
    .bind(&r_ids)
    .bind(&r_addresses)
    .bind(&r_notify)
    .bind(&r_orcpt)
    .bind(&r_due)
    .execute(exec)
    .await?;
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
    async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<ClaimedMessage>> {
        // A claim takes whole messages, so a message goes to an upstream in
        // one transaction with all its due recipients. Its cost must not
        // depend on the backlog or on table statistics (issue #16: with
        // statistics taken on a nearly empty queue the old statement became
        // a nested loop over full scans, seconds per claim):
        // - `due` walks `queue_recipients_claim` in (next_attempt_at, id)
        //   order and stops after `limit` recipients whose message it could
        //   lock; a LATERAL subquery that locks cannot be turned into a join,
        //   so it is one primary-key probe per row (here and at the end), and
        //   `enable_sort = off` (this transaction only) keeps the planner from
        //   sorting every due recipient instead of reading the index in order;
        // - `take` adds the other due recipients of those messages through
        //   `queue_recipients_message` (its conditions are written so that the
        //   claim index cannot serve them);
        // - every lock is SKIP LOCKED, so a claim never waits and can never
        //   be part of a deadlock (messages or recipients another claimer or
        //   an outcome holds are left for the next claim).
        // A recipient leased by another claimer since this statement's
        // snapshot fails the re-checked conditions and is left alone. A small
        // body comes once per message (on its first row).
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL enable_sort = off")
            .await
            .map_err(|e| map_sqlx(e, "queue claim"))?;
        let rows = sqlx::query(
            "WITH due AS MATERIALIZED (
                 SELECT m.id FROM (
                     SELECT r.message_id FROM queue_recipients r
                     WHERE r.status = 'queued' AND NOT r.held AND r.next_attempt_at <= $1
                       AND (r.lease_until IS NULL OR r.lease_until <= $1)
                     ORDER BY r.next_attempt_at, r.id) r
                 CROSS JOIN LATERAL (
                     SELECT m.id FROM queue_messages m WHERE m.id = r.message_id
                     FOR NO KEY UPDATE SKIP LOCKED) m
                 LIMIT $2),
             take AS MATERIALIZED (
                 SELECT t.id FROM (SELECT DISTINCT id FROM due) d CROSS JOIN LATERAL (
                     SELECT r.id FROM queue_recipients r
                     WHERE r.message_id = d.id AND r.status = 'queued' AND r.held IS NOT TRUE
                       AND r.next_attempt_at - $1 <= 0
                       AND (r.lease_until IS NULL OR r.lease_until <= $1)
                     FOR NO KEY UPDATE SKIP LOCKED) t),
             claimed AS (
                 UPDATE queue_recipients r SET lease_owner = $3, lease_until = $4, updated_at = $1
                 FROM take t WHERE r.id = t.id
                 RETURNING r.id, r.message_id, r.recipient, r.notify, r.orcpt, r.attempts,
                           r.route_index, r.delay_warned)
             SELECT c.id AS rid, c.recipient, c.notify, c.orcpt, c.attempts, c.route_index,
                    c.delay_warned, m.*
             FROM claimed c CROSS JOIN LATERAL (
                 SELECT m.id, m.sender, m.user_id, m.username, m.envid, m.dsn_ret, m.is_dsn,
                        m.smtputf8, m.size, m.received_at, m.expires_at,
                        CASE WHEN m.size <= $5 AND NOT EXISTS (
                                 SELECT 1 FROM claimed o
                                 WHERE o.message_id = c.message_id AND o.id < c.id)
                             THEN m.body END AS small_body
                 FROM queue_messages m WHERE m.id = c.message_id
                 FOR NO KEY UPDATE) m",
        )
        .bind(now)
        .bind(i64::from(limit))
        .bind(owner)
        .bind(now.saturating_add(lease_ms))
        .bind(CLAIM_BODY_MAX)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "queue claim"))?;
        tx.commit().await.map_err(|e| map_sqlx(e, "queue claim"))?;
        let mut messages: HashMap<String, ClaimedMessage> = HashMap::new();
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            let mid: String = r.get("id");
            let recipient = recipient_of(r, "rid", u32_of);
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
        // unnest), so one commit (and one plan, see below). Locks are taken in the
        // one order every writer of the queue uses (issue #16: a claim locked
        // messages then recipients, this statement recipients then messages,
        // and the two deadlocked): `msgs` locks the messages of these
        // recipients in id order, then `cur` the recipients still leased by
        // `owner`, in id order (outcomes of a lost lease are ignored).
        // Messages whose recipients are now all delivered are deleted (the
        // common case; anything else is finished by `finish_message`), their
        // recipients by the cascade, without first writing a new 'delivered'
        // version of each row; only the others are updated. Every attempt is
        // logged. The sub-statements share one snapshot, so the DELETE counts
        // the recipients delivered now through `cur`, not through their (old)
        // status. Lookups are scalar subqueries or LATERAL subqueries that
        // lock (neither can be turned into a join over a full scan), so every
        // step is a primary-key probe whatever the statistics say.
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
        // Every step is a primary-key probe, so the plan does not depend on
        // the values; but PostgreSQL's default (`plan_cache_mode = auto`)
        // kept planning this statement afresh on every call (its generic
        // plan is estimated dearer than the custom ones), and planning took
        // 0.7 ms against 0.6 ms of execution for 7 outcomes. The cached
        // generic plan runs as fast; two more round trips cost far less.
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
            .await
            .map_err(|e| map_sqlx(e, "queue outcome"))?;
        let updated: i64 = sqlx::query_scalar(
            "WITH o AS (
                 SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::INTEGER[], $4::BIGINT[],
                                      $5::INTEGER[], $6::TEXT[], $7::TEXT[], $8::BOOLEAN[])
                          AS o(id, kind, inc, next_at, route, upstream, reply, log)),
             msgs AS MATERIALIZED (
                 SELECT m.id FROM (
                     SELECT DISTINCT (SELECT r.message_id FROM queue_recipients r
                                      WHERE r.id = o.id) AS message_id
                     FROM o ORDER BY 1) x
                 CROSS JOIN LATERAL (
                     SELECT m.id FROM queue_messages m WHERE m.id = x.message_id
                     FOR UPDATE) m),
             cur AS MATERIALIZED (
                 SELECT r.id, r.message_id, r.recipient, r.attempts + o.inc AS attempts,
                        o.kind, o.next_at, o.route, o.upstream, o.reply, o.log
                 FROM (SELECT * FROM o ORDER BY id) o CROSS JOIN LATERAL (
                     SELECT r.id, r.message_id, r.recipient, r.attempts
                     FROM queue_recipients r
                     WHERE r.id = o.id AND r.lease_owner = $10 AND r.status = 'queued'
                       AND r.message_id IN (SELECT id FROM msgs)
                     FOR UPDATE) r),
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
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "queue outcome"))?;
        tx.commit()
            .await
            .map_err(|e| map_sqlx(e, "queue outcome"))?;
        Ok(u64::try_from(updated).unwrap_or(0))
    }

    /// `IN` a set of ids bound as `$1` ([`Self::id_list`]).
    const IN_ID_LIST: &str = "= ANY($1)";

    fn id_list(ids: &[i64]) -> &[i64] {
        ids
    }

    /// Locks message `id` for finishing; `false` when it is gone. Of two
    /// finishers the second waits and then finds the message gone, so a DSN
    /// is never enqueued twice.
    async fn lock_message(conn: &mut PgConnection, id: &str) -> StoreResult<bool> {
        let locked: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM queue_messages WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| map_sqlx(e, "queue"))?;
        Ok(locked.is_some())
    }

    async fn renew_leases_until(&self, owner: &str, ids: &[i64], until: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            // SKIP LOCKED: a recipient locked now is being recorded or taken
            // over; renewing it is moot, and waiting could close a deadlock.
            "UPDATE queue_recipients r SET lease_until = $1
             FROM (SELECT id FROM queue_recipients
                   WHERE id = ANY($2) AND lease_owner = $3 AND status = 'queued'
                   ORDER BY id FOR NO KEY UPDATE SKIP LOCKED) l
             WHERE r.id = l.id",
        )
        .bind(until)
        .bind(ids)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "queue lease"))?;
        Ok(done.rows_affected())
    }

    /// Drops expired leases (see `QueueStore::reclaim_expired`).
    pub(crate) async fn reclaim_expired(&self, now: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            // The owner stays: a late outcome of the last holder still
            // counts until another holder claims the recipient (issue 13).
            // SKIP LOCKED: a locked row is being claimed or recorded, which
            // settles its lease anyway; the reclaimer never waits.
            "UPDATE queue_recipients r SET lease_until = NULL, updated_at = $1
             FROM (SELECT id FROM queue_recipients
                   WHERE status = 'queued' AND lease_until IS NOT NULL AND lease_until <= $1
                   ORDER BY id FOR NO KEY UPDATE SKIP LOCKED) l
             WHERE r.id = l.id",
        )
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "queue"))?;
        Ok(done.rows_affected())
    }
}
