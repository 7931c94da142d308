-- A movement's legs are written by one statement (billing.ledger.post, the batched holds),
-- so the entries are checked once per statement, over the statement's new rows, instead of
-- once per leg at commit (a plpgsql call and a query for each of a batch's hundreds of
-- legs): every transaction among them balances (its legs sum to zero), and every entry's
-- balance_after is its book's balance before the statement plus the statement's legs of
-- that book up to it (the running sum, as migration 0013 back-filled it).
DROP TRIGGER billing_entries_balanced ON billing_entries;
DROP FUNCTION billing_check_balanced();

CREATE FUNCTION billing_check_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT transaction_id, sum(amount_yen) AS total INTO bad
      FROM new_entries GROUP BY transaction_id HAVING sum(amount_yen) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'billing transaction % does not balance (legs sum to %)',
            bad.transaction_id, bad.total USING ERRCODE = 'check_violation';
    END IF;
    WITH n AS (SELECT id, account_id, book, balance_after,
                      sum(amount_yen) OVER (PARTITION BY account_id, book ORDER BY id) AS added,
                      min(id) OVER (PARTITION BY account_id, book) AS first
               FROM new_entries),
         b AS (SELECT g.account_id, g.book,
                      coalesce((SELECT p.balance_after FROM billing_entries p
                                WHERE p.account_id = g.account_id AND p.book = g.book
                                  AND p.id < g.first
                                ORDER BY p.id DESC LIMIT 1), 0) AS before
               FROM (SELECT DISTINCT account_id, book, first FROM n) g)
    SELECT n.id, n.balance_after, b.before + n.added AS running INTO bad
      FROM n JOIN b USING (account_id, book)
     WHERE n.balance_after <> b.before + n.added LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'billing entry % says its book''s balance is % (the legs sum to %)',
            bad.id, bad.balance_after, bad.running USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER billing_entries_checked AFTER INSERT ON billing_entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT
    EXECUTE FUNCTION billing_check_entries();
