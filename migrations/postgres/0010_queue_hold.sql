-- Issue #14: an operator may hold a message (`postgate queue hold`): its
-- queued recipients keep their state but are never claimed for delivery
-- until released (`postgate queue release`).
ALTER TABLE queue_recipients ADD COLUMN held BOOLEAN NOT NULL DEFAULT false;
