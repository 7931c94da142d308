-- A round its job did not count (every leg refused at admission, or a shutdown before the
-- first: the job queued again under the same attempt number) was recorded as a round that
-- did not ring, and the real round under that callback and attempt number was then not
-- recorded at all (guard_round_ended: ON CONFLICT DO NOTHING). QueueStore.finish records
-- no such round any more; this drops the ones recorded before, so a job queued behind one
-- has its real round recorded. Such a row never rang and its job's attempts are still
-- below its number (a counted round sets them in the transaction that records it). A row
-- that did not ring counts in none of the guard's rules, so one dropped here at worst
-- (a round whose lease was lost before its job was rescued) loses nothing they read.
DELETE FROM guard_rounds r
USING callback_requests c
WHERE c.callback_id = r.callback_id
  AND r.attempt_no > c.attempts
  AND NOT r.rang AND NOT r.confirmed;
