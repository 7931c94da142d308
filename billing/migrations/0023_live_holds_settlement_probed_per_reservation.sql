-- billing_live_holds (0021) as it was (the same rows, the same sums), but whether a
-- reservation is settled is asked of each reservation read (one probe of the settlements'
-- key) instead of an anti-join that the planner may make a hash of the whole settlements
-- table. It did, for every account read, in the plan of a session that first ran its
-- callers once the table held a few thousand rows: the admission read of 100 accounts
-- (billing_admit_and_hold, billing_locked_balances and the ledger's balance reads inline
-- this function) took 22.1-23.7 ms against 1.0-1.4 ms so (EXPLAIN ANALYZE, the generic plan,
-- 5,244 settlements, the bench's database after its run, 2026-12-07 00:15 UTC), and
-- grows with the table. A session's plan is made when it first runs a statement and kept
-- (the billing functions' force_generic_plan): which plan a pooled connection got
-- depended on when it was opened.
CREATE OR REPLACE FUNCTION billing_live_holds(account bigint)
RETURNS TABLE (held_yen bigint, first_id bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(coalesce((SELECT x.held_yen FROM billing_reservation_extensions x
                                  WHERE x.reservation_id = r.id
                                  ORDER BY x.id DESC LIMIT 1), r.held_yen)), 0)::bigint,
           min(r.id)
    FROM billing_reservations r
    WHERE r.account_id = account
      AND r.id >= coalesce((SELECT n.live_from FROM billing_reservations n
                            WHERE n.account_id = account ORDER BY n.id DESC LIMIT 1), 0)
      AND (SELECT s.reservation_id FROM billing_settlements s
           WHERE s.reservation_id = r.id) IS NULL
$$;
