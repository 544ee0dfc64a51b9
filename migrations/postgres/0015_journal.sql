-- Issue #17 item 4: journaling copies. A journal copy is queued with the
-- null reverse-path (like a DSN, but is_dsn is false); it is the operator's
-- archive mail, not the user's, so it writes no events: `accepted` (and so
-- every later event, which needs the message's `accepted` one) skips it.
CREATE OR REPLACE FUNCTION postgate_event_accepted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_events (tx, at, kind, message_id, recipient, sender, username)
    SELECT pg_current_xact_id()::text::bigint, m.received_at, 'accepted', m.id, NEW.recipient,
           m.sender, m.username
    FROM queue_messages m WHERE m.id = NEW.message_id AND NOT m.is_dsn AND m.sender <> '';
    RETURN NULL;
END $$;
