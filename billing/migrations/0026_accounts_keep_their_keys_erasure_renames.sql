-- An account's name may change; its id and merchant may not, and it is never deleted.
--
-- 0025 made billing_accounts refuse every UPDATE and DELETE, so that an account a
-- reservation names exists for good with the same id (the guarantee the foreign key gave
-- before 0025 dropped it). But one writer does update accounts: a customer's erasure
-- (callback_server/erasure.py) replaces the `account` column, the customer's own name for
-- the account, by its pseudonym, as it does in every table that holds it. The guarantee
-- needs less than 0025 took: a row that is never deleted and whose id never changes. So
-- from here an UPDATE that keeps `id` and `merchant_id` (a tenant's account never moves to
-- another merchant) goes through, and DELETE and an UPDATE of either key are refused, as
-- before with SQLSTATE 42501.

CREATE FUNCTION billing_accounts_keep_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'billing_accounts is append-only: DELETE refused'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.merchant_id IS DISTINCT FROM OLD.merchant_id THEN
        RAISE EXCEPTION 'billing_accounts is append-only: an account''s id and merchant '
                        'never change (UPDATE refused)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER billing_accounts_append_only ON billing_accounts;
CREATE TRIGGER billing_accounts_keep_keys BEFORE UPDATE OR DELETE ON billing_accounts
    FOR EACH ROW EXECUTE FUNCTION billing_accounts_keep_keys();
