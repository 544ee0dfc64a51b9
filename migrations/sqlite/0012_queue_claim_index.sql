-- Issue #16: a claim reads the due recipients it takes, in order, from one
-- index (next_attempt_at, id) that holds only claimable rows, instead of
-- sorting every due recipient to find the oldest few.
CREATE INDEX queue_recipients_claim ON queue_recipients (next_attempt_at, id)
    WHERE status = 'queued' AND held = 0;
DROP INDEX queue_recipients_due;
