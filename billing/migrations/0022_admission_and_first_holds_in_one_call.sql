-- Admission and the first holds of a batch (billing.admission.ADMIT_AND_HOLD) as one
-- function called in one round trip, outside a transaction (the call is its own
-- transaction, committed when it answers). Until now the statement was sent as
--
--     BEGIN; SET LOCAL plan_cache_mode = force_generic_plan     (one round trip)
--     the statement                                            (one round trip)
--     COMMIT                                                   (one round trip)
--
-- so that it ran its generic plan from its first execution on a connection (the first
-- five are otherwise each planned for the asks' arrays: 8.1-10.2 ms a batch of 100
-- against 4.1-6.2 ms generic). A plpgsql function keeps its statement's plan for the
-- session, and the SET clause below gives it the generic one from the first call: the
-- same plan and the same transaction in one round trip.
--
-- The body is billing.admission.admit_and_hold_sql(HOLD_ASKS), word for word: the asks by
-- their accounts ($1..$8: merchant, account, group, postpaid, price, consultation, the
-- longest first hold, whether to hold). What finds the accounts (the callback site's
-- called numbers through the advisors' customers) stays in the caller's query, which
-- passes the accounts it resolved. tests/unit/test_billing_admit_hold_function.py holds
-- this body equal to the Python one (a change there needs a migration replacing this
-- function), and tests/integration/test_billing_admit_hold.py's property test holds the
-- function equal to the admission then billing.ledger.reserve_all.
CREATE FUNCTION billing_admit_and_hold(text[], text[], bigint[], boolean[], int[], text[],
                                       int[], boolean[])
RETURNS TABLE (n bigint, account text, policy text, group_policy text,
               available_yen bigint, has_card boolean, unpaid bigint, failed bigint,
               held boolean, needed bigint, reservation_id bigint, made boolean,
               hold_available_yen bigint, held_yen bigint, allowed_s int)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH a AS (
    WITH w AS (SELECT k.n, k.merchant_id, k.account AS account, k.group_id, k.postpaid, k.price, k.consultation_id, k.at_most_s, k.hold
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[], $5::int[], $6::text[], $7::int[], $8::bool[])
         WITH ORDINALITY AS k (merchant_id, account, group_id, postpaid, price, consultation_id, at_most_s, hold, n))
    SELECT w.n, w.account, w.merchant_id, w.price, w.consultation_id, w.at_most_s, w.hold, 
           CASE WHEN p.id IS NOT NULL THEN jsonb_build_object('unit_s', p.unit_s, 'grace_s', p.grace_s, 'minimum_yen', p.minimum_yen, 'max_talk_s', p.max_talk_s, 'tax_percent', p.tax_percent)
               END AS policy,
           CASE WHEN g.id IS NOT NULL THEN jsonb_build_object('unit_s', g.unit_s, 'grace_s', g.grace_s, 'minimum_yen', g.minimum_yen, 'max_talk_s', g.max_talk_s, 'tax_percent', g.tax_percent)
               END AS group_policy,
           CASE WHEN NOT w.postpaid AND acct.id IS NOT NULL THEN
               coalesce((SELECT b.balance_after FROM billing_entries b
                            WHERE b.account_id = acct.id AND b.book = 'available'
                            ORDER BY b.id DESC LIMIT 1), 0)
               - (SELECT l.held_yen FROM billing_live_holds(acct.id) l)
               END AS available_yen,
           w.postpaid AND EXISTS (SELECT 1 FROM billing_card_registrations r
                                  JOIN billing_cards cd ON cd.registration_id = r.id
                                  WHERE r.account_id = acct.id) AS has_card,
           s.unpaid, s.failed
    FROM w
    LEFT JOIN billing_accounts acct ON acct.merchant_id = w.merchant_id
                                   AND acct.account = w.account
    LEFT JOIN LATERAL (SELECT * FROM billing_policies
                       WHERE merchant_id = w.merchant_id ORDER BY id DESC LIMIT 1) p ON true
    LEFT JOIN LATERAL (SELECT * FROM billing_group_policies
                       WHERE merchant_id = w.merchant_id AND group_id = w.group_id
                       ORDER BY id DESC LIMIT 1) g ON true
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE state IN ('pending', 'failed')) AS unpaid,
               count(*) FILTER (WHERE state = 'failed') AS failed
        FROM (
    SELECT c.*, a.account, l.attempt, o.outcome, o.payment_intent, o.failure,
           x.how AS closed,
           CASE WHEN x.charge_id IS NOT NULL THEN 'closed'
                WHEN o.outcome IS NULL THEN 'pending'
                WHEN o.outcome = 'succeeded' THEN 'paid' ELSE 'failed' END AS state
    FROM billing_postpaid_charges c
    JOIN billing_accounts a ON a.id = c.account_id
    LEFT JOIN LATERAL (SELECT t.id, t.attempt FROM billing_postpaid_attempts t
                       WHERE t.charge_id = c.id ORDER BY t.attempt DESC LIMIT 1) l ON true
    LEFT JOIN billing_postpaid_outcomes o ON o.attempt_id = l.id
    LEFT JOIN billing_postpaid_closures x ON x.charge_id = c.id WHERE c.account_id = acct.id) s WHERE w.postpaid) s ON true
    ORDER BY w.n),
    t AS (SELECT a.n, a.merchant_id, a.account, a.consultation_id, a.at_most_s,
               a.price AS price_per_minute_yen,
               coalesce((a.group_policy->>'unit_s')::int, (a.policy->>'unit_s')::int, 60) AS unit_s,
               coalesce((a.group_policy->>'grace_s')::int, (a.policy->>'grace_s')::int, 0) AS grace_s,
               coalesce((a.group_policy->>'minimum_yen')::int, (a.policy->>'minimum_yen')::int, 0) AS minimum_yen,
               coalesce((a.group_policy->>'max_talk_s')::int, (a.policy->>'max_talk_s')::int, 10800) AS max_talk_s,
               coalesce((a.group_policy->>'tax_percent')::int, (a.policy->>'tax_percent')::int, 10) AS tax_percent
          FROM a WHERE a.hold),
    k AS (SELECT t.*, CASE WHEN t.grace_s < t.max_talk_s
                           THEN greatest(t.price_per_minute_yen::bigint * t.unit_s / 60,
                                         t.minimum_yen)
                           ELSE 0 END AS needed
          FROM t),
    q AS (SELECT k.*, row_number() OVER (ORDER BY k.n)::int AS h,
                 CASE WHEN k.at_most_s IS NULL THEN k.max_talk_s
                      WHEN k.at_most_s <= 0 THEN 0
                      WHEN k.at_most_s <= k.grace_s THEN least(k.grace_s, k.max_talk_s)
                      ELSE least(k.max_talk_s, k.grace_s + (k.at_most_s - k.grace_s
                                 + k.unit_s - 1) / k.unit_s * k.unit_s) END AS cap,
                 jsonb_build_object('price_per_minute_yen', k.price_per_minute_yen, 'unit_s', k.unit_s, 'grace_s', k.grace_s, 'minimum_yen', k.minimum_yen, 'max_talk_s', k.max_talk_s, 'tax_percent', k.tax_percent)::text AS terms
          FROM k JOIN a USING (n)
          WHERE greatest(coalesce(a.available_yen, 0), 0) >= k.needed),
    r AS (SELECT * FROM billing_reserve_holds(
              ARRAY(SELECT merchant_id FROM q ORDER BY h),
              ARRAY(SELECT account FROM q ORDER BY h),
              ARRAY(SELECT consultation_id FROM q ORDER BY h),
              ARRAY(SELECT terms FROM q ORDER BY h),
              ARRAY(SELECT price_per_minute_yen FROM q ORDER BY h),
              ARRAY(SELECT unit_s FROM q ORDER BY h),
              ARRAY(SELECT grace_s FROM q ORDER BY h),
              ARRAY(SELECT minimum_yen FROM q ORDER BY h),
              ARRAY(SELECT max_talk_s FROM q ORDER BY h),
              ARRAY(SELECT cap FROM q ORDER BY h),
              ARRAY(SELECT needed FROM q ORDER BY h), 'billing'))
    SELECT a.n, a.account, a.policy::text AS policy, a.group_policy::text AS group_policy,
           a.available_yen, a.has_card, a.unpaid, a.failed,
           q.h IS NOT NULL AS held, q.needed, r.reservation_id, r.made,
           r.available_yen AS hold_available_yen, r.held_yen, r.allowed_s
    FROM a LEFT JOIN q USING (n) LEFT JOIN r ON r.n = q.h
    ORDER BY a.n;
END
$$;
