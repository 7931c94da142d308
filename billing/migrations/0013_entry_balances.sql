-- Each entry carries its book's balance after it (balance_after: the sum of the account's
-- entries of that book up to and including it, in id order), written with the entry under
-- the account's lock, so a balance is read from the book's newest entry instead of summing
-- its whole history. Entries stay append-only; existing ones are back-filled here (the
-- append-only trigger is set aside for this one conversion).
ALTER TABLE billing_entries ADD COLUMN balance_after bigint;
ALTER TABLE billing_entries DISABLE TRIGGER billing_entries_append_only;
UPDATE billing_entries e SET balance_after = s.running
FROM (SELECT id, sum(amount_yen) OVER (PARTITION BY account_id, book ORDER BY id)
          AS running
      FROM billing_entries) s
WHERE s.id = e.id;
ALTER TABLE billing_entries ENABLE TRIGGER billing_entries_append_only;
ALTER TABLE billing_entries ALTER COLUMN balance_after SET NOT NULL;
-- the newest entry of a book (its balance), and the sums the reports still take
DROP INDEX billing_entries_account_book;
CREATE INDEX billing_entries_account_book ON billing_entries (account_id, book, id)
    INCLUDE (amount_yen, balance_after);
