-- Versions the callback site cancelled before the edge had them all
-- (routing_rates.deck_receiver): their parts, whenever they arrive, are not stored.
CREATE TABLE rates_deck_withdrawn (
    tariff_id     text        NOT NULL,
    version       bigint      NOT NULL,
    cancelled_at  timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tariff_id, version)
);
