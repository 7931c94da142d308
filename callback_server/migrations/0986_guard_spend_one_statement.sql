-- A CDR's cost added to all of its scopes (site, merchant, trunk) in one statement: one
-- round trip of the CDR's transaction instead of one a scope. The same shards as
-- migration 0985, scope by scope in the order given (every CDR gives them in one order).

DROP FUNCTION guard_add_spend(date, text, text, numeric, integer);

-- Add p_amount to each scope's spend of p_day; returns each scope's spend after that (the
-- sum of its shards' amounts less their offsets, as this transaction sees them: shards
-- other transactions are adding to count what they had at their last commit).
CREATE FUNCTION guard_add_spend(p_day date, p_scopes text[], p_currency text,
                                p_amount numeric, p_shards integer) RETURNS numeric[]
LANGUAGE plpgsql AS $$
DECLARE
    scope_ text;
    got integer;
    after numeric[] := '{}';
BEGIN
    FOREACH scope_ IN ARRAY p_scopes LOOP
        got := NULL;
        UPDATE guard_spend SET amount = amount + p_amount
        WHERE (day, scope, shard) = (
            SELECT day, scope, shard FROM guard_spend WHERE day = p_day AND scope = scope_
            ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING shard INTO got;
        IF got IS NULL THEN
            -- none today yet, or every shard held: open a shard not there yet (chosen at
            -- random: two CDRs opening shards at once rarely pick the same one and wait),
            -- else add to any (and wait for its holder's commit)
            got := coalesce(
                (SELECT j FROM generate_series(0, p_shards - 1) j
                 WHERE NOT EXISTS (SELECT 1 FROM guard_spend
                                   WHERE day = p_day AND scope = scope_ AND shard = j)
                 ORDER BY random() LIMIT 1),
                floor(random() * p_shards)::integer);
            INSERT INTO guard_spend (day, scope, shard, currency, amount)
            VALUES (p_day, scope_, got, p_currency, p_amount)
            ON CONFLICT (day, scope, shard)
            DO UPDATE SET amount = guard_spend.amount + EXCLUDED.amount;
        END IF;
        after := after || (SELECT sum(amount - offset_amount) FROM guard_spend
                           WHERE day = p_day AND scope = scope_);
    END LOOP;
    RETURN after;
END $$;
