-- guard_cap_usage (0998) in PL/pgSQL, the same query. A LANGUAGE sql function that is not
-- inlined is parsed and planned again each time the statement that calls it runs (before
-- PostgreSQL 18), and this one never is: it is VOLATILE (clock_timestamp()). The worker's
-- claim and every leg's admission (guard.store.admission_ctes) call it: its body's plan
-- (a union of four scans and five subqueries a scope) took about 0.4 ms of the claim's
-- 1.0 ms with nothing to read. PL/pgSQL keeps the plan for the session.

CREATE OR REPLACE FUNCTION guard_cap_usage(p_scopes text[], p_day date)
RETURNS SETOF guard_cap_use LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
    SELECT s.scope,
           (SELECT coalesce(sum(l.live), 0) FROM guard_live l WHERE l.scope = s.scope)::bigint,
           (SELECT count(*) FROM guard_cps c, unnest(c.recent) r
            WHERE c.scope = s.scope AND r > clock_timestamp() - interval '1 second'),
           (SELECT sum(p.amount - p.offset_amount) FROM guard_spend p
            WHERE p.day = p_day AND p.scope = s.scope),
           ARRAY(SELECT t.kind FROM guard_trips t WHERE t.scope = s.scope
                 AND t.reset_at IS NULL ORDER BY t.kind),
           ARRAY(SELECT t.reason FROM guard_trips t WHERE t.scope = s.scope
                 AND t.reset_at IS NULL ORDER BY t.kind)
    FROM (SELECT DISTINCT unnest(p_scopes) AS scope WHERE p_scopes IS NOT NULL
          UNION SELECT g.scope FROM guard_live g WHERE p_scopes IS NULL
          UNION SELECT g.scope FROM guard_cps g WHERE p_scopes IS NULL
          UNION SELECT g.scope FROM guard_spend g WHERE p_scopes IS NULL AND g.day = p_day
          UNION SELECT g.scope FROM guard_trips g WHERE p_scopes IS NULL
                                                  AND g.reset_at IS NULL) s;
END $$;
