-- The worker's claim (callback_server/store/queue_store.py, QueueStore.claim_due) as a
-- PL/pgSQL function that keeps its plan. As a top-level statement it was planned again at
-- every call once callback_requests held a few thousand rows: its generic plan counts
-- `LIMIT $3` as a tenth of the rows it may claim, so the plan cache (plan_cache_mode auto)
-- found it dearer than a custom plan for the actual limit and made a custom one each time
-- (a harness of 600 claims with 50,000 rows done and 300 waiting for a retry, one
-- connection: 600 custom plans, 1.05-1.13 ms of backend CPU a claim; 0.35 ms on the generic
-- plan). The function's statement runs on its generic plan (force_generic_plan), kept for
-- the session and made again when its tables' statistics change (an ANALYZE invalidates
-- it); with enable_seqscan = off, as callback_intake (1060), so a plan made on a nearly
-- empty table keeps reading by index once the table has grown: every read here has one.
-- Same query, arguments and rows as the statement it replaces.

CREATE FUNCTION callback_claim(p_owner text, p_lease_s float8, p_limit integer,
                               p_asterisk text, p_foreign_rescue_after_s float8,
                               p_at timestamptz, p_brake_since timestamptz, p_day date,
                               p_brake_limit integer)
RETURNS TABLE (due_s numeric, callback_id text, edge_call_id text, merchant_id text,
               caller text, attempts integer, max_attempts integer, prev_status text,
               dialed text, hungup_at timestamptz, legs bigint, click_advisor bigint,
               guard_facts guard_facts, guard_caps guard_cap_use[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH c AS (
        SELECT callback_id, status AS prev_status
        FROM callback_requests
        WHERE (status = 'queued' AND next_attempt_at <= now())
           OR (status = 'dialing' AND lease_expires_at < now()
               -- a live leg on another Asterisk is left to that Asterisk's servers (only
               -- they can ask about it), for a while
               AND (p_asterisk IS NULL
                    OR lease_expires_at < now() - p_foreign_rescue_after_s * interval '1 second'
                    OR NOT EXISTS (
                        SELECT 1 FROM callback_attempts a
                        WHERE a.callback_id = callback_requests.callback_id
                          AND a.status IN ('dialing', 'originated', 'answered')
                          AND a.asterisk IS NOT NULL AND a.asterisk <> p_asterisk)))
        ORDER BY next_attempt_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE callback_requests r
        SET status = 'dialing', lease_owner = p_owner,
            lease_expires_at = now() + p_lease_s * interval '1 second',
            heartbeat_at = now(), updated_at = now()
        -- by the primary key whatever the row counts the plan was made for (a join with
        -- c, planned on a nearly empty table, read the whole key index for each claim)
        WHERE r.callback_id = ANY (ARRAY(SELECT callback_id FROM c))
        RETURNING r.callback_id, r.edge_call_id, r.merchant_id, r.caller,
                  r.attempts, r.max_attempts,
                  (SELECT c.prev_status FROM c
                   WHERE c.callback_id = r.callback_id) AS prev_status, r.dialed,
                  coalesce(r.hungup_at, r.received_at) AS hungup_at,
                  (SELECT count(*) FROM callback_attempts a
                   WHERE a.callback_id = r.callback_id) AS legs,
                  (SELECT k.advisor_id FROM click_to_call_requests k
                   WHERE k.callback_id = r.callback_id) AS click_advisor),
    next AS (
        SELECT extract(epoch FROM min(t) - now()) AS due_s FROM (
            SELECT min(next_attempt_at) AS t FROM callback_requests
            WHERE status = 'queued'
              AND callback_id NOT IN (SELECT callback_id FROM c)
            UNION ALL
            SELECT min(lease_expires_at) FROM callback_requests
            WHERE status = 'dialing'
              AND callback_id NOT IN (SELECT callback_id FROM c)) s),
    -- the callers as a column, not a subquery argument: the facts' SQL function is then
    -- inlined, planned with this statement
    facts AS (
        SELECT f FROM (SELECT array_agg(caller) AS numbers FROM claimed) k
        CROSS JOIN LATERAL guard_number_facts(k.numbers, p_at, p_brake_since,
                                              p_brake_limit) f
        WHERE p_at IS NOT NULL)
    SELECT next.due_s, claimed.callback_id, claimed.edge_call_id, claimed.merchant_id,
           claimed.caller, claimed.attempts, claimed.max_attempts, claimed.prev_status,
           claimed.dialed, claimed.hungup_at, claimed.legs, claimed.click_advisor,
           facts.f,
           (SELECT coalesce(array_agg(u), '{}') FROM guard_cap_usage(NULL, p_day) u
            WHERE p_at IS NOT NULL AND EXISTS (SELECT 1 FROM claimed))
    FROM next LEFT JOIN claimed ON true
    LEFT JOIN facts ON (facts.f).number = claimed.caller;
END $$;

ALTER FUNCTION callback_claim(text, float8, integer, text, float8, timestamptz, timestamptz,
                              date, integer)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
