-- A merchant's billing policy: how its consultation lines are rated (billing.rating.Terms
-- without the price, which comes with the advisor). Every change is a new row with who
-- made it; the policy in force is the newest row (none: the defaults). Append-only, so
-- the history of what was in force when stays.

CREATE TABLE billing_policies (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id text        NOT NULL,
    unit_s      integer     NOT NULL,
    grace_s     integer     NOT NULL,
    minimum_yen integer     NOT NULL,
    max_talk_s  integer     NOT NULL,
    tax_percent integer     NOT NULL,
    changed_by  text        NOT NULL CHECK (length(changed_by) BETWEEN 1 AND 128),
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_policies_merchant ON billing_policies (merchant_id, id DESC);

CREATE TRIGGER billing_policies_append_only BEFORE UPDATE OR DELETE
    ON billing_policies FOR EACH ROW EXECUTE FUNCTION billing_append_only();
