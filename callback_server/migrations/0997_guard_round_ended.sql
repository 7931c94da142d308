-- The guard's record of a round's end as one function, so the round's end writes it in
-- the transaction that finishes the job (one round trip instead of six, and no
-- transaction of its own). The decisions on what it returns (lock, block list, brake
-- alert) stay in the guard's Python (Guard.record_round).

-- Under the number's lock: whether the number was known, the round recorded (once per
-- callback_id and attempt_no; recorded false: it was already, nothing else is done), a
-- confirmation counted, and for a round that rang unconfirmed the counts the velocity
-- rules read (unconfirmed rounds since the last confirmation within the lock window,
-- within the block window, the lock) and, for a number not known, the anomaly brake's
-- count of new numbers left unconfirmed since p_brake_since.
CREATE FUNCTION guard_round_ended(p_callback_id text, p_attempt_no integer, p_number text,
                                  p_merchant_id text, p_rang boolean, p_confirmed boolean,
                                  p_at timestamptz, p_lock_since timestamptz,
                                  p_block_since timestamptz, p_brake_since timestamptz)
RETURNS TABLE (recorded boolean, number_known boolean, recent_unconfirmed bigint,
               window_unconfirmed bigint, number_locked_until timestamptz,
               new_unconfirmed bigint)
LANGUAGE plpgsql AS $$
DECLARE
    f guard_facts;
BEGIN
    PERFORM guard_lock_numbers(ARRAY[p_number]);
    SELECT * INTO f FROM guard_number_facts(ARRAY[p_number], p_at, NULL);
    number_known := f.confirmations > 0 OR coalesce(f.allowed, false);
    INSERT INTO guard_rounds (callback_id, attempt_no, number, merchant_id, known, rang,
                              confirmed, ended_at)
    VALUES (p_callback_id, p_attempt_no, p_number, p_merchant_id, number_known, p_rang,
            p_confirmed, p_at)
    ON CONFLICT DO NOTHING;
    recorded := FOUND;
    INSERT INTO guard_numbers (number, first_seen_at) VALUES (p_number, p_at)
    ON CONFLICT (number) DO NOTHING;
    IF recorded AND p_confirmed THEN
        UPDATE guard_numbers SET confirmations = confirmations + 1, confirmed_at = p_at
        WHERE number = p_number;
    ELSIF recorded AND p_rang THEN
        SELECT (SELECT count(*) FROM guard_rounds r WHERE r.number = p_number AND r.rang
                  AND NOT r.confirmed AND r.ended_at > greatest(p_lock_since,
                      coalesce(n.confirmed_at, '-infinity'::timestamptz))),
               (SELECT count(*) FROM guard_rounds r WHERE r.number = p_number AND r.rang
                  AND NOT r.confirmed AND r.ended_at > p_block_since),
               n.locked_until
        INTO recent_unconfirmed, window_unconfirmed, number_locked_until
        FROM guard_numbers n WHERE n.number = p_number;
        IF NOT number_known THEN
            new_unconfirmed := (SELECT count(DISTINCT r.number) FROM guard_rounds r
                                WHERE r.rang AND NOT r.confirmed AND NOT r.known
                                  AND r.ended_at > p_brake_since);
        END IF;
    END IF;
    RETURN NEXT;
END $$;
