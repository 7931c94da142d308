-- Web click-to-call: which party the callback site rings first (the other is rung once the
-- first has answered and heard the "connecting you" prompt).
ALTER TABLE advisor_settings
    ADD COLUMN click_to_call_first text NOT NULL DEFAULT 'customer'
        CHECK (click_to_call_first IN ('customer', 'advisor'));
