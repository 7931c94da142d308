-- A capped scope's counters split into shards (callback_server/guard/caps.py): the site's
-- cap is taken by every customer leg, so one counter row for it made every leg of every
-- merchant and trunk wait for the transaction before it. A cap of c over k shards gives
-- shard j the room c / k (+ 1 for j < c % k); the shards' rooms add up to c, so no shard
-- full means the cap is not exceeded. A leg takes a slot in a shard nobody else holds
-- (SKIP LOCKED), and waits for a held one only when no free shard has room.

ALTER TABLE guard_live ADD COLUMN shard integer NOT NULL DEFAULT 0;
ALTER TABLE guard_live DROP CONSTRAINT guard_live_pkey, ADD PRIMARY KEY (scope, shard);
ALTER TABLE guard_cps ADD COLUMN shard integer NOT NULL DEFAULT 0;
ALTER TABLE guard_cps DROP CONSTRAINT guard_cps_pkey, ADD PRIMARY KEY (scope, shard);

-- The shard of each scope in cap_scopes whose channel slot the leg holds.
ALTER TABLE callback_attempts ADD COLUMN cap_shards integer[] NOT NULL DEFAULT '{}';
UPDATE callback_attempts SET cap_shards = array_fill(0, ARRAY[cardinality(cap_scopes)])
WHERE cap_scopes <> '{}' AND status IN ('dialing', 'originated', 'answered');

-- The room of shard j when a cap of c is split over k shards.
CREATE FUNCTION guard_shard_room(c integer, k integer, j integer) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT c / k + CASE WHEN j < c % k THEN 1 ELSE 0 END $$;

DROP FUNCTION guard_claim(text[], integer[], integer[]);

-- Take a channel slot and a CPS slot in each capped scope, in order, all or none, each
-- in one of the scope's p_shards shards. Returns NULLs and the channel shards taken
-- (one per scope, NULL where channels are not capped) when admitted, else the first cap
-- reached and what was in use there: the cap, as every shard was full when tried (a
-- sum read afterwards could already count a leg that ended meanwhile). A NULL cap is no
-- cap: its scope's rows are neither read nor written. A scope's first leg creates its
-- shard rows; until it commits, the next leg of that scope waits for it (once).
CREATE FUNCTION guard_claim(p_scopes text[], p_channels integer[], p_cps integer[],
                            p_shards integer,
                            OUT reached_scope text, OUT reached_kind text,
                            OUT in_use integer, OUT shards integer[])
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
                                                WHERE r > t - interval '1 second'), t)
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
                                                    WHERE r > t - interval '1 second'), t)
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
                    RAISE EXCEPTION 'cap reached' USING ERRCODE = 'P0001';
                END IF;
            END IF;
        END LOOP;
    EXCEPTION WHEN raise_exception THEN
        shards := NULL;  -- the slots taken in earlier scopes are given back with the block
    END;
END $$;

-- A leg holding slots stops (or, for a late event, starts again) being live: its shard
-- of each scope (shard 0 for a leg admitted before the shards).
CREATE OR REPLACE FUNCTION guard_leg_liveness() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_live boolean := OLD.status IN ('dialing', 'originated', 'answered');
    is_live boolean := TG_OP = 'UPDATE'
                       AND NEW.status IN ('dialing', 'originated', 'answered');
    s record;
BEGIN
    IF was_live <> is_live THEN
        FOR s IN SELECT scope, coalesce(shard, 0) AS shard
                 FROM unnest(OLD.cap_scopes, OLD.cap_shards) AS u(scope, shard)
                 WHERE scope IS NOT NULL ORDER BY 1, 2 LOOP
            UPDATE guard_live SET live = greatest(live + CASE WHEN is_live THEN 1 ELSE -1 END, 0)
            WHERE scope = s.scope AND shard = s.shard;
        END LOOP;
    END IF;
    RETURN NULL;
END $$;
