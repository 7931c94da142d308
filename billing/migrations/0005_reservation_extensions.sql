-- A live reservation extended (the customer topped up during the consultation, or the
-- meter reserves in slices): each extension a row with the reservation's hold and allowed
-- talk after it, and a hold movement for the difference. The newest row, else the
-- reservation's own, is in force. Append-only.

CREATE TABLE billing_reservation_extensions (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reservation_id bigint      NOT NULL REFERENCES billing_reservations,
    held_yen       bigint      NOT NULL CHECK (held_yen >= 0),
    allowed_s      integer     NOT NULL CHECK (allowed_s >= 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_reservation_extensions_reservation
    ON billing_reservation_extensions (reservation_id, id DESC);

CREATE TRIGGER billing_reservation_extensions_append_only BEFORE UPDATE OR DELETE
    ON billing_reservation_extensions FOR EACH ROW EXECUTE FUNCTION billing_append_only();
