-- An alert goes out once per repeat window for the whole site, not once per process: the
-- process that records it first (under an advisory lock on its kind and key) sends it;
-- the others find it recorded and count it as sent elsewhere.
CREATE INDEX guard_alerts_kind_key ON guard_alerts (kind, key, at);
