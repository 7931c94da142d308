-- A batch of first holds (billing.ledger.reserve_all) in one statement, so one round trip
-- when called outside a transaction (the statement is its own): lock the asks' accounts in
-- id order and read their balances after the lock (billing_locked_balances, 0015/0018),
-- decide each ask in the asks' order, write the granted holds (a reservation, and for a
-- hold above 0 yen a transaction with its two legs, as billing.ledger.post writes them)
-- and answer each ask.
--
-- The decision is the ledger's rule for a hold, stated a second time here: its Python
-- statement is billing.ledger.decide_holds (with billing.rating's seconds_affordable,
-- whole_units_s and rate), and tests/integration/test_billing_ledger.py's property test
-- checks over random terms, balances and asks that the two grant and refuse alike. What
-- depends on the terms alone comes from Python with each ask: ``needed`` (the first billed
-- unit's price: less available is refused) and ``caps`` (the ask's at_most_s rounded up to
-- a whole unit, else the terms' max_talk_s). Here, with the account's available balance
-- ``a`` as the earlier asks of the batch left it:
--
--     allowed = min(cap, seconds_affordable(a))      grace, then whole units a pays for
--     held    = rate(allowed).total_yen              price × billed / 60, at least minimum
--
-- An ask whose account does not exist is refused (available 0); an ask whose reservation
-- was made before answers that one (made: the caller reads it as it stands); an ask
-- repeated in the batch after a grant shares its reservation.
CREATE FUNCTION billing_reserve_holds(merchants text[], accounts text[],
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
        WITH g AS (SELECT g.ask, g.h, acc[g.ask] AS account_id,
                          consultations[g.ask] AS consultation_id, ask_terms[g.ask] AS terms,
                          g.held_yen, g.allowed_s, g.available_after, g.held_after
                   FROM unnest(g_ask, g_held, g_allowed, g_av, g_hd) WITH ORDINALITY
                        AS g (ask, held_yen, allowed_s, available_after, held_after, h)),
             res AS (INSERT INTO billing_reservations (account_id, consultation_id, terms,
                         held_yen, allowed_s)
                     SELECT account_id, consultation_id, terms::jsonb, held_yen, allowed_s
                     FROM g ORDER BY h
                     RETURNING id, account_id, consultation_id),
             gr AS (SELECT g.*, res.id AS reservation_id
                    FROM g JOIN res USING (account_id, consultation_id)),
             t AS (INSERT INTO billing_transactions (account_id, kind, amount_yen, by_whom,
                       reason, reservation_id)
                   SELECT account_id, 'hold', held_yen, who,
                          'consultation ' || consultation_id, reservation_id
                   FROM gr WHERE held_yen > 0 ORDER BY h
                   RETURNING id, account_id, amount_yen, reservation_id),
             e AS (INSERT INTO billing_entries (transaction_id, account_id, book, amount_yen,
                       balance_after)
                   SELECT t.id, t.account_id, leg.book, leg.sign * t.amount_yen,
                          CASE leg.book WHEN 'available' THEN gr.available_after
                                        ELSE gr.held_after END
                   FROM t JOIN gr USING (reservation_id),
                        (VALUES ('available', -1), ('held', 1)) AS leg (book, sign)
                   ORDER BY gr.h, leg.book)
        SELECT array_agg(gr.reservation_id ORDER BY gr.h) INTO ids FROM gr;
    END IF;
    RETURN QUERY
    SELECT x.i, coalesce(made_id[x.i], ids[grant_of[x.i]]), made_id[x.i] IS NOT NULL,
           refused_at[x.i], g_held[grant_of[x.i]], g_allowed[grant_of[x.i]]
    FROM generate_series(1, asks) AS x (i);
END $$;
