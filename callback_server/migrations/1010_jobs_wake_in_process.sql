-- A job made claimable (a request stored queued, a round queued again) by a session of a
-- process whose own job worker runs wakes that worker in the process, after the commit
-- (callback_server.worker.Worker.run, through shared.db.watching): such a session says so
-- (cbgw.jobs_wake = 'in-process') and is told by a NOTICE, 'callback_jobs: queued'
-- (callback_server.worker.QUEUED_NOTICE), instead of sending a NOTIFY. A NOTIFY makes
-- PostgreSQL take one lock for the whole cluster from the commit's start to its end, so
-- every transaction that sends one (every intake batch) commits after the previous one's
-- WAL flush (bench/notify_lock.py). A NOTICE goes to the session alone and takes no lock.
--
-- Every other session still NOTIFYs: a process that stores requests but runs no worker
-- (`serve --role intake`), a CLI, an operator's re-queue from another process. Their jobs
-- are found at once by every worker's LISTEN, as before, rather than at the next sweep.
-- What a marked session queues is heard by its own process's worker only: a second full
-- callback server (its worker full, or stopping) finds it at its next safety sweep
-- (worker sweep_s, 5 s), or when one of its slots frees. The process that stored a
-- request runs a worker with free slots in the common case, so nothing waits for that.
CREATE OR REPLACE FUNCTION callback_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' THEN
        IF current_setting('cbgw.jobs_wake', true) IS DISTINCT FROM 'in-process' THEN
            PERFORM pg_notify('callback_jobs',
                              NEW.callback_id || ' ' || extract(epoch FROM NEW.next_attempt_at));
        ELSE
            RAISE NOTICE 'callback_jobs: queued';
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION callback_jobs_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    first record;
BEGIN
    SELECT callback_id, next_attempt_at INTO first FROM inserted
    WHERE status = 'queued' ORDER BY next_attempt_at LIMIT 1;
    IF FOUND THEN
        IF current_setting('cbgw.jobs_wake', true) IS DISTINCT FROM 'in-process' THEN
            PERFORM pg_notify('callback_jobs',
                              first.callback_id || ' ' || extract(epoch FROM first.next_attempt_at));
        ELSE
            RAISE NOTICE 'callback_jobs: queued';
        END IF;
    END IF;
    RETURN NULL;
END $$;
