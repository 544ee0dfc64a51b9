//! The events outbox on PostgreSQL (see `events.rs`): the statements that
//! differ from SQLite's (`sql_events.rs` runs them). The trigger functions
//! are in migration 0013.

use super::postgres::PgStore;
use super::sql_events::{event_columns, rejected_recipients, EventSql};
use super::*;

/// The first statement of a trigger change: serialises those of nodes
/// starting at the same time (the key is "pgevents" in ASCII).
const INSTALL_LOCK: &str = "SELECT pg_advisory_xact_lock(8099554014031410291)";
const DROP_ACCEPTED: &str = "DROP TRIGGER IF EXISTS postgate_events_accepted ON queue_recipients";
const DROP_OUTCOME: &str = "DROP TRIGGER IF EXISTS postgate_events_outcome ON delivery_log";

const SQL: EventSql = EventSql {
    install: &[
        INSTALL_LOCK,
        DROP_ACCEPTED,
        DROP_OUTCOME,
        "CREATE TRIGGER postgate_events_accepted AFTER INSERT ON queue_recipients
         FOR EACH ROW EXECUTE FUNCTION postgate_event_accepted()",
        "CREATE TRIGGER postgate_events_outcome AFTER INSERT ON delivery_log
         FOR EACH ROW EXECUTE FUNCTION postgate_event_outcome()",
    ],
    uninstall: &[INSTALL_LOCK, DROP_ACCEPTED, DROP_OUTCOME],
    triggers: "SELECT count(*) FROM pg_trigger
               WHERE tgname IN ('postgate_events_accepted', 'postgate_events_outcome')
                 AND tgrelid IN ('queue_recipients'::regclass, 'delivery_log'::regclass)",
    recent: concat!(
        "SELECT * FROM (SELECT ",
        event_columns!(),
        " FROM delivery_events WHERE $1::TEXT IS NULL OR message_id = $1
          ORDER BY tx DESC, id DESC LIMIT $2) e
         ORDER BY tx, id"
    ),
    // Only transactions older than every running one: none of them can
    // still add an event, so nothing appears behind the cursor later.
    after: concat!(
        "SELECT ",
        event_columns!(),
        " FROM delivery_events
          WHERE (tx, id) > ($1, $2)
            AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
          ORDER BY tx, id LIMIT $3"
    ),
    backlog: "SELECT count(*) AS n, min(at) AS oldest FROM delivery_events
              WHERE (tx, id) > ($1, $2)",
};

super::sql_events::event_store!(PgStore, SQL);

impl PgStore {
    /// One `rejected` row a recipient, in one statement.
    async fn event_rejected_insert(&self, r: &NewRejection) -> StoreResult<()> {
        let recipients = rejected_recipients(r);
        sqlx::query(
            "INSERT INTO delivery_events (tx, at, kind, recipient, sender, username, reply, rule)
             SELECT pg_current_xact_id()::text::bigint, $1, 'rejected', t.r, $2, $3, $4, $5
             FROM unnest($6::TEXT[]) WITH ORDINALITY AS t(r, i) ORDER BY t.i",
        )
        .bind(r.at)
        .bind(&r.sender)
        .bind(&r.username)
        .bind(&r.reply)
        .bind(&r.rule)
        .bind(&recipients)
        .execute(&self.pool)
        .await
        .map_err(|e| map_sqlx(e, "event"))?;
        Ok(())
    }
}
