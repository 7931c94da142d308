-- A flow's transfer node puts the customer through to a number: a leg of the round like
-- the operator leg (persisted before its originate, bridged, with its rated CDR).
ALTER TABLE callback_attempts DROP CONSTRAINT callback_attempts_leg_check;
ALTER TABLE callback_attempts ADD CONSTRAINT callback_attempts_leg_check
    CHECK (leg IN ('customer', 'operator', 'advisor', 'transfer'));
