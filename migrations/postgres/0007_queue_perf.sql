-- Issue #4 (throughput): an enqueue no longer locks its user's `users` row.
-- The foreign key queue_messages.user_id -> users took a FOR KEY SHARE lock
-- on that row in every enqueue; concurrent sessions of one user (the usual
-- case for an application account) then share it through a MultiXact that
-- is rebuilt on every commit, a write (and WAL) on one hot row per message.
-- user_id is informational (username is stored beside it), so a trigger does
-- what ON DELETE SET NULL did; an enqueue racing the deletion of its user may
-- keep a dangling user_id, which nothing resolves.
ALTER TABLE queue_messages DROP CONSTRAINT queue_messages_user_id_fkey;

CREATE FUNCTION postgate_queue_user_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE queue_messages SET user_id = NULL WHERE user_id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER users_queue_user_deleted AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION postgate_queue_user_deleted();

-- Bodies of a few KB are compressed when stored (TOAST): lz4 costs a
-- fraction of the CPU of the default pglz for a similar ratio on mail.
-- Only new values use it; a server built without lz4 keeps pglz.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE queue_messages ALTER COLUMN body SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'lz4 not available: queue bodies stay compressed with pglz';
END $$;
