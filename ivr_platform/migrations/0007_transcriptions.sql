-- A recording to transcribe after the call: the site's transcription worker leases the
-- row, runs the speech-to-text engine, and in one transaction stores the transcript with
-- the recording, marks the row done (or failed: the engine cannot read it) and queues the
-- message_recorded notification held here (notify_facts), so that notification carries
-- the transcript and is queued once.

CREATE TABLE recording_transcriptions (
    recording_id  uuid        PRIMARY KEY REFERENCES recordings (id) ON DELETE CASCADE,
    state         text        NOT NULL DEFAULT 'pending'
                              CHECK (state IN ('pending', 'done', 'failed')),
    notify_facts  jsonb,      -- the notification to queue once done (null: none)
    attempts      integer     NOT NULL DEFAULT 0,
    leased_by     text,
    leased_until  timestamptz,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

CREATE INDEX recording_transcriptions_due ON recording_transcriptions (created_at)
    WHERE state = 'pending';
