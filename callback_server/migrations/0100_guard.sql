-- The toll-fraud and harassment guard (callback_server/guard/). Migration set "callback".
-- Numbered from 0100 so it never clashes with the call-back core's own migrations.
-- No foreign keys to callback_requests: tests and operators may TRUNCATE the core tables.

-- A refused call-back request keeps its row (GET /v1/callbacks/{id} shows the reason).
ALTER TABLE callback_requests DROP CONSTRAINT callback_requests_status_check;
ALTER TABLE callback_requests ADD CONSTRAINT callback_requests_status_check
    CHECK (status IN ('queued', 'dialing', 'completed', 'failed', 'refused'));
CREATE INDEX callback_requests_active_caller ON callback_requests (caller)
    WHERE status IN ('queued', 'dialing');
CREATE INDEX callback_attempts_live ON callback_attempts (carrier_id)
    WHERE leg = 'customer' AND status IN ('dialing', 'originated', 'answered');
CREATE INDEX callback_attempts_recent ON callback_attempts (created_at);

-- Operator (and automatic) block and allow lists. number = E.164 digits without '+'.
CREATE TABLE guard_lists (
    number      text        NOT NULL,
    list        text        NOT NULL CHECK (list IN ('block', 'allow')),
    reason      text        NOT NULL DEFAULT '',
    source      text        NOT NULL DEFAULT 'operator',   -- operator | auto
    created_by  text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    PRIMARY KEY (number, list)
);

-- What the guard knows about one destination number.
CREATE TABLE guard_numbers (
    number         text        PRIMARY KEY,
    first_seen_at  timestamptz NOT NULL,
    confirmations  integer     NOT NULL DEFAULT 0,
    confirmed_at   timestamptz,                  -- last time the customer pressed 1
    locked_until   timestamptz,
    locked_at      timestamptz,
    locks          integer     NOT NULL DEFAULT 0
);

-- Accepted call-back requests, by the guard's clock (velocity counts).
CREATE TABLE guard_callbacks (
    callback_id  text        PRIMARY KEY,
    number       text        NOT NULL,
    merchant_id  text        NOT NULL,
    known        boolean     NOT NULL,
    accepted_at  timestamptz NOT NULL
);
CREATE INDEX guard_callbacks_number ON guard_callbacks (number, accepted_at);

-- One row per call-back round that ended: did the phone ring, did the customer press 1?
CREATE TABLE guard_rounds (
    callback_id  text        NOT NULL,
    attempt_no   integer     NOT NULL,
    number       text        NOT NULL,
    merchant_id  text        NOT NULL,
    known        boolean     NOT NULL,
    rang         boolean     NOT NULL,
    confirmed    boolean     NOT NULL,
    ended_at     timestamptz NOT NULL,
    PRIMARY KEY (callback_id, attempt_no)
);
CREATE INDEX guard_rounds_number ON guard_rounds (number, ended_at) WHERE rang AND NOT confirmed;
CREATE INDEX guard_rounds_new_unconfirmed ON guard_rounds (ended_at)
    WHERE rang AND NOT confirmed AND NOT known;

-- Every refusal, with its stable reason code. stage: intake | dial.
CREATE TABLE guard_refusals (
    id           bigserial   PRIMARY KEY,
    at           timestamptz NOT NULL,
    stage        text        NOT NULL,
    reason       text        NOT NULL,
    detail       text        NOT NULL DEFAULT '',
    number       text,                          -- E.164 digits, or a sanitised raw caller
    merchant_id  text,
    callback_id  text,
    edge_call_id text,
    message_id   text,
    occurrences  integer     NOT NULL DEFAULT 1,
    last_at      timestamptz NOT NULL
);
CREATE INDEX guard_refusals_at ON guard_refusals (at);
CREATE UNIQUE INDEX guard_refusals_message ON guard_refusals (message_id)
    WHERE message_id IS NOT NULL;
CREATE UNIQUE INDEX guard_refusals_dial ON guard_refusals (callback_id, reason)
    WHERE stage = 'dial';

-- Daily spend per scope ('global' or 'trunk:<carrier>'), in the caps currency.
-- offset_amount is what was spent when an operator last reset that scope's cap.
CREATE TABLE guard_spend (
    day            date          NOT NULL,
    scope          text          NOT NULL,
    currency       text          NOT NULL,
    amount         numeric(18,6) NOT NULL DEFAULT 0,
    offset_amount  numeric(18,6) NOT NULL DEFAULT 0,
    PRIMARY KEY (day, scope)
);

-- Latched caps: a trip stays until an operator resets it (reset_at set).
CREATE TABLE guard_trips (
    id          bigserial   PRIMARY KEY,
    scope       text        NOT NULL,            -- global | trunk:<carrier>
    kind        text        NOT NULL,            -- channels | cps | spend_daily
    reason      text        NOT NULL,
    detail      text        NOT NULL DEFAULT '',
    tripped_at  timestamptz NOT NULL,
    reset_at    timestamptz,
    reset_by    text
);
CREATE UNIQUE INDEX guard_trips_active ON guard_trips (scope, kind) WHERE reset_at IS NULL;

-- Alerts raised (webhook and e-mail delivery results are logged; this is the history).
CREATE TABLE guard_alerts (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL,
    kind        text        NOT NULL,
    key         text        NOT NULL,
    message     text        NOT NULL,
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX guard_alerts_at ON guard_alerts (at);
