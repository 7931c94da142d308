-- Channel and CPS caps without one lock that every leg takes (callback_server/guard/caps.py).
-- A capped scope (global, trunk:<carrier>) has a counter row; admitting a customer leg
-- takes a slot with one conditional UPDATE of that row, in the leg's transaction, so legs
-- of different trunks never wait for each other, and an uncapped scope has no row at all.

-- Live customer legs per capped scope. Equal, at every commit, to the number of legs in
-- callback_attempts that are dialling, ringing or up and name the scope in cap_scopes:
-- guard_claim adds the slot in the transaction that inserts the leg, the trigger below
-- gives it back in the transaction that ends the leg (the call runner's leg_result, or
-- reconcile's settle_leg after a crash), so no ended leg holds a slot.
CREATE TABLE guard_live (
    scope  text    PRIMARY KEY,
    live   integer NOT NULL DEFAULT 0
);

-- When the customer legs of a CPS-capped scope were admitted, within the last second.
CREATE TABLE guard_cps (
    scope   text          PRIMARY KEY,
    recent  timestamptz[] NOT NULL DEFAULT '{}'
);

-- The scopes whose channel slot the leg holds (sorted; empty when none is capped).
ALTER TABLE callback_attempts ADD COLUMN cap_scopes text[] NOT NULL DEFAULT '{}';

-- Take a channel slot and a CPS slot in each capped scope, in order, all or none.
-- Returns NULLs when admitted, else the first cap reached and what was in use there.
-- A NULL cap is no cap: its scope's rows are neither read nor written.
CREATE FUNCTION guard_claim(p_scopes text[], p_channels integer[], p_cps integer[],
                            OUT reached_scope text, OUT reached_kind text,
                            OUT in_use integer)
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := clock_timestamp();
BEGIN
    BEGIN
        FOR i IN 1 .. coalesce(cardinality(p_scopes), 0) LOOP
            IF p_channels[i] IS NOT NULL THEN
                INSERT INTO guard_live (scope) VALUES (p_scopes[i]) ON CONFLICT DO NOTHING;
                UPDATE guard_live SET live = live + 1
                WHERE scope = p_scopes[i] AND live < p_channels[i];
                IF NOT FOUND THEN
                    reached_scope := p_scopes[i];
                    reached_kind := 'channels';
                    SELECT live INTO in_use FROM guard_live WHERE scope = p_scopes[i];
                    RAISE EXCEPTION 'cap reached' USING ERRCODE = 'P0001';
                END IF;
            END IF;
            IF p_cps[i] IS NOT NULL THEN
                INSERT INTO guard_cps (scope) VALUES (p_scopes[i]) ON CONFLICT DO NOTHING;
                UPDATE guard_cps
                SET recent = array_append(ARRAY(SELECT r FROM unnest(recent) r
                                                WHERE r > t - interval '1 second'), t)
                WHERE scope = p_scopes[i]
                  AND (SELECT count(*) FROM unnest(recent) r
                       WHERE r > t - interval '1 second') < p_cps[i];
                IF NOT FOUND THEN
                    reached_scope := p_scopes[i];
                    reached_kind := 'cps';
                    SELECT count(*) INTO in_use FROM guard_cps, unnest(recent) r
                    WHERE scope = p_scopes[i] AND r > t - interval '1 second';
                    RAISE EXCEPTION 'cap reached' USING ERRCODE = 'P0001';
                END IF;
            END IF;
        END LOOP;
    EXCEPTION WHEN raise_exception THEN
        NULL;   -- the slots taken in earlier scopes are given back with the block
    END;
END $$;

-- A leg holding slots stops (or, for a late event, starts again) being live.
CREATE FUNCTION guard_leg_liveness() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_live boolean := OLD.status IN ('dialing', 'originated', 'answered');
    is_live boolean := TG_OP = 'UPDATE'
                       AND NEW.status IN ('dialing', 'originated', 'answered');
    s text;
BEGIN
    IF was_live <> is_live THEN
        FOR s IN SELECT unnest(OLD.cap_scopes) ORDER BY 1 LOOP
            UPDATE guard_live SET live = greatest(live + CASE WHEN is_live THEN 1 ELSE -1 END, 0)
            WHERE scope = s;
        END LOOP;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER callback_attempts_cap_slots
AFTER UPDATE OF status OR DELETE ON callback_attempts
FOR EACH ROW WHEN (OLD.cap_scopes <> '{}')
EXECUTE FUNCTION guard_leg_liveness();

