-- Bank transfers an operator enters as deposits: what the bank statement says (amount,
-- date, payer name, the bank's reference), who entered it and when, and the ledger
-- movement it made. A bank reference is entered once per merchant. Append-only.

CREATE TABLE billing_bank_transfers (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id    text        NOT NULL,
    account_id     bigint      NOT NULL REFERENCES billing_accounts,
    amount_yen     bigint      NOT NULL CHECK (amount_yen > 0),
    transferred_on date        NOT NULL,
    payer_name     text        NOT NULL CHECK (length(payer_name) BETWEEN 1 AND 100),
    bank_reference text        NOT NULL CHECK (length(bank_reference) BETWEEN 1 AND 64),
    entered_by     text        NOT NULL CHECK (length(entered_by) BETWEEN 1 AND 128),
    entered_at     timestamptz NOT NULL DEFAULT now(),
    transaction_id bigint      NOT NULL UNIQUE REFERENCES billing_transactions,
    UNIQUE (merchant_id, bank_reference)
);
CREATE INDEX billing_bank_transfers_merchant ON billing_bank_transfers (merchant_id, id);

CREATE TRIGGER billing_bank_transfers_append_only BEFORE UPDATE OR DELETE
    ON billing_bank_transfers FOR EACH ROW EXECUTE FUNCTION billing_append_only();
