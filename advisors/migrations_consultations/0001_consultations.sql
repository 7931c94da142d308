-- Consultation records (advisors.records.ConsultationRecord), per merchant: one row per
-- consultation_id. Migration set `consultations`, applied on both sites: the callback
-- site writes each record once at its end together with its `consultation` outbox
-- message, the edge stores the records it receives; both read them for their APIs, with
-- the same code (advisors.record_store). `recorded_at` is when this site stored it.
--
-- Rings, holds and transfers are jsonb arrays in the record's wire form (no money in
-- them; always read and written whole). Leg costs are rows of their own, money as
-- numeric + currency (numeric without a scale: the amount's digits are kept exactly).

CREATE TABLE consultations (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- listing order
    consultation_id  text        NOT NULL UNIQUE,
    merchant_id      text        NOT NULL,
    callback_id      text,
    edge_call_id     text,
    customer_number  text        NOT NULL,
    customer_id      bigint,
    advisor_id       bigint,
    group_id         bigint,
    method           text        NOT NULL CHECK (method IN ('click_to_call', 'online_list',
                                                            'all_list', 'code', 'group')),
    requested_at     timestamptz NOT NULL,
    rings            jsonb       NOT NULL CHECK (jsonb_typeof(rings) = 'array'),
    answered_at      timestamptz,
    holds            jsonb       NOT NULL CHECK (jsonb_typeof(holds) = 'array'),
    transfers        jsonb       NOT NULL CHECK (jsonb_typeof(transfers) = 'array'),
    ended_at         timestamptz NOT NULL,
    talk_s           integer     NOT NULL CHECK (talk_s >= 0),
    end_reason       text        NOT NULL CHECK (end_reason IN (
                         'customer_hangup', 'advisor_hangup', 'forced_end', 'cut_off',
                         'lines_busy', 'no_advisor', 'customer_abandoned', 'failed')),
    customer_call_id text,
    recorded_at      timestamptz NOT NULL DEFAULT now(),  -- when this site stored it
    CHECK (ended_at >= requested_at),
    CHECK (answered_at IS NULL OR advisor_id IS NOT NULL)
);
CREATE INDEX consultations_merchant ON consultations (merchant_id, id);
CREATE INDEX consultations_advisor ON consultations (merchant_id, advisor_id, id);
CREATE INDEX consultations_customer ON consultations (merchant_id, customer_id, id);

CREATE TABLE consultation_leg_costs (
    consultation_id text    NOT NULL REFERENCES consultations (consultation_id)
                                ON DELETE CASCADE,
    position        integer NOT NULL CHECK (position >= 0),  -- order in the record
    call_id         text    NOT NULL,
    role            text    NOT NULL,
    carrier_id      text,
    cost_amount     numeric,
    cost_currency   text    CHECK (cost_currency ~ '^[A-Z]{3}$'),
    PRIMARY KEY (consultation_id, position),
    UNIQUE (consultation_id, call_id),
    CHECK ((cost_amount IS NULL) = (cost_currency IS NULL))
);
