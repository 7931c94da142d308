-- Billing records (billing.records.BillingRecord): one row per charge outcome of a
-- consultation. Migration set `billing_records`, applied on both sites: the callback site
-- writes each in the transaction of the settlement it records, with its `billing_record`
-- outbox message; the edge stores the ones it receives and lists them for the call center.
-- Append-only: a later outcome of the same consultation is a new record (a new record_id).
-- Money: integer yen for the charge; the legs' costs in yen as numeric without a scale
-- (converted exactly with the FX table kept in `fx`).

CREATE TABLE billing_records (
    id                    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id             text        NOT NULL UNIQUE,
    merchant_id           text        NOT NULL,
    consultation_id       text        NOT NULL,
    advisor_id            bigint,
    account               text        NOT NULL,
    paid_by               text        NOT NULL CHECK (paid_by IN ('prepaid', 'card')),
    state                 text        NOT NULL CHECK (state IN ('settled', 'charged',
                                                                 'failed', 'dunning')),
    price_per_minute_yen  integer     NOT NULL CHECK (price_per_minute_yen >= 0),
    talk_s                integer     NOT NULL CHECK (talk_s >= 0),
    billed_s              integer     NOT NULL CHECK (billed_s >= 0),
    total_yen             integer     NOT NULL CHECK (total_yen >= 0),
    tax_yen               integer     NOT NULL CHECK (tax_yen >= 0 AND tax_yen <= total_yen),
    legs                  jsonb       NOT NULL CHECK (jsonb_typeof(legs) = 'array'),
    fx                    jsonb       NOT NULL CHECK (jsonb_typeof(fx) = 'object'),
    at                    timestamptz NOT NULL,
    recorded_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_records_merchant ON billing_records (merchant_id, id);
