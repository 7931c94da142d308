-- Postpaid: a card on file per customer account, consultations charged to it after they
-- end, dunning of failed charges, notices, and the Stripe events applied. Append-only,
-- like the ledger: a state is the newest row, never an updated one.

-- A card registration: the Stripe Customer and the SetupIntent the card page confirms
-- (its client secret, and a random token for a link the customer can be sent).
CREATE TABLE billing_card_registrations (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id    text        NOT NULL,
    account_id     bigint      NOT NULL REFERENCES billing_accounts,
    customer       text        NOT NULL CHECK (length(customer) BETWEEN 1 AND 255),
    setup_intent   text        NOT NULL UNIQUE CHECK (length(setup_intent) BETWEEN 1 AND 255),
    client_secret  text        NOT NULL CHECK (length(client_secret) BETWEEN 1 AND 500),
    link_token     text        NOT NULL UNIQUE CHECK (length(link_token) BETWEEN 16 AND 128),
    requested_by   text        NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 128),
    requested_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_card_registrations_account ON billing_card_registrations (account_id, id);

-- A registration whose SetupIntent succeeded: the card on file is the account's newest.
CREATE TABLE billing_cards (
    registration_id bigint      PRIMARY KEY REFERENCES billing_card_registrations,
    payment_method  text        NOT NULL CHECK (length(payment_method) BETWEEN 1 AND 255),
    confirmed_at    timestamptz NOT NULL DEFAULT now()
);

-- A consultation of a postpaid customer, rated once when it ended: what the card owes.
CREATE TABLE billing_postpaid_charges (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id     text        NOT NULL,
    account_id      bigint      NOT NULL REFERENCES billing_accounts,
    consultation_id text        NOT NULL CHECK (length(consultation_id) BETWEEN 1 AND 128),
    terms           jsonb       NOT NULL,
    talk_s          integer     NOT NULL CHECK (talk_s >= 0),
    billed_s        integer     NOT NULL CHECK (billed_s >= 0),
    total_yen       bigint      NOT NULL CHECK (total_yen > 0),
    tax_yen         bigint      NOT NULL CHECK (tax_yen >= 0 AND tax_yen <= total_yen),
    requested_by    text        NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 128),
    requested_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, consultation_id)
);

-- One try at charging it: written before Stripe is called, with the key (derived from
-- the consultation and the attempt number) the PaymentIntent carries in its metadata.
-- No card on file: customer and payment_method are null and the outcome is failed.
CREATE TABLE billing_postpaid_attempts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    charge_id       bigint      NOT NULL REFERENCES billing_postpaid_charges,
    attempt         integer     NOT NULL CHECK (attempt >= 1),
    idempotency_key text        NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    customer        text,
    payment_method  text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (charge_id, attempt)
);
CREATE INDEX billing_postpaid_attempts_started ON billing_postpaid_attempts (started_at);

CREATE TABLE billing_postpaid_outcomes (
    attempt_id     bigint      PRIMARY KEY REFERENCES billing_postpaid_attempts,
    outcome        text        NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    payment_intent text,
    failure        text        NOT NULL DEFAULT '',
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((outcome = 'failed') = (failure <> ''))
);

-- Durable notices for the customer or the merchant's staff (a charge failed: the account
-- is in dunning; a charge in dunning was paid), read by whoever delivers them.
CREATE TABLE billing_notices (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id text        NOT NULL,
    account_id  bigint      NOT NULL REFERENCES billing_accounts,
    kind        text        NOT NULL CHECK (kind IN ('charge-failed', 'charge-recovered')),
    charge_id   bigint      NOT NULL REFERENCES billing_postpaid_charges,
    detail      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_notices_merchant ON billing_notices (merchant_id, id);

-- Stripe webhook events applied: a replay of one is answered without applying it again.
CREATE TABLE billing_stripe_events (
    event_id    text        PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 255),
    type        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER billing_card_registrations_append_only BEFORE UPDATE OR DELETE
    ON billing_card_registrations FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_cards_append_only BEFORE UPDATE OR DELETE
    ON billing_cards FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_postpaid_charges_append_only BEFORE UPDATE OR DELETE
    ON billing_postpaid_charges FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_postpaid_attempts_append_only BEFORE UPDATE OR DELETE
    ON billing_postpaid_attempts FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_postpaid_outcomes_append_only BEFORE UPDATE OR DELETE
    ON billing_postpaid_outcomes FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_notices_append_only BEFORE UPDATE OR DELETE
    ON billing_notices FOR EACH ROW EXECUTE FUNCTION billing_append_only();
