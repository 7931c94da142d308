-- billing_reserve_holds (0019) as it was, but for the write of the holds: each hold's
-- reservation id and, for a hold above 0 yen, its transaction id are taken from their
-- identities' sequences in the asks' order before the inserts (written with OVERRIDING
-- SYSTEM VALUE), so the reservations, the transactions and their legs are all written
-- from the holds' one row each. Before, the transactions were written from a join of the
-- holds to the reservations just inserted, and the legs from a join of the transactions
-- just inserted to that join; PostgreSQL estimated each inserted CTE at one row and
-- joined the transactions to the holds in a nested loop, 100 × 100 comparisons for a
-- batch of 100 (≈ 0.8 ms of the write's ≈ 5 ms by EXPLAIN ANALYZE). The rows written,
-- their ids' order (the asks' order), the rule and the answers are unchanged.
CREATE OR REPLACE FUNCTION billing_reserve_holds(merchants text[], accounts text[],
                                      consultations text[], ask_terms text[], prices int[],
                                      units int[], graces int[], minimums int[],
                                      max_talks int[], caps int[], needed bigint[],
                                      who text)
RETURNS TABLE (n int, reservation_id bigint, made boolean, available_yen bigint,
               held_yen bigint, allowed_s int)
LANGUAGE plpgsql
-- each statement's generic plan from the first call on a connection: the first five would
-- otherwise each be planned for their arrays (13-20 ms a batch of 100 against 7-8 ms)
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    asks int := cardinality(merchants);
    acc bigint[] := array_fill(NULL::bigint, ARRAY[asks]);
    made_id bigint[] := array_fill(NULL::bigint, ARRAY[asks]);
    refused_at bigint[] := array_fill(0::bigint, ARRAY[asks]);
    grant_of int[] := array_fill(NULL::int, ARRAY[asks]);
    -- the batch's accounts, their available and held balances as its holds leave them
    seen bigint[] := '{}';
    av bigint[] := '{}';
    hd bigint[] := '{}';
    -- the holds granted, in the asks' order: "account consultation", ask, yen, seconds,
    -- the account's available and held balances after it
    granted text[] := '{}';
    g_ask int[] := '{}';
    g_held bigint[] := '{}';
    g_allowed int[] := '{}';
    g_av bigint[] := '{}';
    g_hd bigint[] := '{}';
    ids bigint[];
    r record;
    i int;
    k int;
    a bigint;
    per_unit bigint;
    allowed bigint;
    billed bigint;
    held bigint;
BEGIN
    FOR r IN SELECT * FROM billing_locked_balances(merchants, accounts, consultations) LOOP
        acc[r.n] := r.account_id;
        made_id[r.n] := r.made;
        IF array_position(seen, r.account_id) IS NULL THEN
            seen := seen || r.account_id;
            av := av || r.available_yen;
            hd := hd || r.held_yen;
        END IF;
    END LOOP;
    FOR i IN 1 .. asks LOOP
        CONTINUE WHEN acc[i] IS NULL OR made_id[i] IS NOT NULL;
        k := array_position(granted, acc[i] || ' ' || consultations[i]);
        IF k IS NOT NULL THEN                   -- the same consultation again
            grant_of[i] := k;
            CONTINUE;
        END IF;
        k := array_position(seen, acc[i]);
        a := av[k];
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
        av[k] := a - held;
        hd[k] := hd[k] + held;
        granted := granted || (acc[i] || ' ' || consultations[i]);
        g_ask := g_ask || i;
        g_held := g_held || held;
        g_allowed := g_allowed || allowed::int;
        g_av := g_av || av[k];
        g_hd := g_hd || hd[k];
        grant_of[i] := cardinality(granted);
    END LOOP;
    IF cardinality(g_ask) > 0 THEN
        -- each hold's reservation id and, above 0 yen, its transaction id taken here, in
        -- the asks' order, so that the transaction and its legs are written from the same
        -- row as the reservation: no join of what one insert returned to the next
        WITH g AS (SELECT g.h, acc[g.ask] AS account_id,
                          consultations[g.ask] AS consultation_id, ask_terms[g.ask] AS terms,
                          g.held_yen, g.allowed_s, g.available_after, g.held_after,
                          nextval('billing_reservations_id_seq') AS reservation_id,
                          CASE WHEN g.held_yen > 0
                               THEN nextval('billing_transactions_id_seq') END
                              AS transaction_id
                   FROM unnest(g_ask, g_held, g_allowed, g_av, g_hd) WITH ORDINALITY
                        AS g (ask, held_yen, allowed_s, available_after, held_after, h)),
             res AS (INSERT INTO billing_reservations (id, account_id, consultation_id,
                         terms, held_yen, allowed_s)
                     OVERRIDING SYSTEM VALUE
                     SELECT reservation_id, account_id, consultation_id, terms::jsonb,
                            held_yen, allowed_s
                     FROM g ORDER BY h),
             t AS (INSERT INTO billing_transactions (id, account_id, kind, amount_yen,
                       by_whom, reason, reservation_id)
                   OVERRIDING SYSTEM VALUE
                   SELECT transaction_id, account_id, 'hold', held_yen, who,
                          'consultation ' || consultation_id, reservation_id
                   FROM g WHERE transaction_id IS NOT NULL ORDER BY h),
             e AS (INSERT INTO billing_entries (transaction_id, account_id, book, amount_yen,
                       balance_after)
                   SELECT g.transaction_id, g.account_id, leg.book, leg.sign * g.held_yen,
                          CASE leg.book WHEN 'available' THEN g.available_after
                                        ELSE g.held_after END
                   FROM g, (VALUES ('available', -1), ('held', 1)) AS leg (book, sign)
                   WHERE g.transaction_id IS NOT NULL
                   ORDER BY g.h, leg.book)
        SELECT array_agg(g.reservation_id ORDER BY g.h) INTO ids FROM g;
    END IF;
    RETURN QUERY
    SELECT x.i, coalesce(made_id[x.i], ids[grant_of[x.i]]), made_id[x.i] IS NOT NULL,
           refused_at[x.i], g_held[grant_of[x.i]], g_allowed[grant_of[x.i]]
    FROM generate_series(1, asks) AS x (i);
END $$;
