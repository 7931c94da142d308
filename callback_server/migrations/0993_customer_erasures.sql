-- Customers erased (callback_server.erasure): who asked, when, and the rows changed or
-- deleted per table; the number itself is not kept, only its pseudonym.
CREATE TABLE customer_erasures (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id   text        NOT NULL,
    pseudonym     text        NOT NULL CHECK (pseudonym ~ '^erased:[0-9a-f]{16}$'),
    requested_by  text        NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 128),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    rows          jsonb       NOT NULL,
    -- the link event that has the edge erase its copies
    message_id    uuid        NOT NULL
);
CREATE INDEX customer_erasures_pseudonym ON customer_erasures (merchant_id, pseudonym, id);

-- The erasure event carries the number to the edge; once delivered, the outbox keeps
-- the pseudonym in its place.
CREATE FUNCTION outbox_erasure_delivered() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb := convert_from(NEW.body, 'UTF8')::jsonb;
BEGIN
    NEW.body := convert_to(replace(convert_from(NEW.body, 'UTF8'), payload->>'number',
                                   payload->>'pseudonym'), 'UTF8');
    RETURN NEW;
END $$;
CREATE TRIGGER outbox_erasure_delivered BEFORE UPDATE OF delivered_at ON outbox FOR EACH ROW
    WHEN (NEW.kind = 'customer_erasure' AND NEW.delivered_at IS NOT NULL
          AND OLD.delivered_at IS NULL)
    EXECUTE FUNCTION outbox_erasure_delivered();
