-- Withdrawn. 1010 was, for a few hours on 2026-12-05/06, "jobs_wake_in_process": the
-- callback_jobs triggers sent a session marked cbgw.jobs_wake = in-process a NOTICE
-- instead of the NOTIFY, so only the worker of the process that stored a job heard of it.
-- The full suite's scale-out fault test then saw every leg of two callback servers go to
-- one of them (the other's worker learnt of the jobs only at its sweep), and the sweeps
-- measured no gain from it, so it was reverted. A database that applied it keeps its
-- trigger functions, which NOTIFY as 0300's do for every session that is not marked, and
-- nothing marks a session any more. This file keeps the number taken: a later migration
-- numbered 1010 would be skipped on such a database.
SELECT 1;
