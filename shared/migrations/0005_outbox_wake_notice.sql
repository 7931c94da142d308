-- A session marked in-process (0004) is told of each message it makes sendable by a
-- NOTICE, 'outbox: sendable' (shared.outbox.SENDABLE_NOTICE), which its process's relay
-- waits for (shared.db.watching): so only such a statement wakes that relay, not every
-- statement on the table (a held request stored at the edge, an intake batch that
-- refused nothing, which each cost the relay a claim of nothing). A NOTICE goes to the
-- session alone, at once, and takes no lock; the relay is told once the connection is
-- back in its pool, its transaction over.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT NEW.held AND NEW.delivered_at IS NULL AND NEW.dead_at IS NULL THEN
        IF current_setting('cbgw.outbox_wake', true) IS DISTINCT FROM 'in-process' THEN
            PERFORM pg_notify('outbox', NEW.message_id::text);
        ELSE
            RAISE NOTICE 'outbox: sendable';
        END IF;
    END IF;
    RETURN NEW;
END $$;
