-- Recordings of calls kept for a merchant (the file under [media] recordings_dir, the
-- row here) until expires_at, when the site's expiry job deletes the file and then the
-- row. expires_at is fixed when the recording is stored (the merchant's retention then).

CREATE TABLE recordings (
    id            uuid        PRIMARY KEY,
    merchant_id   text        NOT NULL,
    call_id       text,
    callback_id   text,
    edge_call_id  text,
    file          text        NOT NULL,
    duration_ms   integer     NOT NULL CHECK (duration_ms >= 0),
    size_bytes    bigint      NOT NULL CHECK (size_bytes >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL CHECK (expires_at > created_at),
    transcript    text
);

CREATE INDEX recordings_merchant ON recordings (merchant_id, created_at DESC, id);
CREATE INDEX recordings_expiry ON recordings (expires_at);
CREATE INDEX recordings_call ON recordings (merchant_id, edge_call_id);
