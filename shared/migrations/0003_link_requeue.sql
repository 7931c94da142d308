-- Dead letters an operator sent again: when last, and how often. A message the peer
-- refuses for good is parked (dead_at, response_status, response_body, from 0001);
-- Outbox.revive clears dead_at, resets attempts and counts the requeue here, so a
-- message that dies again shows that it was requeued before.

ALTER TABLE outbox ADD COLUMN requeued_at timestamptz,
                   ADD COLUMN requeues integer NOT NULL DEFAULT 0;
