-- Issue 12 item 11 (RFC 3461 NOTIFY=DELAY): a recipient gets at most one
-- delay warning; set in the transaction that enqueues the warning.
ALTER TABLE queue_recipients ADD COLUMN delay_warned BOOLEAN NOT NULL DEFAULT FALSE;
