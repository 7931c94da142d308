-- The guard's counters are prometheus_client metrics now; the processes serving one port
-- share them through its multiprocess directory (shared/metrics.py), not the database.
DROP TABLE IF EXISTS process_metrics;
