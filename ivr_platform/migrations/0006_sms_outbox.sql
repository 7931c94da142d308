-- SMS through a durable outbox: a row accepted for sending is delivered by the site's
-- SMS worker (lease, attempt, result), retried on a backoff across restarts, and given
-- up as 'expired' past the maximum age. attempt_started_at is set while an attempt's
-- outcome is unknown (the provider may have taken it): the next claim looks the message
-- up at the provider before sending it again.

ALTER TABLE sms_messages
    ADD COLUMN attempts           integer     NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN leased_by          text,
    ADD COLUMN leased_until       timestamptz,
    ADD COLUMN attempt_started_at timestamptz,
    ADD COLUMN last_error         text;

ALTER TABLE sms_messages DROP CONSTRAINT sms_messages_status_check;
ALTER TABLE sms_messages ADD CONSTRAINT sms_messages_status_check CHECK (status IN (
    'pending', 'rejected', 'expired', 'accepted', 'scheduled', 'queued', 'sending', 'sent',
    'delivered', 'undelivered', 'failed', 'canceled', 'read'));

-- a row the previous sender left pending may have reached the provider: looked up first
UPDATE sms_messages SET attempt_started_at = created_at WHERE status = 'pending';

CREATE INDEX sms_messages_due ON sms_messages (next_attempt_at) WHERE status = 'pending';
