-- A postpaid consultation's charge terms beside its live row: the account its card is
-- charged to and the terms it was admitted with (billing.rating.Terms as JSON), so that
-- the restart's reconciler charges what the runner would have (both NULL: prepaid or no
-- billing).
ALTER TABLE consult_live
    ADD COLUMN charge_account text,
    ADD COLUMN charge_terms   jsonb CHECK (jsonb_typeof(charge_terms) = 'object'),
    ADD CONSTRAINT consult_live_charge_both CHECK ((charge_account IS NULL)
                                                   = (charge_terms IS NULL));
