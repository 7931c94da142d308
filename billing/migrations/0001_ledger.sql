-- The prepaid ledger: per customer account per merchant, double-entry and append-only.
--
-- A movement is one billing_transactions row (what happened, to which account, who did
-- it and why) with its billing_entries legs, whose amounts sum to zero (checked when the
-- transaction commits). An account's books:
--   available  the customer's money free to spend
--   held       the customer's money reserved by live consultations
--   funding    money that came in from outside (deposits) or went back out
--   revenue    the merchant's earnings (charges; refunds take from it)
--   adjustment operator corrections
-- Balances are sums of entries; nothing is ever updated or deleted (triggers refuse it).
-- A reservation and its settlement are rows too: a reservation is live until its
-- settlement row exists.

CREATE TABLE billing_accounts (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id text        NOT NULL,
    account     text        NOT NULL CHECK (length(account) BETWEEN 1 AND 64),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, account)
);

CREATE TABLE billing_reservations (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint      NOT NULL REFERENCES billing_accounts,
    consultation_id text        NOT NULL CHECK (length(consultation_id) BETWEEN 1 AND 128),
    -- the billing.rating.Terms the consultation is rated with
    terms           jsonb       NOT NULL,
    held_yen        bigint      NOT NULL CHECK (held_yen >= 0),
    -- the talk seconds the hold pays for: the consultation is cut off there
    allowed_s       integer     NOT NULL CHECK (allowed_s >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, consultation_id)
);

CREATE TABLE billing_settlements (
    reservation_id bigint      PRIMARY KEY REFERENCES billing_reservations,
    talk_s         integer     NOT NULL CHECK (talk_s >= 0),
    billed_s       integer     NOT NULL CHECK (billed_s >= 0),
    total_yen      bigint      NOT NULL CHECK (total_yen >= 0),
    tax_yen        bigint      NOT NULL CHECK (tax_yen >= 0 AND tax_yen <= total_yen),
    released_yen   bigint      NOT NULL CHECK (released_yen >= 0),
    settled_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing_transactions (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id     bigint      NOT NULL REFERENCES billing_accounts,
    kind           text        NOT NULL CHECK (kind IN ('deposit', 'charge', 'refund',
                                   'adjustment', 'hold', 'release')),
    amount_yen     bigint      NOT NULL CHECK (amount_yen > 0),
    by_whom        text        NOT NULL CHECK (length(by_whom) BETWEEN 1 AND 128),
    reason         text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    reservation_id bigint      REFERENCES billing_reservations,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind IN ('hold', 'release')) <= (reservation_id IS NOT NULL))
);
CREATE INDEX billing_transactions_account ON billing_transactions (account_id, id);

CREATE TABLE billing_entries (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id bigint      NOT NULL REFERENCES billing_transactions,
    account_id     bigint      NOT NULL REFERENCES billing_accounts,
    book           text        NOT NULL CHECK (book IN ('available', 'held', 'funding',
                                   'revenue', 'adjustment')),
    amount_yen     bigint      NOT NULL CHECK (amount_yen <> 0)
);
CREATE INDEX billing_entries_account_book ON billing_entries (account_id, book)
    INCLUDE (amount_yen);
CREATE INDEX billing_entries_transaction ON billing_entries (transaction_id);

-- Every transaction's legs sum to zero, checked at commit (so the legs may be inserted
-- one by one).
CREATE FUNCTION billing_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
BEGIN
    SELECT coalesce(sum(amount_yen), 0) INTO total
      FROM billing_entries WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'billing transaction % does not balance (legs sum to %)',
            NEW.transaction_id, total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER billing_entries_balanced AFTER INSERT ON billing_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION billing_check_balanced();

-- Append-only: an entry, a transaction, a reservation or a settlement is never changed
-- or removed; a mistake is corrected by a new movement (an adjustment, a refund).
CREATE FUNCTION billing_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused (post a correcting movement instead)',
        TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER billing_entries_append_only BEFORE UPDATE OR DELETE ON billing_entries
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_transactions_append_only BEFORE UPDATE OR DELETE
    ON billing_transactions FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_reservations_append_only BEFORE UPDATE OR DELETE
    ON billing_reservations FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_settlements_append_only BEFORE UPDATE OR DELETE
    ON billing_settlements FOR EACH ROW EXECUTE FUNCTION billing_append_only();
