-- A billing policy per advisor group: the fields a group overrides of its merchant's
-- policy (billing_policies), each null where the group takes the merchant's. Every change
-- is a new row with who made it; the newest row of a (merchant, group) is in force (all
-- null: none overridden). Append-only. The group is the advisors' group id (not a foreign
-- key: billing does not depend on the advisors' tables).

CREATE TABLE billing_group_policies (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id text        NOT NULL,
    group_id    bigint      NOT NULL CHECK (group_id > 0),
    unit_s      integer,
    grace_s     integer,
    minimum_yen integer,
    max_talk_s  integer,
    tax_percent integer,
    changed_by  text        NOT NULL CHECK (length(changed_by) BETWEEN 1 AND 128),
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_group_policies_group ON billing_group_policies (merchant_id, group_id,
                                                                     id DESC);

CREATE TRIGGER billing_group_policies_append_only BEFORE UPDATE OR DELETE
    ON billing_group_policies FOR EACH ROW EXECUTE FUNCTION billing_append_only();
