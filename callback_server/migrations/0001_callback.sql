-- The call-back site: merchants, the job queue, legs, CDRs and collected request info.
-- Migration set "callback" (callback site only). Needs the "link" set (outbox).

CREATE TABLE merchants (
    merchant_id          text        PRIMARY KEY,
    name                 text        NOT NULL,
    callback_caller_id   text        NOT NULL,          -- E.164, presented on the call-back
    pre_callback_delay_s numeric(8,3) NOT NULL,
    max_attempts         integer     NOT NULL CHECK (max_attempts > 0),
    retry_backoff_s      integer[]   NOT NULL,
    ring_timeout_s       integer     NOT NULL,
    ivr_flow             text        NOT NULL,
    operator             text        NOT NULL,
    inbound_tariff       text        NOT NULL,
    synced_at            timestamptz NOT NULL DEFAULT now()
);

-- The queue table. Workers claim rows FOR UPDATE SKIP LOCKED on this table only.
CREATE TABLE callback_requests (
    callback_id       text        PRIMARY KEY,
    edge_call_id      text        NOT NULL UNIQUE,    -- one inbound call, one call-back
    merchant_id       text        NOT NULL REFERENCES merchants,
    caller            text        NOT NULL,           -- E.164 with +
    dialed            text,
    announce_mode     text,
    received_at       timestamptz NOT NULL,           -- at the edge
    hungup_at         timestamptz,
    accepted_at       timestamptz NOT NULL DEFAULT now(),
    message_id        text        NOT NULL,           -- the link message that created it
    status            text        NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'dialing', 'completed', 'failed')),
    reason            text,                           -- stable reason code (dialer.Reason)
    attempts          integer     NOT NULL DEFAULT 0, -- rounds finished
    max_attempts      integer     NOT NULL,
    next_attempt_at   timestamptz NOT NULL,           -- not_before for the next round
    lease_owner       text,
    lease_expires_at  timestamptz,
    heartbeat_at      timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX callback_requests_due ON callback_requests (next_attempt_at)
    WHERE status = 'queued';
CREATE INDEX callback_requests_leases ON callback_requests (lease_expires_at)
    WHERE status = 'dialing';
CREATE INDEX callback_requests_merchant ON callback_requests (merchant_id, accepted_at);

-- One row per originated leg, written (and committed) BEFORE the originate.
CREATE TABLE callback_attempts (
    channel_id    text        PRIMARY KEY,            -- the ARI channelId we chose
    callback_id   text        NOT NULL REFERENCES callback_requests,
    merchant_id   text        NOT NULL,
    attempt_no    integer     NOT NULL,
    leg_seq       integer     NOT NULL,
    leg           text        NOT NULL CHECK (leg IN ('customer', 'operator')),
    carrier_id    text        NOT NULL,
    endpoint      text        NOT NULL,
    worker        text        NOT NULL,
    status        text        NOT NULL DEFAULT 'dialing'
                  CHECK (status IN ('dialing', 'originated', 'answered', 'failed', 'ended')),
    answered      boolean     NOT NULL DEFAULT false,
    cause         integer,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (callback_id, leg_seq)
);

CREATE TABLE cdrs (
    call_id          text          PRIMARY KEY,       -- = callback_attempts.channel_id
    callback_id      text          NOT NULL REFERENCES callback_requests,
    merchant_id      text          NOT NULL,
    leg              text          NOT NULL,
    destination      text          NOT NULL,
    carrier_id       text          NOT NULL,
    started_at       timestamptz   NOT NULL,
    answered_at      timestamptz,
    ended_at         timestamptz   NOT NULL,
    duration_s       numeric(12,3) NOT NULL,
    billed_s         integer       NOT NULL,
    hangup_cause     integer       NOT NULL,
    disposition      text          NOT NULL,
    carrier_cost     numeric(18,6),
    carrier_currency text,
    direct_cost      numeric(18,6),
    direct_currency  text,
    created_at       timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX cdrs_merchant ON cdrs (merchant_id, started_at);

CREATE TABLE request_info (
    id            bigserial   PRIMARY KEY,
    callback_id   text        NOT NULL REFERENCES callback_requests,
    merchant_id   text        NOT NULL,
    category      text        NOT NULL,
    fields        jsonb       NOT NULL,
    collected_at  timestamptz NOT NULL,
    message_id    text        NOT NULL UNIQUE        -- its outbox message
);
CREATE INDEX request_info_callback ON request_info (callback_id);

-- Wake the workers when a job becomes claimable (new, or queued again for a retry).
-- Payload: "<callback_id> <epoch seconds of next_attempt_at>". Delivered at commit.
CREATE FUNCTION callback_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'queued' THEN
        PERFORM pg_notify('callback_jobs',
                          NEW.callback_id || ' ' || extract(epoch FROM NEW.next_attempt_at));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER callback_jobs_notify
    AFTER INSERT OR UPDATE OF status, next_attempt_at ON callback_requests
    FOR EACH ROW EXECUTE FUNCTION callback_jobs_notify();
