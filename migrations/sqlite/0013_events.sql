-- Issue #17: delivery events (an outbox for webhooks) and webhook cursors.
-- Events are written by triggers, so always in the transaction of the state
-- change they describe. The triggers exist only while `[events]` is enabled:
-- `postgate serve` creates or drops them at start (store/events_sqlite.rs).
-- SQLite commits one writer at a time, so ids are in commit order and `tx`
-- is always 0.
CREATE TABLE delivery_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tx          INTEGER NOT NULL DEFAULT 0,
    at          INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('accepted', 'delivered', 'deferred', 'bounced',
                                                 'expired', 'deleted', 'rejected')),
    message_id  TEXT,
    recipient   TEXT,
    sender      TEXT,
    username    TEXT,
    upstream    TEXT,
    attempt     INTEGER NOT NULL DEFAULT 0,
    reply       TEXT,
    rule        TEXT
);
CREATE INDEX delivery_events_message ON delivery_events (message_id, id);
CREATE INDEX delivery_events_at ON delivery_events (at);

CREATE TABLE webhook_cursors (
    name        TEXT PRIMARY KEY,
    tx          INTEGER NOT NULL,
    id          INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    -- The node sending for this webhook (one at a time) and until when.
    owner       TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0
);
