-- One NOTIFY per intake statement, not per request row: a group-committed batch of
-- call-back requests inserts many rows at once, and the per-row PL/pgSQL trigger was
-- the largest single cost of the insert (15 µs a row). The workers only need to know
-- the earliest due time (they re-read the queue after every claim), so the statement
-- trigger sends that of the earliest queued row, in the same payload format:
-- "<callback_id> <epoch seconds of next_attempt_at>". Updates (retries, re-queues)
-- keep the per-row trigger: transition tables cannot be combined with a column list.
DROP TRIGGER callback_jobs_notify ON callback_requests;

CREATE TRIGGER callback_jobs_notify
    AFTER UPDATE OF status, next_attempt_at ON callback_requests
    FOR EACH ROW EXECUTE FUNCTION callback_jobs_notify();

CREATE FUNCTION callback_jobs_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    first record;
BEGIN
    SELECT callback_id, next_attempt_at INTO first FROM inserted
    WHERE status = 'queued' ORDER BY next_attempt_at LIMIT 1;
    IF FOUND THEN
        PERFORM pg_notify('callback_jobs',
                          first.callback_id || ' ' || extract(epoch FROM first.next_attempt_at));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER callback_jobs_notify_inserted
    AFTER INSERT ON callback_requests REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION callback_jobs_notify_inserted();
