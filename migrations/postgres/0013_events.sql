-- Issue #17: delivery events (an outbox for webhooks) and webhook cursors.
-- Events are written by triggers, so always in the transaction of the state
-- change they describe. The triggers exist only while `[events]` is enabled:
-- `postgate serve` creates or drops them at start (store/events_postgres.rs);
-- the functions below are what they call.
CREATE TABLE delivery_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Id of the writing transaction: readers take only events whose
    -- transaction precedes every one still running, in (tx, id) order, so a
    -- cursor never skips an event that committed late.
    tx          BIGINT  NOT NULL,
    at          BIGINT  NOT NULL,
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
CREATE INDEX delivery_events_order ON delivery_events (tx, id);
CREATE INDEX delivery_events_message ON delivery_events (message_id, id);
CREATE INDEX delivery_events_at ON delivery_events (at);

CREATE TABLE webhook_cursors (
    name        TEXT PRIMARY KEY,
    tx          BIGINT NOT NULL,
    id          BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    -- The node sending for this webhook (one at a time) and until when.
    owner       TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);

-- `accepted`: one per recipient of a submitted message (not of the DSNs
-- postgate generates). Runs after the enqueue statement, which sees its message.
CREATE FUNCTION postgate_event_accepted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_events (tx, at, kind, message_id, recipient, sender, username)
    SELECT pg_current_xact_id()::text::bigint, m.received_at, 'accepted', m.id, NEW.recipient,
           m.sender, m.username
    FROM queue_messages m WHERE m.id = NEW.message_id AND NOT m.is_dsn;
    RETURN NULL;
END $$;

-- Outcomes, from the delivery log row written with them. Sender and user
-- come from the message's `accepted` event (the message row may be deleted
-- by the same statement); a message without one (a DSN) has no events.
CREATE FUNCTION postgate_event_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.outcome = 'bounced' THEN
        RETURN NULL;
    END IF;
    INSERT INTO delivery_events (tx, at, kind, message_id, recipient, sender, username, upstream,
                                 attempt, reply)
    SELECT pg_current_xact_id()::text::bigint, NEW.at,
           CASE NEW.outcome WHEN 'failed' THEN 'bounced' ELSE NEW.outcome END,
           NEW.message_id, NEW.recipient, a.sender, a.username, NEW.upstream, NEW.attempt,
           NEW.reply
    FROM (SELECT sender, username FROM delivery_events
          WHERE message_id = NEW.message_id AND kind = 'accepted' ORDER BY id LIMIT 1) a;
    RETURN NULL;
END $$;
