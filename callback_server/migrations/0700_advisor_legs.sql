-- A consultation's advisor legs (callback_server.consult) are legs of the round like the
-- customer and operator legs: persisted before their originate, with their CDR.
ALTER TABLE callback_attempts DROP CONSTRAINT callback_attempts_leg_check;
ALTER TABLE callback_attempts ADD CONSTRAINT callback_attempts_leg_check
    CHECK (leg IN ('customer', 'operator', 'advisor'));
