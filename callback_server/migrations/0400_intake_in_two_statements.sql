-- The call-back intake in four round trips per batch instead of eight: BEGIN,
-- callback_intake_open (number locks, then everything the decisions read), the one
-- statement that stores the batch (message ids with their answers, request rows, the
-- guard's counts), COMMIT. Each round trip costs both sides a write() that wakes the other
-- and a statement's fixed overhead; the database work of a batch of ten went from 2.5 ms
-- to 1.8 ms (median, interleaved, one connection; bench/README.md). The guard's SQL moves
-- into functions here so the guard keeps owning it while the intake calls it inside its
-- own statements.

-- What the guard knows about a number as of p_at (velocity, lists, lock, confirmations),
-- and the anomaly brake's count of new numbers left unconfirmed since p_brake_since
-- (0 when NULL), the same on every row.
CREATE TYPE guard_facts AS (
    number         text,
    active         bigint,        -- requests queued or dialling now
    last_at        timestamptz,   -- last accepted call-back
    accepted_hour  bigint,
    accepted_day   bigint,
    confirmations  integer,
    locked_until   timestamptz,
    block_reason   text,          -- on the block list (NULL: not)
    allowed        boolean,       -- on the allow list (NULL: not)
    brake          bigint
);

CREATE FUNCTION guard_number_facts(p_numbers text[], p_at timestamptz,
                                   p_brake_since timestamptz)
RETURNS SETOF guard_facts LANGUAGE sql STABLE AS $$
    SELECT n.number,
        (SELECT count(*) FROM callback_requests
          WHERE caller = n.number AND status IN ('queued', 'dialing')),
        -- the last call-back is nearly always within the day: one index probe, not two
        coalesce(c.day_last,
                 (SELECT max(accepted_at) FROM guard_callbacks WHERE number = n.number)),
        c.hour, c.day,
        coalesce(g.confirmations, 0), g.locked_until,
        l.block_reason, l.allowed,
        CASE WHEN p_brake_since IS NULL THEN 0 ELSE
          (SELECT count(DISTINCT number) FROM guard_rounds
            WHERE rang AND NOT confirmed AND NOT known AND ended_at > p_brake_since) END
    FROM (SELECT DISTINCT unnest(p_numbers) AS number) n
    LEFT JOIN guard_numbers g ON g.number = n.number
    CROSS JOIN LATERAL (
        SELECT max(accepted_at) AS day_last,
               count(*) FILTER (WHERE accepted_at > p_at - interval '1 hour') AS hour,
               count(*) AS day
        FROM guard_callbacks
        WHERE number = n.number AND accepted_at > p_at - interval '1 day') c
    CROSS JOIN LATERAL (
        SELECT max(reason) FILTER (WHERE list = 'block') AS block_reason,  -- one row a list
               bool_or(list = 'allow') AS allowed
        FROM guard_lists
        WHERE number = n.number AND (expires_at IS NULL OR expires_at > p_at)) l
$$;

-- Serialise decisions per number for the rest of the transaction. Locks are taken in
-- key order, so two transactions sharing numbers never deadlock on them.
CREATE FUNCTION guard_lock_numbers(p_numbers text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1667366913, k)      -- 0x63620001: the number namespace
    FROM (SELECT DISTINCT hashtext(n) AS k FROM unnest(p_numbers) AS n ORDER BY 1) s;
END $$;

-- Count accepted call-backs against their numbers (velocity). STRICT: NULL arrays (no
-- request accepted) do nothing. PL/pgSQL, not SQL, so its plans are cached per session.
CREATE FUNCTION guard_note_accepted(p_callback_ids text[], p_numbers text[],
                                    p_merchant_ids text[], p_known boolean[],
                                    p_at timestamptz)
RETURNS void LANGUAGE plpgsql STRICT AS $$
BEGIN
    INSERT INTO guard_callbacks (callback_id, number, merchant_id, known, accepted_at)
    SELECT a.callback_id, a.number, a.merchant_id, a.known, p_at
    FROM unnest(p_callback_ids, p_numbers, p_merchant_ids, p_known)
         AS a(callback_id, number, merchant_id, known)
    ON CONFLICT (callback_id) DO NOTHING;
    INSERT INTO guard_numbers (number, first_seen_at)
    SELECT DISTINCT n, p_at FROM unnest(p_numbers) AS n ORDER BY 1
    ON CONFLICT (number) DO NOTHING;
END $$;

-- The read half of an intake batch, in one round trip. With p_numbers (screened), the
-- numbers are locked first; every query after the lock sees what the transactions that
-- held it committed (READ COMMITTED takes a snapshot per statement, and this function
-- is VOLATILE). Rows:
--   'message'  a message id already stored: key, its first answer (status, body);
--   'call'     an edge call that already has a call-back: key, answer = the request's
--              {callback_id, status, reason};
--   'number'   a screened number: key, facts.
CREATE FUNCTION callback_intake_open(p_message_ids text[], p_edge_call_ids text[],
                                     p_numbers text[], p_at timestamptz,
                                     p_brake_since timestamptz)
RETURNS TABLE (kind text, key text, answer_status integer, answer jsonb, facts guard_facts)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF p_numbers IS NOT NULL THEN
        PERFORM guard_lock_numbers(p_numbers);
    END IF;
    RETURN QUERY
        SELECT 'message', m.message_id, m.response_status, m.response_body, NULL::guard_facts
        FROM inbound_messages m WHERE m.message_id = ANY (p_message_ids);
    RETURN QUERY
        SELECT 'call', r.edge_call_id, 202,
               jsonb_build_object('callback_id', r.callback_id, 'status', r.status,
                                  'reason', r.reason), NULL::guard_facts
        FROM callback_requests r WHERE r.edge_call_id = ANY (p_edge_call_ids);
    IF p_numbers IS NOT NULL THEN
        RETURN QUERY
            SELECT 'number', f.number, NULL::integer, NULL::jsonb, f
            FROM guard_number_facts(p_numbers, p_at, p_brake_since) f;
    END IF;
END $$;
