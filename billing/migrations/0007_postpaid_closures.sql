-- A postpaid charge in dunning closed by an operator: paid another way (a bank transfer,
-- cash) or written off, with who and why. A closed charge is neither unpaid nor retried.
-- Append-only.

CREATE TABLE billing_postpaid_closures (
    charge_id  bigint      PRIMARY KEY REFERENCES billing_postpaid_charges,
    how        text        NOT NULL CHECK (how IN ('paid-elsewhere', 'written-off')),
    by_whom    text        NOT NULL CHECK (length(by_whom) BETWEEN 1 AND 128),
    reason     text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    closed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER billing_postpaid_closures_append_only BEFORE UPDATE OR DELETE
    ON billing_postpaid_closures FOR EACH ROW EXECUTE FUNCTION billing_append_only();
