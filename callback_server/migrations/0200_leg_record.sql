-- Legs remember which Asterisk placed them and when they were answered, so a job
-- rescued by another server is settled through the Asterisk its leg lives on, and
-- a leg reconciled without Asterisk's own record still gets an honest CDR.
ALTER TABLE callback_attempts ADD COLUMN asterisk text;          -- Asterisk systemname
ALTER TABLE callback_attempts ADD COLUMN answered_at timestamptz;
