-- Edge site: merchants (from config), inbound calls with their call-back
-- requests, and what the callback site reports back (request info, CDRs,
-- call-back status). Tenant = merchant: every tenant table has merchant_id.

CREATE TABLE merchants (
    id             text        PRIMARY KEY,
    name           text        NOT NULL,
    numbers        text[]      NOT NULL,
    announce_mode  text        NOT NULL CHECK (announce_mode IN ('early_media', 'answer')),
    active         boolean     NOT NULL DEFAULT true,   -- false: removed from the config
    synced_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per inbound call that reached a merchant's number. A call-back
-- request is a row in state 'stored' (outbox message held) that becomes
-- 'released' when the caller is gone.
CREATE TABLE edge_calls (
    id               bigserial   PRIMARY KEY,
    edge_call_id     text        NOT NULL UNIQUE,
    channel_id       text        NOT NULL,
    merchant_id      text        NOT NULL REFERENCES merchants (id),
    caller           text,                 -- E.164 (+...), NULL when withheld/invalid
    dialed           text        NOT NULL, -- E.164
    announce_mode    text,
    state            text        NOT NULL CHECK (state IN (
                         'stored', 'released', 'cancelled', 'refused', 'direct', 'abandoned')),
    outcome          text,                 -- edge_server.flow_messages.Outcome
    decision_reason  text,
    detail           text,
    message_id       uuid        UNIQUE,   -- the outbox message for the call-back
    received_at      timestamptz NOT NULL,
    stored_at        timestamptz,
    hungup_at        timestamptz,
    released_at      timestamptz,
    callback_id      text,
    callback_status  text,
    callback_reason  text
);
CREATE INDEX edge_calls_merchant ON edge_calls (merchant_id, id);
CREATE INDEX edge_calls_stored ON edge_calls (stored_at) WHERE state = 'stored';

-- 電話要望情報: what the customer told the IVR on the call-back.
CREATE TABLE requests (
    id            bigserial   PRIMARY KEY,
    merchant_id   text        NOT NULL,
    callback_id   text        NOT NULL,
    edge_call_id  text        NOT NULL,
    caller        text        NOT NULL,
    category      text        NOT NULL,
    fields        jsonb       NOT NULL,
    collected_at  timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, callback_id, collected_at)
);
CREATE INDEX requests_merchant ON requests (merchant_id, id);

CREATE TABLE cdrs (
    id                     bigserial   PRIMARY KEY,
    merchant_id            text        NOT NULL,
    call_id                text        NOT NULL,
    callback_id            text        NOT NULL,
    edge_call_id           text        NOT NULL,
    leg                    text        NOT NULL,
    destination            text        NOT NULL,
    carrier                text,
    started_at             timestamptz NOT NULL,
    answered_at            timestamptz,
    ended_at               timestamptz NOT NULL,
    duration_s             numeric(12, 3) NOT NULL,
    billed_s               integer     NOT NULL,
    hangup_cause           integer,
    disposition            text        NOT NULL,
    carrier_cost_amount    numeric,
    carrier_cost_currency  text,
    direct_cost_amount     numeric,
    direct_cost_currency   text,
    received_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, call_id)
);
CREATE INDEX cdrs_merchant ON cdrs (merchant_id, id);

CREATE TABLE callback_status (
    id            bigserial   PRIMARY KEY,
    merchant_id   text        NOT NULL,
    callback_id   text        NOT NULL,
    edge_call_id  text        NOT NULL,
    status        text        NOT NULL,
    reason        text,
    attempts      integer     NOT NULL,
    at            timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, callback_id, status, at)
);
