-- A group's own price per minute: a consultation through the group is billed at it; NULL:
-- at its dearest member's price (a consultation with a named advisor: the advisor's).
ALTER TABLE advisor_groups
    ADD COLUMN price_per_minute_yen integer
        CHECK (price_per_minute_yen BETWEEN 0 AND 100000);
