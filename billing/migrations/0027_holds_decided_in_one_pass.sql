-- billing_admit_and_hold (0024) with less work around the same read and the same rule,
-- for the reserve + authorise target (200 asks at once within 10 ms on two cores): on a
-- batch of 100 holds the call cost about 3.8 ms of the backend's CPU, of which the
-- plumbing around the read and the rule was about a quarter:
--  * thirteen ARRAY(SELECT c FROM q ORDER BY h) subqueries, each scanning and sorting the
--    held asks again, are now one aggregate pass (array_agg(... ORDER BY h), one sort:
--    PostgreSQL 16 sorts once for aggregates sharing their ORDER BY);
--  * each hold's terms were built as jsonb, cast to text, passed and parsed back to jsonb
--    per row: they are passed as jsonb;
--  * billing_hold_locked found each ask's account and an earlier grant of the same
--    consultation by array_position over arrays it grew one element at a time (quadratic
--    in the batch, a text built and compared per grant): the statement now passes, per
--    ask, the position of its account's first ask with a balance read (first_h) and of
--    the first ask of the same account and consultation (pair_h), window minimums over
--    the same rows, so the function looks both up by index.
-- billing_hold_locked_once decides exactly as billing_hold_locked (0024) did: the same
-- balances (each account's from its first ask with a balance read, as its first loop
-- registered it), the same order, the same refusals, the same reservation ids in the
-- asks' order, the same rows. The property test (tests/integration/
-- test_billing_admit_hold.py) holds the call equal to the admission then
-- billing.ledger.reserve_all, and tests/unit/test_billing_admit_hold_function.py the body
-- below equal to billing.admission.admit_and_hold_sql(HOLD_ASKS).

CREATE FUNCTION billing_hold_locked_once(account_ids bigint[], made_ids bigint[],
                                         available bigint[], live_froms bigint[],
                                         consultations text[], ask_terms jsonb[],
                                         prices int[], units int[], graces int[],
                                         minimums int[], max_talks int[], caps int[],
                                         needed bigint[], firsts int[], pairs int[])
RETURNS TABLE (n int, reservation_id bigint, made boolean, available_yen bigint,
               held_yen bigint, allowed_s int)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    -- no held ask: the aggregates' arrays are NULL
    asks int := coalesce(cardinality(account_ids), 0);
    refused_at bigint[] := array_fill(0::bigint, ARRAY[asks]);
    grant_of int[] := array_fill(NULL::int, ARRAY[asks]);
    -- av[firsts[i]]: ask i's account's available balance as the batch's holds leave it
    av bigint[] := available;
    -- pair_grant[pairs[i]]: the grant of ask i's account and consultation, once made
    pair_grant int[] := array_fill(NULL::int, ARRAY[asks]);
    -- the holds granted, in the asks' order: ask, yen, seconds, live_from
    granted int := 0;
    g_ask int[] := '{}';
    g_held bigint[] := '{}';
    g_allowed int[] := '{}';
    g_lf bigint[] := '{}';
    ids bigint[];
    i int;
    f int;
    k int;
    a bigint;
    per_unit bigint;
    allowed bigint;
    billed bigint;
    held bigint;
BEGIN
    FOR i IN 1 .. asks LOOP
        CONTINUE WHEN account_ids[i] IS NULL OR available[i] IS NULL
                      OR made_ids[i] IS NOT NULL;
        k := pair_grant[pairs[i]];
        IF k IS NOT NULL THEN                   -- the same consultation again
            grant_of[i] := k;
            CONTINUE;
        END IF;
        f := firsts[i];
        a := av[f];
        IF a < needed[i] THEN
            refused_at[i] := a;
            CONTINUE;
        END IF;
        -- seconds_affordable(a)
        per_unit := prices[i]::bigint * units[i];
        IF graces[i] >= max_talks[i] THEN
            allowed := max_talks[i];
        ELSIF a < minimums[i] THEN
            allowed := graces[i];
        ELSIF per_unit = 0 THEN
            allowed := max_talks[i];
        ELSE    -- floor(per_unit × n / 60) ≤ a  ⟺  per_unit × n < 60 × (a + 1)
            allowed := least(max_talks[i],
                             graces[i] + (60 * (a + 1) - 1) / per_unit * units[i]);
        END IF;
        allowed := least(allowed, caps[i]);
        -- rate(allowed).total_yen (allowed is never past max_talk_s)
        IF allowed <= graces[i] THEN
            held := 0;
        ELSE
            billed := (allowed - graces[i] + units[i] - 1) / units[i] * units[i];
            held := greatest(prices[i] * billed / 60, minimums[i]);
        END IF;
        av[f] := a - held;
        granted := granted + 1;
        g_ask[granted] := i;
        g_held[granted] := held;
        g_allowed[granted] := allowed::int;
        g_lf[granted] := live_froms[f];
        pair_grant[pairs[i]] := granted;
        grant_of[i] := granted;
    END LOOP;
    IF granted > 0 THEN
        -- each hold's reservation id taken in the asks' order; its live_from the account's
        -- lowest live reservation, else the lowest id the batch gives the account
        WITH g AS (SELECT g.h, account_ids[g.ask] AS account_id,
                          consultations[g.ask] AS consultation_id, ask_terms[g.ask] AS terms,
                          g.held_yen, g.allowed_s, g.live_from,
                          nextval('billing_reservations_id_seq') AS reservation_id
                   FROM unnest(g_ask, g_held, g_allowed, g_lf) WITH ORDINALITY
                        AS g (ask, held_yen, allowed_s, live_from, h)),
             res AS (INSERT INTO billing_reservations (id, account_id, consultation_id,
                         terms, held_yen, allowed_s, live_from)
                     OVERRIDING SYSTEM VALUE
                     SELECT reservation_id, account_id, consultation_id, terms,
                            held_yen, allowed_s,
                            coalesce(live_from,
                                     min(reservation_id) OVER (PARTITION BY account_id))
                     FROM g ORDER BY h)
        SELECT array_agg(g.reservation_id ORDER BY g.h) INTO ids FROM g;
    END IF;
    RETURN QUERY
    SELECT x.i, coalesce(made_ids[x.i], ids[grant_of[x.i]]), made_ids[x.i] IS NOT NULL,
           refused_at[x.i], g_held[grant_of[x.i]], g_allowed[grant_of[x.i]]
    FROM generate_series(1, asks) AS x (i);
END $$;

CREATE OR REPLACE FUNCTION billing_admit_and_hold(text[], text[], bigint[], boolean[], int[],
                                                  text[], int[], boolean[])
RETURNS TABLE (n bigint, account text, policy text, group_policy text,
               available_yen bigint, has_card boolean, unpaid bigint, failed bigint,
               held boolean, needed bigint, reservation_id bigint, made boolean,
               hold_available_yen bigint, held_yen bigint, allowed_s int)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM billing_accounts acct
     WHERE (acct.merchant_id, acct.account) IN (SELECT w.merchant_id, w.account
                                                FROM (SELECT k.n, k.merchant_id, k.account AS account, k.group_id, k.postpaid, k.price, k.consultation_id, k.at_most_s, k.hold
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[], $5::int[], $6::text[], $7::int[], $8::bool[])
         WITH ORDINALITY AS k (merchant_id, account, group_id, postpaid, price, consultation_id, at_most_s, hold, n)) w WHERE w.hold)
     ORDER BY acct.id FOR UPDATE;
    RETURN QUERY
    WITH a AS (
    WITH w AS (SELECT k.n, k.merchant_id, k.account AS account, k.group_id, k.postpaid, k.price, k.consultation_id, k.at_most_s, k.hold
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[], $5::int[], $6::text[], $7::int[], $8::bool[])
         WITH ORDINALITY AS k (merchant_id, account, group_id, postpaid, price, consultation_id, at_most_s, hold, n))
    SELECT w.n, w.account, w.merchant_id, w.price, w.consultation_id, w.at_most_s, w.hold, acct.id AS account_id, l.first_id AS live_from,
           CASE WHEN w.hold THEN (SELECT x.id FROM billing_reservations x
                                  WHERE x.account_id = acct.id
                                    AND x.consultation_id = w.consultation_id) END AS made,
           
           CASE WHEN p.id IS NOT NULL THEN jsonb_build_object('unit_s', p.unit_s, 'grace_s', p.grace_s, 'minimum_yen', p.minimum_yen, 'max_talk_s', p.max_talk_s, 'tax_percent', p.tax_percent)
               END AS policy,
           CASE WHEN g.id IS NOT NULL THEN jsonb_build_object('unit_s', g.unit_s, 'grace_s', g.grace_s, 'minimum_yen', g.minimum_yen, 'max_talk_s', g.max_talk_s, 'tax_percent', g.tax_percent)
               END AS group_policy,
           CASE WHEN NOT w.postpaid AND acct.id IS NOT NULL THEN
               coalesce((SELECT b.balance_after FROM billing_entries b
                            WHERE b.account_id = acct.id AND b.book = 'available'
                            ORDER BY b.id DESC LIMIT 1), 0)
               - l.held_yen
               END AS available_yen,
           w.postpaid AND EXISTS (SELECT 1 FROM billing_card_registrations r
                                  JOIN billing_cards cd ON cd.registration_id = r.id
                                  WHERE r.account_id = acct.id) AS has_card,
           s.unpaid, s.failed
    FROM w
    LEFT JOIN billing_accounts acct ON acct.merchant_id = w.merchant_id
                                   AND acct.account = w.account
    LEFT JOIN LATERAL billing_live_holds(acct.id) l ON NOT w.postpaid
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
                 jsonb_build_object('price_per_minute_yen', k.price_per_minute_yen, 'unit_s', k.unit_s, 'grace_s', k.grace_s, 'minimum_yen', k.minimum_yen, 'max_talk_s', k.max_talk_s, 'tax_percent', k.tax_percent) AS terms,
                 a.account_id, a.made, a.available_yen, a.live_from
          FROM k JOIN a USING (n)
          WHERE greatest(coalesce(a.available_yen, 0), 0) >= k.needed),
    o AS (SELECT q.*,
                 min(q.h) FILTER (WHERE q.available_yen IS NOT NULL)
                     OVER (PARTITION BY q.account_id) AS first_h,
                 min(q.h) OVER (PARTITION BY q.account_id, q.consultation_id) AS pair_h
          FROM q),
    x AS (SELECT array_agg(o.account_id ORDER BY o.h) AS account_id,
                  array_agg(o.made ORDER BY o.h) AS made,
                  array_agg(o.available_yen ORDER BY o.h) AS available_yen,
                  array_agg(o.live_from ORDER BY o.h) AS live_from,
                  array_agg(o.consultation_id ORDER BY o.h) AS consultation_id,
                  array_agg(o.terms ORDER BY o.h) AS terms,
                  array_agg(o.price_per_minute_yen ORDER BY o.h) AS price_per_minute_yen,
                  array_agg(o.unit_s ORDER BY o.h) AS unit_s,
                  array_agg(o.grace_s ORDER BY o.h) AS grace_s,
                  array_agg(o.minimum_yen ORDER BY o.h) AS minimum_yen,
                  array_agg(o.max_talk_s ORDER BY o.h) AS max_talk_s,
                  array_agg(o.cap ORDER BY o.h) AS cap,
                  array_agg(o.needed ORDER BY o.h) AS needed,
                  array_agg(o.first_h ORDER BY o.h) AS first_h,
                  array_agg(o.pair_h ORDER BY o.h) AS pair_h FROM o),
    r AS (SELECT r.* FROM x, LATERAL billing_hold_locked_once(account_id, made, available_yen, live_from, consultation_id, terms, price_per_minute_yen, unit_s, grace_s, minimum_yen, max_talk_s, cap, needed, first_h, pair_h) r)
    SELECT a.n, a.account, a.policy::text AS policy, a.group_policy::text AS group_policy,
           a.available_yen, a.has_card, a.unpaid, a.failed,
           q.h IS NOT NULL AS held, q.needed, r.reservation_id, r.made,
           r.available_yen AS hold_available_yen, r.held_yen, r.allowed_s
    FROM a LEFT JOIN q USING (n) LEFT JOIN r ON r.n = q.h
    ORDER BY a.n;
END $$;

-- nothing else calls it
DROP FUNCTION billing_hold_locked(bigint[], bigint[], bigint[], bigint[], text[], text[],
                                  int[], int[], int[], int[], int[], int[], bigint[]);
