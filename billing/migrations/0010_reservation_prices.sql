-- A reservation made at one price and rated at another: a group consultation is reserved
-- at its dearest member's price (so the hold pays for whoever answers) and, once a member
-- answers, priced at theirs (at most the reserved price). One row per reservation, the
-- price its settlement and extensions rate with from then on (the reservation's terms
-- otherwise); the advisor who answered. Append-only.

CREATE TABLE billing_reservation_prices (
    reservation_id       bigint      PRIMARY KEY REFERENCES billing_reservations,
    price_per_minute_yen integer     NOT NULL CHECK (price_per_minute_yen >= 0),
    advisor_id           bigint,
    priced_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER billing_reservation_prices_append_only BEFORE UPDATE OR DELETE
    ON billing_reservation_prices FOR EACH ROW EXECUTE FUNCTION billing_append_only();
