-- An advisor who leaves is retired, not deleted: the row stays (consultation records,
-- presence events and billing name them by id), `retired_at` says when. A retired
-- advisor's code is free for a new advisor: the code is unique among current advisors.
ALTER TABLE advisors ADD COLUMN retired_at timestamptz;
ALTER TABLE advisors DROP CONSTRAINT advisors_merchant_id_code_key;
CREATE UNIQUE INDEX advisors_merchant_id_code_key ON advisors (merchant_id, code)
    WHERE retired_at IS NULL;
