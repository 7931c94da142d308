-- A message made sendable by a session of a process whose own relay runs wakes that
-- relay in the process, after the commit (shared.outbox.OutboxRelay.run, through
-- shared.db.watching): such a session says so (cbgw.outbox_wake = 'in-process') and its
-- transaction sends no NOTIFY. A NOTIFY makes PostgreSQL take one lock for the whole
-- cluster from the commit's start to its end (pg_locks: object, database 0, class 1262),
-- so every transaction that sends one commits after the previous one's WAL flush: the
-- edge's release and the callback site's finish queued behind each other at 100
-- call-backs a second. Every other session (a CLI, a process without a relay) still
-- NOTIFYs, so the relays of the other processes wake at once; a message that only
-- another process's relay delivers waits at most for that relay's sweep (sweep_s).
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT NEW.held AND NEW.delivered_at IS NULL AND NEW.dead_at IS NULL
       AND current_setting('cbgw.outbox_wake', true) IS DISTINCT FROM 'in-process' THEN
        PERFORM pg_notify('outbox', NEW.message_id::text);
    END IF;
    RETURN NEW;
END $$;
