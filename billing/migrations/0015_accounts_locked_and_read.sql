-- The first statement of a batch of first holds (billing.ledger.reserve_all): lock the
-- asks' accounts in id order (two batches sharing accounts never deadlock), then read each
-- ask's account, its available and held balances and the ask's reservation made already,
-- if any, in one round trip. A plpgsql function, because each of its statements sees what
-- was committed before that statement started: the read after the lock sees every movement
-- the lock's earlier holders wrote (one plain statement reads as of its start, before a
-- wait for the lock). Arguments: the asks' merchants, accounts and consultations, in the
-- asks' order; a row an ask whose account exists (n: the ask's place, from 1).
CREATE FUNCTION billing_locked_balances(merchants text[], accounts text[],
                                        consultations text[])
RETURNS TABLE (n bigint, account_id bigint, made bigint, available_yen bigint,
               held_yen bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM billing_accounts a
     WHERE (a.merchant_id, a.account) IN (SELECT * FROM unnest(merchants, accounts))
     ORDER BY a.id FOR UPDATE;
    RETURN QUERY
    SELECT k.n, a.id, x.id,
           coalesce((SELECT b.balance_after FROM billing_entries b
                     WHERE b.account_id = a.id AND b.book = 'available'
                     ORDER BY b.id DESC LIMIT 1), 0),
           coalesce((SELECT b.balance_after FROM billing_entries b
                     WHERE b.account_id = a.id AND b.book = 'held'
                     ORDER BY b.id DESC LIMIT 1), 0)
    FROM unnest(merchants, accounts, consultations) WITH ORDINALITY
             AS k (merchant_id, account, consultation_id, n)
    JOIN billing_accounts a ON a.merchant_id = k.merchant_id AND a.account = k.account
    LEFT JOIN billing_reservations x ON x.account_id = a.id
                                    AND x.consultation_id = k.consultation_id;
END $$;
