-- A message made sendable and leased to a relay in the same statement (the edge's release
-- of a call-back request, edge_server.store.CallStore.release with its relay running:
-- shared.outbox.OutboxRelay.lease / take_leased) wakes no relay: the relay it is leased to
-- delivers it without a claim, and no other may claim it before the lease runs out. Its
-- NOTICE woke that relay's loop for a claim of nothing, a transaction a call-back.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT NEW.held AND NEW.delivered_at IS NULL AND NEW.dead_at IS NULL
       AND (NEW.lease_expires_at IS NULL OR NEW.lease_expires_at <= now()) THEN
        IF current_setting('cbgw.outbox_wake', true) IS DISTINCT FROM 'in-process' THEN
            PERFORM pg_notify('outbox', NEW.message_id::text);
        ELSE
            RAISE NOTICE 'outbox: sendable';
        END IF;
    END IF;
    RETURN NEW;
END $$;
