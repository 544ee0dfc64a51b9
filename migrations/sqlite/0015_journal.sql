-- Issue #17 item 4: journaling copies. A journal copy is queued with the
-- null reverse-path (like a DSN, but is_dsn is 0); it writes no events. The
-- `accepted` trigger (store/events_sqlite.rs) now skips it; drop the old
-- one so that `postgate serve` creates the new one when events are on.
DROP TRIGGER IF EXISTS postgate_events_accepted;
