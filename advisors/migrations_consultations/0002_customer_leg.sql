-- A consultation record lists the call-back's customer leg too, whose CDR is stored when
-- that leg ends (after the consultation): on the callback site a record saved before
-- then waits here, unsent, until the leg is rated (billing.records.customer_leg_rated,
-- in the CDR's transaction) or its wait is over (billing.records.send_overdue: the leg
-- listed with `cost_unknown`). The edge never has rows in the waiting table.
ALTER TABLE consultation_leg_costs
    ADD COLUMN cost_unknown boolean NOT NULL DEFAULT false,
    ADD CHECK (NOT cost_unknown OR cost_amount IS NULL);

CREATE TABLE consultations_awaiting_customer_leg (
    consultation_id  text        PRIMARY KEY REFERENCES consultations (consultation_id)
                                     ON DELETE CASCADE,
    customer_call_id text        NOT NULL,
    path             text        NOT NULL,   -- the link path its message goes to
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consultations_awaiting_customer_leg_call
    ON consultations_awaiting_customer_leg (customer_call_id);
