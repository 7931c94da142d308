-- A consultation's billing record counts the call-back's customer leg, whose CDR is stored
-- when that leg ends (after the settlement): the customer legs rated so far, and the
-- records written before theirs was (sent once it is: billing.records.customer_leg_rated).
CREATE TABLE billing_customer_legs (
    call_id       text        PRIMARY KEY,
    carrier_id    text,
    cost_amount   numeric,
    cost_currency text,
    rated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing_records_awaiting (
    record_id        text        PRIMARY KEY,
    customer_call_id text        NOT NULL,
    record           jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_records_awaiting_call ON billing_records_awaiting (customer_call_id);
