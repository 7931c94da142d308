-- The intake statement's PL/pgSQL statements on kept plans, and four of them skipped when
-- they have nothing to do (the callback side's CPU at 20/s).
--
-- callback_intake's statements read its array arguments through unnest(): for a generic
-- plan PostgreSQL counts 100 rows an unnest of a parameter, for a custom one the array's
-- own length (one at 20/s), so the plan cache found every generic plan dearer and planned
-- each statement again at every call (plan_cache_mode auto), guard_number_facts' body
-- parsed and inlined each time: about half of the statement's backend CPU (a harness of
-- 1,000 single intakes a round on one connection, perf: the parser and planner; 0.74 ->
-- 0.38 ms a call with the plans kept). The function now keeps its generic plans
-- (plan_cache_mode = force_generic_plan, for the call and what it calls); as the plan is
-- made once a session, at the session's first intake, a table nearly empty then (a fresh
-- site, the sweep's fresh database) would keep a sequential scan however large it grows
-- (the harness: callback_requests and guard_numbers read whole at every call, 0.43 ->
-- 1.13 ms a call over 5,000 calls), so seq scans are off for the call (enable_seqscan =
-- off: every read here is by a key with its index; a table with no index for a read is
-- still scanned). guard_round_ended (the finish's guard record, 1030) likewise.
--
-- Skipped when they have nothing to do: the query for edge calls stored meanwhile (every
-- decided request inserted), the refusals' record and message (none refused), the check
-- for message ids stored meanwhile (every message id inserted). guard_note_accepted is
-- inlined, its guard_callbacks rows a plain INSERT: their callback ids are those just
-- inserted into callback_requests (new, random), so there is no conflict to confirm.
-- Same arguments, rows and errors as 1030's.

CREATE OR REPLACE FUNCTION callback_intake(
    p_message_ids text[], p_callback_ids text[], p_edge_call_ids text[],
    p_merchant_ids text[], p_callers text[], p_dialed text[], p_announce_modes text[],
    p_received_at timestamptz[], p_hungup_at timestamptz[], p_max_attempts integer[],
    p_delay_s numeric[], p_fact_ids uuid[],
    p_first boolean[], p_plain_reason text[], p_plain_detail text[],
    p_allowed_reason text[], p_allowed_detail text[],
    p_at timestamptz, p_brake_since timestamptz, p_limits integer[])
RETURNS TABLE (message_id text, outcome text, answer_status integer, body jsonb,
               callback_id text, status text, reason text, detail text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n integer := cardinality(p_message_ids);
    screened boolean := p_at IS NOT NULL;
    -- the stored message ids and their first answers
    s_ids text[]; s_status integer[]; s_body jsonb[];
    -- edge calls that have a call-back: stored ones, then this batch's
    c_ids text[]; c_cb text[]; c_status text[]; c_reason text[];
    -- the guard's facts, by number
    f_num text[]; f_active bigint[]; f_last timestamptz[]; f_hour bigint[]; f_day bigint[];
    f_locked timestamptz[]; f_block text[]; f_allowed boolean[]; f_known boolean[];
    brake bigint := 0;
    -- each request's outcome
    o_outcome text[] := array_fill(NULL::text, ARRAY[n]);
    o_cb text[] := array_fill(NULL::text, ARRAY[n]);
    o_status text[] := array_fill(NULL::text, ARRAY[n]);
    o_reason text[] := array_fill(NULL::text, ARRAY[n]);
    o_detail text[] := array_fill(NULL::text, ARRAY[n]);
    o_known boolean[] := array_fill(NULL::boolean, ARRAY[n]);
    o_stored integer[] := array_fill(NULL::integer, ARRAY[n]);
    inserted text[]; claimed text[]; raced text[];
    n_decided integer := 0; n_refused integer := 0; n_fresh integer := 0;
    i integer; j integer; k integer; lim integer; who text; gap numeric;
    v_reason text; v_detail text;
    lost record;
BEGIN
    IF screened THEN
        -- guard_lock_numbers (0400), inlined: one statement, not a function's
        PERFORM pg_advisory_xact_lock(1667366913, k)      -- 0x63620001: the numbers
        FROM (SELECT DISTINCT hashtext(x) AS k FROM unnest(p_callers) AS x ORDER BY 1) s;
    END IF;
    -- every query from here on sees what the holders of the locks committed (READ
    -- COMMITTED: a snapshot a statement)
    SELECT array_agg(m.message_id), array_agg(m.response_status), array_agg(m.response_body)
    INTO s_ids, s_status, s_body
    FROM inbound_messages m WHERE m.message_id = ANY (p_message_ids);
    SELECT coalesce(array_agg(r.edge_call_id), '{}'), coalesce(array_agg(r.callback_id), '{}'),
           coalesce(array_agg(r.status), '{}'), coalesce(array_agg(r.reason), '{}')
    INTO c_ids, c_cb, c_status, c_reason
    FROM callback_requests r WHERE r.edge_call_id = ANY (p_edge_call_ids);
    IF screened THEN
        SELECT array_agg(f.number), array_agg(f.active), array_agg(f.last_at),
               array_agg(f.accepted_hour), array_agg(f.accepted_day),
               array_agg(f.locked_until), array_agg(f.block_reason),
               array_agg(coalesce(f.allowed, false)),
               array_agg(f.confirmations > 0 OR coalesce(f.allowed, false)),
               coalesce(max(f.brake), 0)
        INTO f_num, f_active, f_last, f_hour, f_day, f_locked, f_block, f_allowed, f_known,
             brake
        FROM guard_number_facts(p_callers, p_at, p_brake_since, p_limits[9] + 1) f;
    END IF;

    FOR i IN 1 .. n LOOP
        k := array_position(s_ids, p_message_ids[i]);
        IF k IS NOT NULL THEN               -- a repeat: its first answer
            o_outcome[i] := 'repeat';
            o_stored[i] := k;
            CONTINUE;
        END IF;
        n_fresh := n_fresh + 1;
        k := array_position(c_ids, p_edge_call_ids[i]);
        IF k IS NOT NULL THEN               -- a known edge call: its call-back
            o_outcome[i] := 'call';
            o_cb[i] := c_cb[k]; o_status[i] := c_status[k]; o_reason[i] := c_reason[k];
            CONTINUE;
        END IF;
        v_reason := NULL; v_detail := NULL;
        IF screened THEN
            j := array_position(f_num, p_callers[i]);
            -- the destination policy and the lists (shared.destination.Policy.evaluate)
            IF p_first[i] THEN
                v_reason := p_plain_reason[i]; v_detail := p_plain_detail[i];
            ELSIF f_block[j] IS NOT NULL THEN
                v_reason := 'number_blocked';
                v_detail := coalesce(nullif(f_block[j], ''), 'on the block list');
            ELSIF f_allowed[j] THEN
                v_reason := p_allowed_reason[i]; v_detail := p_allowed_detail[i];
            ELSE
                v_reason := p_plain_reason[i]; v_detail := p_plain_detail[i];
            END IF;
            -- the lock and the velocity limits (velocity.check_intake)
            IF v_reason IS NULL THEN
                lim := CASE WHEN f_known[j] THEN 0 ELSE 4 END;
                who := CASE WHEN f_known[j] THEN 'known' ELSE 'unknown' END;
                gap := extract(epoch FROM p_at - f_last[j]);
                IF f_locked[j] IS NOT NULL AND p_at < f_locked[j] THEN
                    v_reason := 'number_locked';
                    v_detail := 'locked until '
                        || to_char(f_locked[j] AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
                        || CASE WHEN date_trunc('second', f_locked[j]) = f_locked[j] THEN ''
                                ELSE to_char(f_locked[j] AT TIME ZONE 'UTC', '.US') END
                        || '+00:00';
                ELSIF f_active[j] >= p_limits[lim + 1] THEN
                    v_reason := 'velocity_concurrent';
                    v_detail := f_active[j] || ' call-back(s) already pending (' || who
                                || ' limit ' || p_limits[lim + 1] || ')';
                ELSIF gap IS NOT NULL AND gap < p_limits[lim + 4] THEN
                    v_reason := 'velocity_gap';
                    -- Python's f"{gap:.0f}": the float, rounded half to even (rint)
                    v_detail := round(gap::float8)::text || ' s since the last call-back ('
                                || who || ' minimum ' || p_limits[lim + 4] || ' s)';
                ELSIF f_hour[j] >= p_limits[lim + 2] THEN
                    v_reason := 'velocity_hourly';
                    v_detail := f_hour[j] || ' in the last hour (' || who || ' limit '
                                || p_limits[lim + 2] || ')';
                ELSIF f_day[j] >= p_limits[lim + 3] THEN
                    v_reason := 'velocity_daily';
                    v_detail := f_day[j] || ' in the last 24 h (' || who || ' limit '
                                || p_limits[lim + 3] || ')';
                -- the anomaly brake, for numbers not known (brake.check)
                ELSIF NOT f_known[j] AND brake > p_limits[9] THEN
                    v_reason := 'brake_new_numbers';
                    v_detail := 'more than ' || p_limits[9] || ' new numbers unconfirmed in '
                                || p_limits[10] || ' s';
                END IF;
            END IF;
            IF v_reason IS NULL THEN        -- the next request for it sees this one
                f_active[j] := f_active[j] + 1; f_last[j] := p_at;
                f_hour[j] := f_hour[j] + 1; f_day[j] := f_day[j] + 1;
                o_known[i] := f_known[j];
            END IF;
        END IF;
        o_outcome[i] := CASE WHEN v_reason IS NULL THEN 'queued' ELSE 'refused' END;
        n_decided := n_decided + 1;
        IF v_reason IS NOT NULL THEN
            n_refused := n_refused + 1;
        END IF;
        o_cb[i] := p_callback_ids[i]; o_status[i] := o_outcome[i];
        o_reason[i] := v_reason; o_detail[i] := v_detail;
        c_ids := c_ids || p_edge_call_ids[i]; c_cb := c_cb || o_cb[i];
        c_status := c_status || o_status[i]; c_reason := c_reason || v_reason;
    END LOOP;

    -- The request rows, in edge-call order (two batches sharing edge calls wait for each
    -- other in one order). The pre-call-back delay counts from the hang-up, or from when
    -- the edge received the call if it sent no hang-up time.
    WITH rows AS (
        INSERT INTO callback_requests AS t (callback_id, edge_call_id, merchant_id, caller,
            dialed, announce_mode, received_at, hungup_at, message_id, max_attempts,
            next_attempt_at, status, reason, finished_at)
        SELECT o.cb, p_edge_call_ids[o.i], p_merchant_ids[o.i], p_callers[o.i], p_dialed[o.i],
               p_announce_modes[o.i], p_received_at[o.i], p_hungup_at[o.i],
               p_message_ids[o.i], p_max_attempts[o.i],
               CASE WHEN o.outcome = 'refused' THEN now() ELSE
                   least(now() + p_delay_s[o.i] * interval '1 second',
                         greatest(now(), coalesce(p_hungup_at[o.i], p_received_at[o.i])
                                         + p_delay_s[o.i] * interval '1 second')) END,
               o.outcome, o_reason[o.i], CASE WHEN o.outcome = 'refused' THEN now() END
        FROM unnest(o_outcome, o_cb) WITH ORDINALITY AS o(outcome, cb, i)
        WHERE o.outcome IN ('queued', 'refused') AND p_callback_ids[o.i] = o.cb
        ORDER BY p_edge_call_ids[o.i]
        ON CONFLICT (edge_call_id) DO NOTHING
        RETURNING t.callback_id)
    SELECT coalesce(array_agg(rows.callback_id), '{}') INTO inserted FROM rows;

    -- Edge calls another transaction stored meanwhile (only without the guard's locks):
    -- their call-back is the answer, for every message of the batch that named them.
    IF cardinality(inserted) < n_decided THEN
        FOR lost IN
            SELECT o.cb AS mine, r.callback_id, r.status, r.reason
            FROM unnest(o_outcome, o_cb) WITH ORDINALITY AS o(outcome, cb, i)
            JOIN callback_requests r ON r.edge_call_id = p_edge_call_ids[o.i]
            WHERE o.outcome IN ('queued', 'refused') AND NOT o.cb = ANY (inserted)
        LOOP
            FOR i IN 1 .. n LOOP
                IF o_cb[i] = lost.mine AND o_outcome[i] <> 'repeat' THEN
                    IF o_outcome[i] <> 'call' THEN
                        o_outcome[i] := 'lost';
                    END IF;
                    o_cb[i] := lost.callback_id; o_status[i] := lost.status;
                    o_reason[i] := lost.reason; o_detail[i] := NULL;
                END IF;
            END LOOP;
        END LOOP;
    END IF;

    IF screened AND n_decided > n_refused THEN
        -- the accepted ones count against their numbers (velocity): guard_note_accepted
        -- (0400) inlined, its call-backs' rows a plain INSERT (their ids are the ones
        -- just inserted into callback_requests, random and new: no conflict to confirm)
        INSERT INTO guard_callbacks (callback_id, number, merchant_id, known, accepted_at)
        SELECT o.cb, p_callers[o.i], p_merchant_ids[o.i], o_known[o.i], p_at
        FROM unnest(o_outcome, o_cb) WITH ORDINALITY AS o(outcome, cb, i)
        WHERE o.outcome = 'queued' AND o.cb = ANY (inserted);
        INSERT INTO guard_numbers (number, first_seen_at)
        SELECT DISTINCT p_callers[o.i], p_at
        FROM unnest(o_outcome, o_cb) WITH ORDINALITY AS o(outcome, cb, i)
        WHERE o.outcome = 'queued' AND o.cb = ANY (inserted)
        ORDER BY 1
        ON CONFLICT (number) DO NOTHING;
    END IF;
    IF screened AND n_refused > 0 THEN
        -- the refusals: recorded (guard_refusals), and the edge told (callback_status)
        INSERT INTO guard_refusals (at, last_at, stage, reason, detail, number, merchant_id,
                                    callback_id, edge_call_id, message_id)
        SELECT p_at, p_at, 'intake', o_reason[o.i], o_detail[o.i], p_callers[o.i],
               p_merchant_ids[o.i], o.cb, p_edge_call_ids[o.i], p_message_ids[o.i]
        FROM unnest(o_outcome, o_cb) WITH ORDINALITY AS o(outcome, cb, i)
        WHERE o.outcome = 'refused'
        ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO NOTHING;
        INSERT INTO outbox (message_id, kind, path, body, merchant_id, held)
        SELECT p_fact_ids[o.i], 'callback_status', '/v1/link/events',
               convert_to(jsonb_build_object(
                   'kind', 'callback_status', 'callback_id', o.cb,
                   'edge_call_id', p_edge_call_ids[o.i], 'merchant_id', p_merchant_ids[o.i],
                   'status', 'failed', 'reason', o_reason[o.i], 'attempts', 0,
                   'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
               )::text, 'UTF8'),
               p_merchant_ids[o.i], false
        FROM unnest(o_outcome, o_cb) WITH ORDINALITY AS o(outcome, cb, i)
        WHERE o.outcome = 'refused'
        ON CONFLICT (message_id) DO NOTHING;
    END IF;

    -- The message ids with their answers, in message-id order (sorted by the caller).
    WITH rows AS (
        INSERT INTO inbound_messages AS t (message_id, kind, response_status, response_body)
        SELECT p_message_ids[o.i], 'callback_request', 202,
               jsonb_build_object('callback_id', o_cb[o.i], 'status', o_status[o.i])
               || CASE WHEN o_status[o.i] = 'refused'
                       THEN jsonb_build_object('reason', o_reason[o.i]) ELSE '{}' END
        FROM unnest(o_outcome) WITH ORDINALITY AS o(outcome, i)
        WHERE o.outcome <> 'repeat'
        ORDER BY p_message_ids[o.i]
        ON CONFLICT (message_id) DO NOTHING
        RETURNING t.message_id)
    SELECT coalesce(array_agg(rows.message_id), '{}') INTO claimed FROM rows;
    IF cardinality(claimed) < n_fresh THEN
        SELECT array_agg(p_message_ids[o.i] ORDER BY p_message_ids[o.i]) INTO raced
        FROM unnest(o_outcome) WITH ORDINALITY AS o(outcome, i)
        WHERE o.outcome <> 'repeat' AND NOT p_message_ids[o.i] = ANY (claimed);
        IF raced IS NOT NULL THEN
            RAISE EXCEPTION 'message ids stored meanwhile: %', array_to_string(raced, ', ')
                USING ERRCODE = 'CB001', DETAIL = array_to_string(raced, ',');
        END IF;
    END IF;

    RETURN QUERY
        SELECT p_message_ids[o.i], o.outcome,
               CASE WHEN o.outcome = 'repeat' THEN s_status[o_stored[o.i]] ELSE 202 END,
               CASE WHEN o.outcome = 'repeat' THEN s_body[o_stored[o.i]] END,
               o_cb[o.i], o_status[o.i], o_reason[o.i], o_detail[o.i]
        FROM unnest(o_outcome) WITH ORDINALITY AS o(outcome, i)
        ORDER BY o.i;
END $$;

ALTER FUNCTION callback_intake(text[], text[], text[], text[], text[], text[], text[],
                               timestamptz[], timestamptz[], integer[], numeric[], uuid[],
                               boolean[], text[], text[], text[], text[], timestamptz,
                               timestamptz, integer[])
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION guard_round_ended(text, integer, text, text, boolean, boolean, timestamptz,
                                 timestamptz, timestamptz, timestamptz, integer)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
