-- The link between the sites: an outbox on the sending side and a record of
-- received message ids on the receiving side. Both sites apply this set.

CREATE TABLE outbox (
    message_id        uuid        PRIMARY KEY,
    kind              text        NOT NULL,
    path              text        NOT NULL,
    body              bytea       NOT NULL,
    merchant_id       text,
    held              boolean     NOT NULL DEFAULT false,  -- written, not yet to be sent
    created_at        timestamptz NOT NULL DEFAULT now(),
    released_at       timestamptz,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    attempts          integer     NOT NULL DEFAULT 0,
    lease_owner       text,
    lease_expires_at  timestamptz,
    last_error        text,
    last_route        text,
    delivered_at      timestamptz,
    dead_at           timestamptz,                         -- refused by the peer as invalid
    response_status   integer,
    response_body     jsonb
);

-- The relay's work list: pending, releasable, due.
CREATE INDEX outbox_pending ON outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL AND NOT held;
CREATE INDEX outbox_held ON outbox (created_at) WHERE held AND delivered_at IS NULL;

-- Wake the relay when a message becomes sendable. NOTIFY is delivered at
-- commit, so the relay never sees a message whose transaction rolled back.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT NEW.held AND NEW.delivered_at IS NULL AND NEW.dead_at IS NULL THEN
        PERFORM pg_notify('outbox', NEW.message_id::text);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_notify_insert AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_notify();
CREATE TRIGGER outbox_notify_release AFTER UPDATE OF held ON outbox
    FOR EACH ROW WHEN (OLD.held AND NOT NEW.held) EXECUTE FUNCTION outbox_notify();

-- Received messages: the first answer is kept, so a repeat gets it back.
CREATE TABLE inbound_messages (
    message_id       text        PRIMARY KEY,
    kind             text        NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    response_status  integer     NOT NULL,
    response_body    jsonb       NOT NULL
);
CREATE INDEX inbound_messages_received ON inbound_messages (received_at);
