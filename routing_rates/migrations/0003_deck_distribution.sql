-- Decks distributed from the callback site to the edge over the signed link
-- (routing_rates.distribute). Both sites.
--
-- origin: 'import' (imported from a file on this site) or 'link' (a version the
-- callback site activated and sent; origin_version is its deck id there, and
-- origin_activated_at when it was activated there, so an older activation arriving
-- late never undoes a newer one). content_sha256: the hash of the deck's rows in
-- their canonical form (routing_rates.distribute.canonical_rows), equal on both sites.
ALTER TABLE rates_decks
    ADD COLUMN origin              text        NOT NULL DEFAULT 'import'
                                               CHECK (origin IN ('import', 'link')),
    ADD COLUMN origin_version      bigint,
    ADD COLUMN origin_activated_at timestamptz,
    ADD COLUMN content_sha256      text,
    ADD CHECK (origin = 'import' OR origin_version IS NOT NULL);
CREATE UNIQUE INDEX rates_decks_link_version
    ON rates_decks (tariff_id, origin_version) WHERE origin = 'link';

-- The parts of one activation received so far; a deck is assembled (and its parts
-- deleted) when the last one arrives, whatever the order they came in.
CREATE TABLE rates_deck_parts (
    tariff_id       text        NOT NULL,
    version         bigint      NOT NULL,
    effective_from  timestamptz NOT NULL,
    part            integer     NOT NULL CHECK (part >= 0),
    parts           integer     NOT NULL CHECK (parts > part),
    sha256          text        NOT NULL,
    data            bytea       NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tariff_id, version, effective_from, part)
);
