-- Each server process's guard counters, published every few seconds, so that GET /metrics
-- answered by any process on a host (several share the port with [http] reuse_port) sums
-- them all. Kept after a process ends, so a host's counters never go down; rows not
-- updated for a week are purged.
CREATE TABLE process_metrics (
    process     text        PRIMARY KEY,         -- callback-<host>-<pid>
    host        text        NOT NULL,
    role        text        NOT NULL,            -- serve --role: all or intake
    updated_at  timestamptz NOT NULL DEFAULT now(),
    snapshot    jsonb       NOT NULL             -- callback_server.guard.metrics.Metrics.snapshot
);
CREATE INDEX process_metrics_host ON process_metrics (host);
