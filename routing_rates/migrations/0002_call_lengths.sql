-- Call lengths learned from each merchant's answered calls, per number class
-- (routing_rates.call_lengths): how many calls talked each whole second (capped),
-- and per merchant and class the count and the first and last call. Both sites.

CREATE TABLE rates_call_lengths (
    merchant_id   text    NOT NULL,
    number_class  text    NOT NULL CHECK (number_class IN ('mobile', 'fixed', 'ip', 'other')),
    talk_s        integer NOT NULL CHECK (talk_s > 0),
    calls         bigint  NOT NULL CHECK (calls > 0),
    PRIMARY KEY (merchant_id, number_class, talk_s)
);

CREATE TABLE rates_call_length_totals (
    merchant_id    text        NOT NULL,
    number_class   text        NOT NULL CHECK (number_class IN ('mobile', 'fixed', 'ip', 'other')),
    calls          bigint      NOT NULL CHECK (calls > 0),
    first_call_at  timestamptz NOT NULL,
    last_call_at   timestamptz NOT NULL,
    PRIMARY KEY (merchant_id, number_class)
);
