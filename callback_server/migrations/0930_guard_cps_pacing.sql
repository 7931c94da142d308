-- CPS caps pace instead of refusing (callback_server/guard/caps.py): guard_claim says,
-- when a CPS cap is what was reached, in how many seconds its window has room again
-- (free_in: the first of the scope's shards to have an admission past its room leave the
-- sliding second), so the leg waits for it outside any transaction and is claimed again;
-- and it returns the time it admitted the leg at (admitted_at: the CPS window's clock),
-- kept on the leg row. A CPS shard keeps two seconds of admissions instead of one, so a
-- claim whose clock was read before it waited for the shard's row lock still counts every
-- admission within a second of its own.

ALTER TABLE callback_attempts ADD COLUMN admitted_at timestamptz;

DROP FUNCTION guard_claim(text[], integer[], integer[], integer);

CREATE FUNCTION guard_claim(p_scopes text[], p_channels integer[], p_cps integer[],
                            p_shards integer,
                            OUT reached_scope text, OUT reached_kind text,
                            OUT in_use integer, OUT shards integer[],
                            OUT admitted_at timestamptz, OUT free_in double precision)
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := clock_timestamp();
    k integer;
    start integer := floor(random() * p_shards)::integer;
    got integer;
BEGIN
    BEGIN
        FOR i IN 1 .. coalesce(cardinality(p_scopes), 0) LOOP
            got := NULL;
            IF p_channels[i] IS NOT NULL THEN
                k := least(p_shards, greatest(p_channels[i], 1));
                IF (SELECT count(*) FROM guard_live
                    WHERE scope = p_scopes[i] AND shard < k) < k THEN
                    INSERT INTO guard_live (scope, shard)
                    SELECT p_scopes[i], j FROM generate_series(0, k - 1) j
                    ON CONFLICT DO NOTHING;
                END IF;
                UPDATE guard_live SET live = live + 1
                WHERE (scope, shard) = (
                    SELECT scope, shard FROM guard_live
                    WHERE scope = p_scopes[i] AND shard < k
                      AND live < guard_shard_room(p_channels[i], k, shard)
                    ORDER BY (shard - start % k + k) % k LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING shard INTO got;
                FOR j IN 0 .. k - 1 LOOP        -- every free shard full: wait for the others
                    EXIT WHEN got IS NOT NULL;
                    UPDATE guard_live SET live = live + 1
                    WHERE scope = p_scopes[i] AND shard = j
                      AND live < guard_shard_room(p_channels[i], k, j)
                    RETURNING shard INTO got;
                END LOOP;
                IF got IS NULL THEN
                    reached_scope := p_scopes[i];
                    reached_kind := 'channels';
                    in_use := p_channels[i];
                    RAISE EXCEPTION 'cap reached' USING ERRCODE = 'P0001';
                END IF;
            END IF;
            shards := array_append(shards, got);
            IF p_cps[i] IS NOT NULL THEN
                k := least(p_shards, greatest(p_cps[i], 1));
                IF (SELECT count(*) FROM guard_cps
                    WHERE scope = p_scopes[i] AND shard < k) < k THEN
                    INSERT INTO guard_cps (scope, shard)
                    SELECT p_scopes[i], j FROM generate_series(0, k - 1) j
                    ON CONFLICT DO NOTHING;
                END IF;
                got := NULL;
                UPDATE guard_cps
                SET recent = array_append(ARRAY(SELECT r FROM unnest(recent) r
                                                WHERE r > t - interval '2 seconds'), t)
                WHERE (scope, shard) = (
                    SELECT scope, shard FROM guard_cps
                    WHERE scope = p_scopes[i] AND shard < k
                      AND (SELECT count(*) FROM unnest(recent) r
                           WHERE r > t - interval '1 second')
                          < guard_shard_room(p_cps[i], k, shard)
                    ORDER BY (shard - start % k + k) % k LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING shard INTO got;
                FOR j IN 0 .. k - 1 LOOP
                    EXIT WHEN got IS NOT NULL;
                    UPDATE guard_cps
                    SET recent = array_append(ARRAY(SELECT r FROM unnest(recent) r
                                                    WHERE r > t - interval '2 seconds'), t)
                    WHERE scope = p_scopes[i] AND shard = j
                      AND (SELECT count(*) FROM unnest(recent) r
                           WHERE r > t - interval '1 second')
                          < guard_shard_room(p_cps[i], k, j)
                    RETURNING shard INTO got;
                END LOOP;
                IF got IS NULL THEN
                    reached_scope := p_scopes[i];
                    reached_kind := 'cps';
                    in_use := p_cps[i];
                    -- a shard has room again when its admissions in the window past its
                    -- room have left it: the first shard to, in seconds from now
                    SELECT greatest(coalesce(extract(epoch FROM min(f.frees)
                                                     - clock_timestamp()), 0), 0)
                    INTO free_in
                    FROM (SELECT (SELECT r FROM unnest(c.recent) r
                                  WHERE r > t - interval '1 second' ORDER BY r
                                  OFFSET greatest((SELECT count(*) FROM unnest(c.recent) w
                                                   WHERE w > t - interval '1 second')
                                                  - guard_shard_room(p_cps[i], k, c.shard), 0)
                                  LIMIT 1) + interval '1 second' AS frees
                          FROM guard_cps c WHERE c.scope = p_scopes[i] AND c.shard < k) f;
                    RAISE EXCEPTION 'cap reached' USING ERRCODE = 'P0001';
                END IF;
            END IF;
        END LOOP;
        admitted_at := t;
    EXCEPTION WHEN raise_exception THEN
        shards := NULL;  -- the slots taken in earlier scopes are given back with the block
    END;
END $$;
