-- What a postpaid account stands at (its unpaid and failed charges: admission's
-- "unpaid-limit" and "in-dunning") is read from the account's charges since its oldest
-- unpaid one, not from its whole history. Before, admission read every charge the
-- account ever had, each with its newest attempt, that attempt's outcome and its closure:
-- three probes a charge, for a customer with 100 paid consultations 300 probes an
-- admission. In the reserve + authorise bench with 20 postpaid accounts of 100 paid charges
-- each (bench/README.md, "a postpaid customer's history"), the database's CPU a burst of
-- 200 asks rose by 70-100 %; at 1,000 charges it would be ten times that.
--
-- Each charge row carries ``open_from``, as each reservation carries ``live_from`` (0021):
-- an id at or below every charge of its account unpaid (pending or failed) when it was
-- written, its own id when none was. Every unpaid charge of the account has an id at or
-- above its newest charge's ``open_from``, because:
--  * charges are written under their account's row lock, ids taken after it (billing.
--    ledger.account_id locks the account before Postpaid.record inserts; the trigger below
--    takes the lock too and refuses a charge whose id is below one of the account's
--    existing charges, which only a writer that took its id before the lock can produce),
--    so each new charge's ``open_from`` is computed over all the account's charges;
--  * a charge is unpaid when written (it has no attempt yet, or its first has no outcome);
--  * a charge once paid or closed is never unpaid again: a new attempt is refused for a
--    charge that is paid or closed (the second trigger below; Postpaid.retry takes one only
--    for a charge in dunning, under the charge's row lock, as the operator's closing does).
-- Rows written before this migration have none: an account whose newest charge is one of
-- them is read from 0, as before.

ALTER TABLE billing_postpaid_charges ADD COLUMN open_from bigint;
CREATE INDEX billing_postpaid_charges_account_newest ON billing_postpaid_charges (account_id, id)
    INCLUDE (open_from);

-- whether charge ``charge`` is unpaid (billing.standing.CHARGES' pending or failed): not
-- closed, and its newest attempt (if any) without an outcome or failed
CREATE FUNCTION billing_postpaid_charge_unpaid(charge bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (SELECT 1 FROM billing_postpaid_closures x WHERE x.charge_id = charge)
       AND coalesce((SELECT o.outcome FROM billing_postpaid_attempts t
                     LEFT JOIN billing_postpaid_outcomes o ON o.attempt_id = t.id
                     WHERE t.charge_id = charge ORDER BY t.attempt DESC LIMIT 1),
                    'failed') <> 'succeeded'
$$;

CREATE FUNCTION billing_postpaid_charge_open_from() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    newest record;
BEGIN
    PERFORM 1 FROM billing_accounts WHERE id = NEW.account_id FOR UPDATE;
    SELECT n.id, n.open_from INTO newest FROM billing_postpaid_charges n
     WHERE n.account_id = NEW.account_id ORDER BY n.id DESC LIMIT 1;
    IF newest.id > NEW.id THEN
        RAISE EXCEPTION 'postpaid charge % of account % is older than the account''s newest charge', NEW.id, NEW.account_id
            USING ERRCODE = 'serialization_failure',
                  HINT = 'lock the account (billing.ledger.account_id) before inserting its charge';
    END IF;
    NEW.open_from := coalesce(
        (SELECT min(c.id) FROM billing_postpaid_charges c
         WHERE c.account_id = NEW.account_id
           AND c.id >= coalesce(newest.open_from, 0)
           AND billing_postpaid_charge_unpaid(c.id)),
        NEW.id);
    RETURN NEW;
END $$;

CREATE TRIGGER billing_postpaid_charges_open_from BEFORE INSERT ON billing_postpaid_charges
    FOR EACH ROW EXECUTE FUNCTION billing_postpaid_charge_open_from();

CREATE FUNCTION billing_postpaid_attempt_of_unpaid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT billing_postpaid_charge_unpaid(NEW.charge_id) THEN
        RAISE EXCEPTION 'postpaid charge % is paid or closed: it takes no new attempt', NEW.charge_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER billing_postpaid_attempts_of_unpaid BEFORE INSERT ON billing_postpaid_attempts
    FOR EACH ROW EXECUTE FUNCTION billing_postpaid_attempt_of_unpaid();

-- billing_admit_and_hold (0027) with what the account stands at read as above
-- (billing.standing.unpaid_sql); nothing else changed. tests/unit/
-- test_billing_admit_hold_function.py holds the body equal to billing.admission.
-- admit_and_hold_sql(HOLD_ASKS).

CREATE OR REPLACE FUNCTION billing_admit_and_hold(text[], text[], bigint[], boolean[], int[],
                                                  text[], int[], boolean[])
RETURNS TABLE (n bigint, account text, policy text, group_policy text,
               available_yen bigint, has_card boolean, unpaid bigint, failed bigint,
               held boolean, needed bigint, reservation_id bigint, made boolean,
               hold_available_yen bigint, held_yen bigint, allowed_s int)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM billing_accounts acct
     WHERE (acct.merchant_id, acct.account) IN (SELECT w.merchant_id, w.account
                                                FROM (SELECT k.n, k.merchant_id, k.account AS account, k.group_id, k.postpaid, k.price, k.consultation_id, k.at_most_s, k.hold
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[], $5::int[], $6::text[], $7::int[], $8::bool[])
         WITH ORDINALITY AS k (merchant_id, account, group_id, postpaid, price, consultation_id, at_most_s, hold, n)) w WHERE w.hold)
     ORDER BY acct.id FOR UPDATE;
    RETURN QUERY
    WITH a AS (
    WITH w AS (SELECT k.n, k.merchant_id, k.account AS account, k.group_id, k.postpaid, k.price, k.consultation_id, k.at_most_s, k.hold
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[], $5::int[], $6::text[], $7::int[], $8::bool[])
         WITH ORDINALITY AS k (merchant_id, account, group_id, postpaid, price, consultation_id, at_most_s, hold, n))
    SELECT w.n, w.account, w.merchant_id, w.price, w.consultation_id, w.at_most_s, w.hold, acct.id AS account_id, l.first_id AS live_from,
           CASE WHEN w.hold THEN (SELECT x.id FROM billing_reservations x
                                  WHERE x.account_id = acct.id
                                    AND x.consultation_id = w.consultation_id) END AS made,
           
           CASE WHEN p.id IS NOT NULL THEN jsonb_build_object('unit_s', p.unit_s, 'grace_s', p.grace_s, 'minimum_yen', p.minimum_yen, 'max_talk_s', p.max_talk_s, 'tax_percent', p.tax_percent)
               END AS policy,
           CASE WHEN g.id IS NOT NULL THEN jsonb_build_object('unit_s', g.unit_s, 'grace_s', g.grace_s, 'minimum_yen', g.minimum_yen, 'max_talk_s', g.max_talk_s, 'tax_percent', g.tax_percent)
               END AS group_policy,
           CASE WHEN NOT w.postpaid AND acct.id IS NOT NULL THEN
               coalesce((SELECT b.balance_after FROM billing_entries b
                            WHERE b.account_id = acct.id AND b.book = 'available'
                            ORDER BY b.id DESC LIMIT 1), 0)
               - l.held_yen
               END AS available_yen,
           w.postpaid AND EXISTS (SELECT 1 FROM billing_card_registrations r
                                  JOIN billing_cards cd ON cd.registration_id = r.id
                                  WHERE r.account_id = acct.id) AS has_card,
           s.unpaid, s.failed
    FROM w
    LEFT JOIN billing_accounts acct ON acct.merchant_id = w.merchant_id
                                   AND acct.account = w.account
    LEFT JOIN LATERAL billing_live_holds(acct.id) l ON NOT w.postpaid
    LEFT JOIN LATERAL (SELECT * FROM billing_policies
                       WHERE merchant_id = w.merchant_id ORDER BY id DESC LIMIT 1) p ON true
    LEFT JOIN LATERAL (SELECT * FROM billing_group_policies
                       WHERE merchant_id = w.merchant_id AND group_id = w.group_id
                       ORDER BY id DESC LIMIT 1) g ON true
    LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE state IN ('pending', 'failed')) AS unpaid,
               count(*) FILTER (WHERE state = 'failed') AS failed
        FROM (
    SELECT c.*, a.account, l.attempt, o.outcome, o.payment_intent, o.failure,
           x.how AS closed,
           CASE WHEN x.charge_id IS NOT NULL THEN 'closed'
                WHEN o.outcome IS NULL THEN 'pending'
                WHEN o.outcome = 'succeeded' THEN 'paid' ELSE 'failed' END AS state
    FROM billing_postpaid_charges c
    JOIN billing_accounts a ON a.id = c.account_id
    LEFT JOIN LATERAL (SELECT t.id, t.attempt FROM billing_postpaid_attempts t
                       WHERE t.charge_id = c.id ORDER BY t.attempt DESC LIMIT 1) l ON true
    LEFT JOIN billing_postpaid_outcomes o ON o.attempt_id = l.id
    LEFT JOIN billing_postpaid_closures x ON x.charge_id = c.id WHERE c.account_id = acct.id
                  AND c.id >= coalesce((SELECT n.open_from FROM billing_postpaid_charges n
                          WHERE n.account_id = acct.id ORDER BY n.id DESC LIMIT 1), 0)) s WHERE w.postpaid) s ON true
    ORDER BY w.n),
    t AS (SELECT a.n, a.merchant_id, a.account, a.consultation_id, a.at_most_s,
               a.price AS price_per_minute_yen,
               coalesce((a.group_policy->>'unit_s')::int, (a.policy->>'unit_s')::int, 60) AS unit_s,
               coalesce((a.group_policy->>'grace_s')::int, (a.policy->>'grace_s')::int, 0) AS grace_s,
               coalesce((a.group_policy->>'minimum_yen')::int, (a.policy->>'minimum_yen')::int, 0) AS minimum_yen,
               coalesce((a.group_policy->>'max_talk_s')::int, (a.policy->>'max_talk_s')::int, 10800) AS max_talk_s,
               coalesce((a.group_policy->>'tax_percent')::int, (a.policy->>'tax_percent')::int, 10) AS tax_percent
          FROM a WHERE a.hold),
    k AS (SELECT t.*, CASE WHEN t.grace_s < t.max_talk_s
                           THEN greatest(t.price_per_minute_yen::bigint * t.unit_s / 60,
                                         t.minimum_yen)
                           ELSE 0 END AS needed
          FROM t),
    q AS (SELECT k.*, row_number() OVER (ORDER BY k.n)::int AS h,
                 CASE WHEN k.at_most_s IS NULL THEN k.max_talk_s
                      WHEN k.at_most_s <= 0 THEN 0
                      WHEN k.at_most_s <= k.grace_s THEN least(k.grace_s, k.max_talk_s)
                      ELSE least(k.max_talk_s, k.grace_s + (k.at_most_s - k.grace_s
                                 + k.unit_s - 1) / k.unit_s * k.unit_s) END AS cap,
                 jsonb_build_object('price_per_minute_yen', k.price_per_minute_yen, 'unit_s', k.unit_s, 'grace_s', k.grace_s, 'minimum_yen', k.minimum_yen, 'max_talk_s', k.max_talk_s, 'tax_percent', k.tax_percent) AS terms,
                 a.account_id, a.made, a.available_yen, a.live_from
          FROM k JOIN a USING (n)
          WHERE greatest(coalesce(a.available_yen, 0), 0) >= k.needed),
    o AS (SELECT q.*,
                 min(q.h) FILTER (WHERE q.available_yen IS NOT NULL)
                     OVER (PARTITION BY q.account_id) AS first_h,
                 min(q.h) OVER (PARTITION BY q.account_id, q.consultation_id) AS pair_h
          FROM q),
    x AS (SELECT array_agg(o.account_id ORDER BY o.h) AS account_id,
                  array_agg(o.made ORDER BY o.h) AS made,
                  array_agg(o.available_yen ORDER BY o.h) AS available_yen,
                  array_agg(o.live_from ORDER BY o.h) AS live_from,
                  array_agg(o.consultation_id ORDER BY o.h) AS consultation_id,
                  array_agg(o.terms ORDER BY o.h) AS terms,
                  array_agg(o.price_per_minute_yen ORDER BY o.h) AS price_per_minute_yen,
                  array_agg(o.unit_s ORDER BY o.h) AS unit_s,
                  array_agg(o.grace_s ORDER BY o.h) AS grace_s,
                  array_agg(o.minimum_yen ORDER BY o.h) AS minimum_yen,
                  array_agg(o.max_talk_s ORDER BY o.h) AS max_talk_s,
                  array_agg(o.cap ORDER BY o.h) AS cap,
                  array_agg(o.needed ORDER BY o.h) AS needed,
                  array_agg(o.first_h ORDER BY o.h) AS first_h,
                  array_agg(o.pair_h ORDER BY o.h) AS pair_h FROM o),
    r AS (SELECT r.* FROM x, LATERAL billing_hold_locked_once(account_id, made, available_yen, live_from, consultation_id, terms, price_per_minute_yen, unit_s, grace_s, minimum_yen, max_talk_s, cap, needed, first_h, pair_h) r)
    SELECT a.n, a.account, a.policy::text AS policy, a.group_policy::text AS group_policy,
           a.available_yen, a.has_card, a.unpaid, a.failed,
           q.h IS NOT NULL AS held, q.needed, r.reservation_id, r.made,
           r.available_yen AS hold_available_yen, r.held_yen, r.allowed_s
    FROM a LEFT JOIN q USING (n) LEFT JOIN r ON r.n = q.h
    ORDER BY a.n;
END $$;
