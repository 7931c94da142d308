-- A reservation's account is checked once per inserting statement instead of by the foreign
-- key's trigger once per row. The foreign key's check runs a query per row (the account by
-- its key, locked FOR KEY SHARE so that it cannot be deleted or its key changed before the
-- reservation commits): a batch of 100 holds ran it 100 times, ≈ 2-7.5 µs of the
-- backend's CPU a hold of the ≈ 11-20 µs its insert costs (the insert of the bench's first
-- 100 holds, variants made in a transaction rolled back: bench/README.md, "the hold's row").
--
-- Why the guarantee, "every reservation names an account that exists", still holds:
-- 1. accounts are append-only from here, as the ledger's other rows are (0001): an update
--    or a delete of an account is refused by a trigger, so an account that exists when a
--    reservation is written exists for good, and its id never changes (nothing in the code
--    updated or deleted an account before; their creation is INSERT ... ON CONFLICT DO
--    NOTHING, which fires no update trigger). The lock the foreign key took guarded
--    against exactly those two, so it has nothing left to guard.
-- 2. the statement that writes reservations is checked after it, in its transaction,
--    before it can commit: one anti-join of the statement's new rows against the accounts'
--    key, an error (foreign_key_violation, as the foreign key raised) if any row names no
--    account. Every writer is checked: the batched holds (billing_hold_locked, 0024, and
--    billing_reserve_holds, 0021, both write only for accounts they locked by id in the
--    same transaction) and any other insert. A reservation is never updated (0001's
--    append-only trigger), so insert is the only way a row gets an account_id.
-- 3. TRUNCATE, the one removal the append-only triggers let through (tests, operators):
--    with the foreign key, TRUNCATE billing_accounts ... CASCADE emptied the reservations
--    too. Now a trigger after the accounts' TRUNCATE refuses it (the whole statement
--    rolled back) if any reservation is left: name billing_reservations in the same
--    TRUNCATE. (TRUNCATE billing_accounts without CASCADE is still refused by the
--    transactions' and the entries' foreign keys to it; a TRUNCATE inside the trigger
--    cannot empty tables the outer TRUNCATE holds open.) A TRUNCATE waits for the account
--    reads of a transaction writing reservations (its ACCESS EXCLUSIVE lock against their
--    ACCESS SHARE) and then finds their reservations committed: refused, or emptied with
--    them.
--
-- Concurrency: the check reads the accounts committed before it (READ COMMITTED: a new
-- snapshot for the trigger's query), or written by its own transaction; an account
-- inserted by a transaction not yet committed is not seen and the reservation refused, as
-- the foreign key refused it. Under REPEATABLE READ the check's snapshot is the
-- transaction's, so an account committed after it began is not seen: a refusal at worst,
-- never an orphan.

CREATE TRIGGER billing_accounts_append_only BEFORE UPDATE OR DELETE ON billing_accounts
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();

CREATE FUNCTION billing_reservations_accounts_exist() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    SELECT n.account_id INTO missing FROM billing_reservations_written n
     WHERE NOT EXISTS (SELECT 1 FROM billing_accounts a WHERE a.id = n.account_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'billing_reservations: account % does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER billing_reservations_accounts_exist AFTER INSERT ON billing_reservations
    REFERENCING NEW TABLE AS billing_reservations_written
    FOR EACH STATEMENT EXECUTE FUNCTION billing_reservations_accounts_exist();

CREATE FUNCTION billing_accounts_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM billing_reservations LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'billing_accounts truncated with reservations left: truncate '
                        'billing_reservations in the same statement'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER billing_accounts_truncated AFTER TRUNCATE ON billing_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION billing_accounts_truncated();

-- every reservation written so far has its account (the foreign key held until here)
ALTER TABLE billing_reservations DROP CONSTRAINT billing_reservations_account_id_fkey;
