-- The caps' usage as a function, so the worker's claim reads it in its own statement (the
-- route choice's snapshot: a round trip and a transaction fewer a round) and a leg's
-- admission in its transaction reads the same (Guard.usable_routes, Guard.admit_leg).

CREATE TYPE guard_cap_use AS (
    scope         text,
    live          bigint,         -- admitted legs up (all shards)
    cps           bigint,         -- admitted in the last second
    spend         numeric,        -- p_day's spend since the last reset (NULL: none)
    trip_kinds    text[],         -- active trips, by kind
    trip_reasons  text[]
);

-- The usage of p_scopes; NULL: of every scope that has a counter, a spend of p_day or an
-- active trip (a scope without any has no usage: every figure 0). No lock.
CREATE FUNCTION guard_cap_usage(p_scopes text[], p_day date)
RETURNS SETOF guard_cap_use LANGUAGE sql VOLATILE AS $$
    SELECT s.scope,
           (SELECT coalesce(sum(live), 0) FROM guard_live l WHERE l.scope = s.scope),
           (SELECT count(*) FROM guard_cps c, unnest(c.recent) r
            WHERE c.scope = s.scope AND r > clock_timestamp() - interval '1 second'),
           (SELECT sum(amount - offset_amount) FROM guard_spend p
            WHERE p.day = p_day AND p.scope = s.scope),
           ARRAY(SELECT kind FROM guard_trips t WHERE t.scope = s.scope
                 AND t.reset_at IS NULL ORDER BY kind),
           ARRAY(SELECT reason FROM guard_trips t WHERE t.scope = s.scope
                 AND t.reset_at IS NULL ORDER BY kind)
    FROM (SELECT DISTINCT unnest(p_scopes) AS scope WHERE p_scopes IS NOT NULL
          UNION SELECT scope FROM guard_live WHERE p_scopes IS NULL
          UNION SELECT scope FROM guard_cps WHERE p_scopes IS NULL
          UNION SELECT scope FROM guard_spend WHERE p_scopes IS NULL AND day = p_day
          UNION SELECT scope FROM guard_trips WHERE p_scopes IS NULL AND reset_at IS NULL) s
$$;
