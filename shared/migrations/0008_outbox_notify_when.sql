-- The outbox's wake triggers say in their WHEN clauses which rows wake a relay, so a row
-- that wakes none queues no trigger event and calls no function: the edge's held
-- call-back request (inserted held, each call-back) and its release leased to the running
-- relay (migration 0007) fired outbox_notify() for nothing, an after-trigger event each
-- (queued, the row fetched again at the statement's end, a PL/pgSQL call). The function
-- is unchanged and still checks the same: the clauses only skip calls that would do
-- nothing. A WHEN clause is evaluated as the row is written, the same now() as the
-- function's (the transaction's start).
DROP TRIGGER outbox_notify_insert ON outbox;
CREATE TRIGGER outbox_notify_insert AFTER INSERT ON outbox
    FOR EACH ROW
    WHEN (NOT NEW.held AND NEW.delivered_at IS NULL AND NEW.dead_at IS NULL)
    EXECUTE FUNCTION outbox_notify();
DROP TRIGGER outbox_notify_release ON outbox;
CREATE TRIGGER outbox_notify_release AFTER UPDATE OF held ON outbox
    FOR EACH ROW
    WHEN (OLD.held AND NOT NEW.held AND NEW.delivered_at IS NULL AND NEW.dead_at IS NULL
          AND (NEW.lease_expires_at IS NULL OR NEW.lease_expires_at <= now()))
    EXECUTE FUNCTION outbox_notify();
