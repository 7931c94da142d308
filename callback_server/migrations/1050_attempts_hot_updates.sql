-- A leg's updates in place (HOT), no index written for them. callback_attempts gets a row
-- a leg and two to four updates (its originate's result, its end; progress, answer with
-- media): each wrote a new entry in each of its four indexes, because `status` is in
-- callback_attempts_live's predicate and no page had room for the new version
-- (pg_waldump over a 20/s control step, bench/README.md: 3.1 index records a call-back in
-- each of them, 0 % of the updates HOT).
--
-- Neither of the two indexes dropped here is read by a query:
-- * callback_attempts_live (carrier_id, partial on leg = 'customer' AND status IN live)
--   dates from the guard's first cap count; the live channels are counted by
--   guard_live since 0600. The only query left that filters on status and carrier,
--   guard.store.cap_snapshot (the operator's `guard status`), filters on
--   leg = ANY(customer, transfer, advisor), which does not imply the predicate: it
--   reads the table (tests/integration/test_attempts_hot_updates.py).
-- * callback_attempts_recent (created_at): the same snapshot's OR arm, which a bitmap
--   OR cannot use without an index for its other arm; the calls a second are counted
--   by guard_cps since 0600.
-- 0 scans of either over a sweep (pg_stat_user_indexes). The constraints stay
-- (callback_attempts_pkey, UNIQUE (callback_id, leg_seq)); no updated column is in them.
--
-- fillfactor 70: room on the leg's own page for its updated versions (a new page's rows;
-- pages already full keep their rows until they are pruned).
DROP INDEX IF EXISTS callback_attempts_live;
DROP INDEX IF EXISTS callback_attempts_recent;
ALTER TABLE callback_attempts SET (fillfactor = 70);
