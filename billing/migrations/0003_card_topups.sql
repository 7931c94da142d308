-- Card top-ups through Stripe: the request is a durable row (with the idempotency key the
-- PaymentIntent also carries in its metadata) before Stripe is called; its outcome is a
-- second row, with the deposit it made. A request without an outcome is pending: after a
-- crash it is reconciled by looking the PaymentIntent up by that key. Append-only.

CREATE TABLE billing_card_topups (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id     text        NOT NULL,
    account_id      bigint      NOT NULL REFERENCES billing_accounts,
    amount_yen      bigint      NOT NULL CHECK (amount_yen > 0),
    idempotency_key text        NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    customer        text        NOT NULL CHECK (length(customer) BETWEEN 1 AND 255),
    payment_method  text        NOT NULL CHECK (length(payment_method) BETWEEN 1 AND 255),
    requested_by    text        NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 128),
    requested_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing_card_topup_outcomes (
    topup_id        bigint      PRIMARY KEY REFERENCES billing_card_topups,
    outcome         text        NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'abandoned')),
    payment_intent  text,
    failure         text        NOT NULL DEFAULT '',
    -- the deposit a succeeded top-up made
    transaction_id  bigint      UNIQUE REFERENCES billing_transactions,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((outcome = 'succeeded') = (transaction_id IS NOT NULL))
);
CREATE INDEX billing_card_topups_pending ON billing_card_topups (requested_at);

CREATE TRIGGER billing_card_topups_append_only BEFORE UPDATE OR DELETE
    ON billing_card_topups FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_card_topup_outcomes_append_only BEFORE UPDATE OR DELETE
    ON billing_card_topup_outcomes FOR EACH ROW EXECUTE FUNCTION billing_append_only();
