-- A call-back's customer leg, rated (billing.records.customer_leg_rated): under the leg's
-- advisory lock, kept (billing_customer_legs), and the billing and consultation records
-- that waited for it taken from their waiting tables, in one call that a statement of the
-- round's finish can carry. A plpgsql function, because each of its statements sees what
-- was committed before that statement started: the deletes after the lock see every
-- record the lock's earlier holders kept waiting (one plain statement reads as of its
-- start, before a wait for the lock, and would leave such a record waiting).
-- Returns {"records": [the waiting billing records], "consultations": [{consultation_id,
-- path}]}, for the caller to send with the leg in the same transaction. ``alone``: the
-- caller's statement is a transaction of its own, with nothing after it to send them: a
-- record waiting raises SQLSTATE CBW01 (the statement undone, for the caller to run again
-- in a transaction).
CREATE FUNCTION billing_customer_leg_rated(leg_call_id text, leg_carrier_id text,
                                           leg_cost_amount numeric, leg_cost_currency text,
                                           alone boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    waiting_records jsonb;
    waiting_consultations jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('billing-customer-leg:' || leg_call_id,
                                                   0));
    INSERT INTO billing_customer_legs (call_id, carrier_id, cost_amount, cost_currency)
    VALUES (leg_call_id, leg_carrier_id, leg_cost_amount, leg_cost_currency)
    ON CONFLICT (call_id) DO NOTHING;
    WITH gone AS (DELETE FROM billing_records_awaiting w
                  WHERE w.customer_call_id = leg_call_id RETURNING w.record)
    SELECT coalesce(jsonb_agg(gone.record), '[]') INTO waiting_records FROM gone;
    WITH gone AS (DELETE FROM consultations_awaiting_customer_leg w
                  WHERE w.customer_call_id = leg_call_id
                  RETURNING w.consultation_id, w.path)
    SELECT coalesce(jsonb_agg(jsonb_build_object('consultation_id', gone.consultation_id,
                                                 'path', gone.path)), '[]')
      INTO waiting_consultations FROM gone;
    IF alone AND (waiting_records <> '[]' OR waiting_consultations <> '[]') THEN
        RAISE EXCEPTION 'records wait for the customer leg %', leg_call_id
            USING ERRCODE = 'CBW01';
    END IF;
    RETURN jsonb_build_object('records', waiting_records,
                              'consultations', waiting_consultations);
END $$;
