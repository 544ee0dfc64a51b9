-- Issue #4 (throughput): PostgreSQL's 0007 replaces the foreign key
-- queue_messages.user_id -> users by a trigger (its row lock made
-- concurrent enqueues of one user contend). SQLite has one writer and no
-- row locks, so its foreign key stays; this keeps the versions aligned.
SELECT 1;
