-- Issue #16: a claim reads the due recipients it takes, in order, from one
-- index, whatever the table statistics say and however long the backlog is.
-- The old index (next_attempt_at only, held rows included) left the
-- planner sorting every due recipient to find the oldest few, or, with
-- statistics taken on a nearly empty queue, joining full scans.
CREATE INDEX queue_recipients_claim ON queue_recipients (next_attempt_at, id)
    WHERE status = 'queued' AND NOT held;
DROP INDEX queue_recipients_due;
-- A claim only changes the lease columns, which no index holds: room on the
-- page lets PostgreSQL write the new version beside the old one (a HOT
-- update) without touching the three indexes. The queue churns constantly,
-- so vacuum it (and refresh its statistics) well before the defaults would.
ALTER TABLE queue_recipients SET (fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE queue_messages SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
