-- Call notifications through a durable outbox: a notification row is written in the
-- transaction of the fact it reports (request info collected, a message recorded), with
-- one delivery row per channel the merchant configured for that event. The site's
-- delivery worker leases due deliveries, sends, and records the attempt and the result
-- (delivered, retry later, parked) in one transaction.

CREATE TABLE notifications (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  text        NOT NULL,
    event        text        NOT NULL CHECK (event IN ('request_collected',
                                                       'message_recorded')),
    fact_key     text        NOT NULL UNIQUE,      -- one notification per fact
    facts        jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX notifications_merchant ON notifications (merchant_id, created_at);

CREATE TABLE notification_deliveries (
    notification_id bigint      NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel         text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'delivered', 'parked')),
    attempts        integer     NOT NULL DEFAULT 0,
    attempts_before integer     NOT NULL DEFAULT 0,   -- attempts when last requeued
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_by       text,
    leased_until    timestamptz,
    last_error      text,
    finished_at     timestamptz,
    PRIMARY KEY (notification_id, channel)
);

CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_at)
    WHERE state = 'pending';

CREATE TABLE notification_attempts (
    notification_id bigint      NOT NULL,
    channel         text        NOT NULL,
    attempt         integer     NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN ('delivered', 'retry', 'parked')),
    error           text,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (notification_id, channel, attempt),
    FOREIGN KEY (notification_id, channel)
        REFERENCES notification_deliveries (notification_id, channel) ON DELETE CASCADE
);

-- A merchant's phonebook: the company and name a notification shows for a caller.
CREATE TABLE phonebook (
    merchant_id text NOT NULL,
    number      text NOT NULL CHECK (number ~ '^\+[1-9][0-9]{6,14}$'),
    company     text NOT NULL DEFAULT '' CHECK (length(company) <= 200),
    name        text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    PRIMARY KEY (merchant_id, number)
);
