-- Transcripts of recordings a flow collected, made at the callback site after the call and
-- sent over the link (kind recording_transcript). Stored apart from the request so the
-- order of arrival does not matter: the requests listing shows each against the request
-- field that holds its recording id. One per recording: a redelivery stores nothing.
CREATE TABLE request_transcripts (
    id            bigserial   PRIMARY KEY,
    merchant_id   text        NOT NULL,
    callback_id   text        NOT NULL,
    edge_call_id  text        NOT NULL,
    recording_id  text        NOT NULL,
    transcript    text        NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, recording_id)
);
CREATE INDEX request_transcripts_callback ON request_transcripts (merchant_id, callback_id);
