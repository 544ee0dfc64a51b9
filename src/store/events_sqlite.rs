//! The events outbox on SQLite (see `events.rs`): the statements that
//! differ from PostgreSQL's (`sql_events.rs` runs them). One writer at a
//! time, so ids (AUTOINCREMENT: never reused after pruning) are in commit
//! order and `tx` is always 0.

use super::sql_events::{event_columns, rejected_recipients, EventSql};
use super::sqlite::SqliteStore;
use super::*;

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

// `tx` is always 0 here: the reads after a cursor leave its `$1` unused.
const SQL: EventSql = EventSql {
    install: &[ACCEPTED_TRIGGER, OUTCOME_TRIGGER],
    uninstall: &[
        "DROP TRIGGER IF EXISTS postgate_events_accepted",
        "DROP TRIGGER IF EXISTS postgate_events_outcome",
    ],
    triggers: "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'
               AND name IN ('postgate_events_accepted', 'postgate_events_outcome')",
    recent: concat!(
        "SELECT * FROM (SELECT ",
        event_columns!(),
        " FROM delivery_events WHERE $1 IS NULL OR message_id = $1
          ORDER BY id DESC LIMIT $2)
         ORDER BY id"
    ),
    after: concat!(
        "SELECT ",
        event_columns!(),
        " FROM delivery_events WHERE id > $2 ORDER BY id LIMIT $3"
    ),
    backlog: "SELECT count(*) AS n, min(at) AS oldest FROM delivery_events WHERE id > $2",
};

super::sql_events::event_store!(SqliteStore, SQL);

impl SqliteStore {
    /// One `rejected` row a recipient, in one transaction.
    async fn event_rejected_insert(&self, r: &NewRejection) -> StoreResult<()> {
        let recipients = rejected_recipients(r);
        let mut tx = self.begin_write().await.map_err(|e| map_sqlx(e, "event"))?;
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
}
