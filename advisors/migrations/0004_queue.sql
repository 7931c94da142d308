-- The consultation queue. A merchant chooses what a new customer who finds all its lines
-- in use gets (`lines_busy`: the busy guidance, or the queue) and how often a queued
-- customer hears their place (`queue_announce_s`, 0: on entering and on changes only).
ALTER TABLE advisor_settings
    ADD COLUMN lines_busy text NOT NULL DEFAULT 'guidance'
        CHECK (lines_busy IN ('guidance', 'queue')),
    ADD COLUMN queue_announce_s integer NOT NULL DEFAULT 30
        CHECK (queue_announce_s BETWEEN 0 AND 600);

-- The customers waiting in the queue (advisors.live): a row per queued assignment, written
-- by each of its tries under the merchant's settings lock (`seen_at`: the last try;
-- a row not tried for a while is a dead process's and counts no more), deleted when
-- it leaves the queue. A customer's place: 1 + the rows of customers of the same
-- members queued before them.
CREATE TABLE advisor_queue (
    consultation_id text        PRIMARY KEY,
    merchant_id     text        NOT NULL,
    members         bigint[]    NOT NULL,
    queued_at       timestamptz NOT NULL,
    seen_at         timestamptz NOT NULL
);
CREATE INDEX advisor_queue_merchant ON advisor_queue (merchant_id, queued_at);
