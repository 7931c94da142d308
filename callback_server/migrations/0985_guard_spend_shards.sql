-- Today's spend of a scope split into shards (callback_server/guard/caps.py). Every
-- answered leg's CDR adds its carrier cost to the site's, its trunk's and its merchant's
-- spend: with one row per scope, rows every call-back shares, each CDR transaction held
-- their locks to its commit and the next CDRs queued behind it. A CDR now adds to a shard
-- row no other transaction holds (SKIP LOCKED), opening another shard (up to p_shards)
-- when every one is held (or none is there yet today); a scope's spend is the sum over its shards. offset_amount is
-- per shard: an operator's reset sets each shard's to its amount, so the sum restarts at 0.

ALTER TABLE guard_spend ADD COLUMN shard integer NOT NULL DEFAULT 0;
ALTER TABLE guard_spend DROP CONSTRAINT guard_spend_pkey, ADD PRIMARY KEY (day, scope, shard);

-- Add p_amount to the scope's spend of p_day; returns its spend after that (the sum of
-- its shards' amounts less their offsets, as this transaction sees them: shards other
-- transactions are adding to count what they had at their last commit).
CREATE FUNCTION guard_add_spend(p_day date, p_scope text, p_currency text,
                                p_amount numeric, p_shards integer) RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    got integer;
BEGIN
    UPDATE guard_spend SET amount = amount + p_amount
    WHERE (day, scope, shard) = (
        SELECT day, scope, shard FROM guard_spend WHERE day = p_day AND scope = p_scope
        ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING shard INTO got;
    IF got IS NULL THEN
        -- none today yet, or every shard held: open a shard not there yet (chosen at
        -- random: two CDRs opening shards at once rarely pick the same one and wait),
        -- else add to any (and wait for its holder's commit)
        got := coalesce(
            (SELECT j FROM generate_series(0, p_shards - 1) j
             WHERE NOT EXISTS (SELECT 1 FROM guard_spend
                               WHERE day = p_day AND scope = p_scope AND shard = j)
             ORDER BY random() LIMIT 1),
            floor(random() * p_shards)::integer);
        INSERT INTO guard_spend (day, scope, shard, currency, amount)
        VALUES (p_day, p_scope, got, p_currency, p_amount)
        ON CONFLICT (day, scope, shard)
        DO UPDATE SET amount = guard_spend.amount + EXCLUDED.amount;
    END IF;
    RETURN (SELECT sum(amount - offset_amount) FROM guard_spend
            WHERE day = p_day AND scope = p_scope);
END $$;
