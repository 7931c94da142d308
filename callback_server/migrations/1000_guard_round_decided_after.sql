-- A round's finish committed as one statement on its own (QueueStore.finish) has nothing
-- after it to write what the guard's velocity rules decide on the round (a lock, a block
-- list entry: Guard.round_recorded). Such a statement asks this function whether the rules
-- act on what its guard_round_ended read; they do: SQLSTATE CBW02, the statement undone, for
-- the caller to finish the round again in a transaction that writes their decision.
CREATE FUNCTION guard_round_decided_after(acts boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF acts THEN
        RAISE EXCEPTION 'the velocity rules act on this round' USING ERRCODE = 'CBW02';
    END IF;
    RETURN true;
END $$;
