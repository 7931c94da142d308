-- The finish's guard record (guard_round_ended, 1030; kept plans 1060) reads only what it
-- decides on. It read the number's facts through guard_number_facts, the intake's and the
-- claim's screen (active call-backs of the caller, the day's and the hour's call-backs,
-- the lists, the brake's count), to use two of them: the confirmations and the allow list
-- (whether the number is known); and read guard_numbers again for a round that rang
-- unconfirmed. Now one read of guard_numbers (confirmations, last confirmation, lock) and
-- one probe of the allow list, and the two counts of unconfirmed rounds (since the last
-- confirmation within the lock window; within the block window) in one scan of the
-- number's rounds. guard_numbers' row, when there is none yet, is inserted as before;
-- read after the number's lock as before, so the same committed state. Same arguments,
-- rows and writes as 1030's (test_guard_round_ended.py holds it against that function).
-- A harness of 1,500 calls a pass (a round that rang unconfirmed, each its own
-- transaction, 30,000 numbers with a call-back each), one connection, alternating, four
-- passes each: 367-400 -> 300-340 us of backend CPU a call, commit included (the machine
-- loaded; bench/README.md, "The callback site's CPU a call-back, profiled").
CREATE OR REPLACE FUNCTION guard_round_ended(p_callback_id text, p_attempt_no integer,
                                             p_number text, p_merchant_id text,
                                             p_rang boolean, p_confirmed boolean,
                                             p_at timestamptz, p_lock_since timestamptz,
                                             p_block_since timestamptz,
                                             p_brake_since timestamptz,
                                             p_brake_limit integer DEFAULT NULL)
RETURNS TABLE (recorded boolean, number_known boolean, recent_unconfirmed bigint,
               window_unconfirmed bigint, number_locked_until timestamptz,
               new_unconfirmed bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n_confirmations integer;
    n_confirmed_at timestamptz;
    n_locked_until timestamptz;
    lock_from timestamptz;
BEGIN
    PERFORM guard_lock_numbers(ARRAY[p_number]);
    SELECT g.confirmations, g.confirmed_at, g.locked_until
    INTO n_confirmations, n_confirmed_at, n_locked_until
    FROM guard_numbers g WHERE g.number = p_number;
    number_known := coalesce(n_confirmations, 0) > 0
        OR EXISTS (SELECT 1 FROM guard_lists l
                   WHERE l.number = p_number AND l.list = 'allow'
                     AND (l.expires_at IS NULL OR l.expires_at > p_at));
    INSERT INTO guard_rounds (callback_id, attempt_no, number, merchant_id, known, rang,
                              confirmed, ended_at)
    VALUES (p_callback_id, p_attempt_no, p_number, p_merchant_id, number_known, p_rang,
            p_confirmed, p_at)
    ON CONFLICT DO NOTHING;
    recorded := FOUND;
    IF n_confirmations IS NULL THEN     -- no row yet (a number the intake did not count)
        INSERT INTO guard_numbers (number, first_seen_at) VALUES (p_number, p_at)
        ON CONFLICT (number) DO NOTHING;
    END IF;
    IF recorded AND p_confirmed THEN
        UPDATE guard_numbers SET confirmations = confirmations + 1, confirmed_at = p_at
        WHERE number = p_number;
    ELSIF recorded AND p_rang THEN
        lock_from := greatest(p_lock_since, coalesce(n_confirmed_at, '-infinity'));
        SELECT count(*) FILTER (WHERE r.ended_at > lock_from),
               count(*) FILTER (WHERE r.ended_at > p_block_since)
        INTO recent_unconfirmed, window_unconfirmed
        FROM guard_rounds r
        WHERE r.number = p_number AND r.rang AND NOT r.confirmed
          AND r.ended_at > least(lock_from, p_block_since);
        number_locked_until := n_locked_until;
        IF NOT number_known THEN
            new_unconfirmed := guard_brake_count(p_brake_since, p_brake_limit);
        END IF;
    END IF;
    RETURN NEXT;
END $$;
ALTER FUNCTION guard_round_ended(text, integer, text, text, boolean, boolean, timestamptz,
                                 timestamptz, timestamptz, timestamptz, integer)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
