-- Consultations in progress (callback_server.consult_live): one row per talking
-- consultation, kept by its runner while the customer and an advisor are bridged and
-- deleted once its record is saved. A row whose runner is gone (the server was killed)
-- is what the restart reconciles: the legs ended or hung up, the record written once,
-- the advisor's presence ended, the prepaid reservation settled.
--
-- `snapshot`: the consultation record (advisors.records wire form) as it would be if the
-- consultation had failed when the row was written; the reconciler replaces its end.
CREATE TABLE consult_live (
    consultation_id  text        PRIMARY KEY,
    callback_id      text        NOT NULL,
    merchant_id      text        NOT NULL,
    customer_channel text        NOT NULL,
    advisor_channel  text        NOT NULL,
    bridge_id        text        NOT NULL,
    advisor_id       bigint      NOT NULL,
    presence_id      text        NOT NULL,   -- the consultation id the presence is under
    snapshot         jsonb       NOT NULL CHECK (jsonb_typeof(snapshot) = 'object'),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consult_live_callback ON consult_live (callback_id);
