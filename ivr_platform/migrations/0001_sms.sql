-- SMS sent on a merchant's behalf: the row is written before the provider is called,
-- then it carries the provider's id and the latest delivery status; every status
-- recorded is also an event row (callbacks arrive out of order: sms_messages.status only
-- moves forward, the events keep what arrived).

CREATE TABLE sms_messages (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id   text        NOT NULL,
    to_number     text        NOT NULL CHECK (to_number ~ '^\+[1-9][0-9]{6,14}$'),
    sender        text        NOT NULL,
    body          text        NOT NULL CHECK (length(body) BETWEEN 1 AND 1600),
    encoding      text        NOT NULL CHECK (encoding IN ('gsm7', 'ucs2')),
    segments      integer     NOT NULL CHECK (segments >= 1),
    provider      text        NOT NULL,
    provider_id   text,
    status        text        NOT NULL DEFAULT 'pending' CHECK (status IN (
                      'pending', 'rejected', 'accepted', 'scheduled', 'queued', 'sending',
                      'sent', 'delivered', 'undelivered', 'failed', 'canceled', 'read')),
    error_code    integer,
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_id)
);

CREATE INDEX sms_messages_merchant ON sms_messages (merchant_id, created_at);

CREATE TABLE sms_events (
    sms_id      bigint      NOT NULL REFERENCES sms_messages (id) ON DELETE CASCADE,
    status      text        NOT NULL,
    error_code  integer,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX sms_events_sms ON sms_events (sms_id, at);
