-- routing_rates: tariffs (carriers and inbound tariffs), versioned decks, rows,
-- and rated CDRs. Both sites.

CREATE TABLE rates_tariffs (
    id          text        PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('carrier', 'inbound')),
    config      jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A deck is imported 'staged'; 'scheduled' decks are in force from effective_from
-- until the next scheduled deck of the same tariff (history is never deleted);
-- 'cancelled' decks never apply.
CREATE TABLE rates_decks (
    id              bigserial   PRIMARY KEY,
    tariff_id       text        NOT NULL REFERENCES rates_tariffs (id),
    state           text        NOT NULL CHECK (state IN ('staged', 'scheduled', 'cancelled')),
    effective_from  timestamptz,
    decimals        integer     NOT NULL,
    source          text        NOT NULL,
    sha256          text        NOT NULL,
    profile         text        NOT NULL,
    row_count       integer     NOT NULL DEFAULT 0,
    duplicates      integer     NOT NULL DEFAULT 0,
    imported_at     timestamptz NOT NULL DEFAULT now(),
    scheduled_at    timestamptz,
    CHECK (state <> 'scheduled' OR effective_from IS NOT NULL)
);
CREATE UNIQUE INDEX rates_decks_one_per_instant
    ON rates_decks (tariff_id, effective_from) WHERE state = 'scheduled';

-- Partitioned by deck: an import COPYs into a fresh, index-less table, indexes
-- it, and ATTACHes it in the same transaction (atomic; about 4x faster than
-- COPY into an indexed table). Prefixes compare bytewise (COLLATE "C").
-- Needs PostgreSQL >= 15 (NULLS NOT DISTINCT).
CREATE TABLE rates_rows (
    deck_id      bigint   NOT NULL,
    prefix       text     COLLATE "C" NOT NULL,
    destination  text     NOT NULL,
    rate         numeric  NOT NULL CHECK (rate >= 0),
    unit_s       integer  NOT NULL CHECK (unit_s >= 1),
    initial_s    integer  NOT NULL CHECK (initial_s >= 0),
    increment_s  integer  NOT NULL CHECK (increment_s >= 1),
    connect_fee  numeric  NOT NULL,
    min_cost     numeric  NOT NULL,
    currency     text     NOT NULL,
    origins      text     NOT NULL DEFAULT '',
    period       text     NOT NULL DEFAULT '',
    valid_from   timestamptz,
    valid_to     timestamptz,
    line         integer  NOT NULL DEFAULT 0
) PARTITION BY LIST (deck_id);
-- One row per key within a deck; also the longest-prefix lookup index.
CREATE UNIQUE INDEX rates_rows_key ON rates_rows (deck_id, prefix, origins, period, valid_from)
    NULLS NOT DISTINCT;

-- One rated leg of a completed call: carrier cost with the deck in force at
-- call time, and the toll-free counterfactual (what keeping the call costs).
CREATE TABLE rates_cdr_ratings (
    call_id          text        NOT NULL,
    leg              text        NOT NULL,
    merchant_id      text        NOT NULL,
    callback_id      text,
    tariff_id        text,
    deck_id          bigint,
    prefix           text,
    destination      text        NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_s       numeric     NOT NULL,
    billed_s         integer     NOT NULL,
    cost             numeric     NOT NULL,
    cost_currency    text        NOT NULL,
    direct_tariff_id text,
    direct_deck_id   bigint,
    direct_cost      numeric,
    direct_currency  text,
    base_currency    text        NOT NULL,
    cost_base        numeric     NOT NULL,
    direct_base      numeric,
    problem          text,
    rated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (call_id, leg)
);
CREATE INDEX rates_cdr_ratings_started ON rates_cdr_ratings (merchant_id, started_at);
