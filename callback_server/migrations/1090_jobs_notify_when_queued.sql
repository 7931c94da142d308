-- The per-row wake-up trigger of callback_requests' updates (0300) fires only for a row
-- left queued (a retry, a job given back): `WHEN (NEW.status = 'queued')`, the test its
-- function makes first, now made by the trigger itself. Every call-back's claim (queued ->
-- dialing) and finish (dialing -> completed / failed) update `status`, so each queued an
-- after-trigger event and ran the PL/pgSQL function for nothing: two calls a call-back.
-- With the condition on the trigger PostgreSQL checks it as it queues the event and
-- queues none for the others. Same NOTIFYs, same payload (the function is unchanged).
-- Small: under 3 us of backend CPU an update in a harness (bench/README.md, cbhot).
DROP TRIGGER callback_jobs_notify ON callback_requests;

CREATE TRIGGER callback_jobs_notify
    AFTER UPDATE OF status, next_attempt_at ON callback_requests
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION callback_jobs_notify();
