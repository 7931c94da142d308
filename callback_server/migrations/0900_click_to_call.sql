-- Web click-to-call: a request of POST /v1/consultations is a call-back job (its
-- callback_requests row: queued, claimed, leased and rescued like any) whose round dials
-- the customer and the advisor picked (callback_server.click_runner). Stored before the
-- 202, in the same transaction as the job; Idempotency-Key: one job per merchant and key.
CREATE TABLE click_to_call_requests (
    callback_id      text        PRIMARY KEY REFERENCES callback_requests,
    merchant_id      text        NOT NULL,
    advisor_id       bigint      NOT NULL,
    idempotency_key  text,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, idempotency_key)
);
