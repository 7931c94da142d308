-- Advisors, per merchant: settings, advisors, groups, customers, each advisor's presence
-- (the state of advisors.presence) and every change of it as an event row (for reports),
-- published with NOTIFY advisor_events in the same transaction.

CREATE TABLE advisor_settings (
    merchant_id         text        PRIMARY KEY,
    after_call          text        NOT NULL DEFAULT 'timer'
                                    CHECK (after_call IN ('timer', 'manual')),
    wrap_up_s           integer     NOT NULL DEFAULT 30 CHECK (wrap_up_s BETWEEN 0 AND 3600),
    ring_timeout_s      integer     NOT NULL DEFAULT 20 CHECK (ring_timeout_s BETWEEN 5 AND 300),
    misses_before_break integer     NOT NULL DEFAULT 3
                                    CHECK (misses_before_break BETWEEN 0 AND 100),
    lines               integer     NOT NULL DEFAULT 10 CHECK (lines BETWEEN 1 AND 100000),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE advisors (
    id                   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id          text        NOT NULL,
    display_name         text        NOT NULL CHECK (length(display_name) BETWEEN 1 AND 64),
    name_prompt          text        NOT NULL DEFAULT '',
    code                 text        NOT NULL CHECK (code ~ '^[0-9]{4}$'),
    contact_kind         text        NOT NULL CHECK (contact_kind IN ('pstn', 'sip')),
    contact              text        NOT NULL,
    price_per_minute_yen integer     NOT NULL CHECK (price_per_minute_yen BETWEEN 0 AND 100000),
    max_concurrent       integer     NOT NULL DEFAULT 1 CHECK (max_concurrent BETWEEN 1 AND 10),
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, code),
    UNIQUE (merchant_id, id)
);

CREATE TABLE advisor_groups (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id text        NOT NULL,
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, name),
    UNIQUE (merchant_id, id)
);

CREATE TABLE advisor_group_members (
    merchant_id text   NOT NULL,
    group_id    bigint NOT NULL,
    advisor_id  bigint NOT NULL,
    PRIMARY KEY (group_id, advisor_id),
    FOREIGN KEY (merchant_id, group_id) REFERENCES advisor_groups (merchant_id, id)
        ON DELETE CASCADE,
    FOREIGN KEY (merchant_id, advisor_id) REFERENCES advisors (merchant_id, id)
        ON DELETE CASCADE
);
CREATE INDEX advisor_group_members_advisor ON advisor_group_members (advisor_id);

CREATE TABLE advisor_presence (
    advisor_id    bigint      PRIMARY KEY REFERENCES advisors ON DELETE CASCADE,
    merchant_id   text        NOT NULL,
    desk          text        NOT NULL DEFAULT 'offline',
    -- consultations in progress: [{"consultation_id": ..., "answered": bool}]
    sessions      jsonb       NOT NULL DEFAULT '[]',
    misses        integer     NOT NULL DEFAULT 0,
    reason        text        NOT NULL DEFAULT '',
    idle_since    timestamptz,
    wrap_up_token integer     NOT NULL DEFAULT 0,
    -- when the after-call work timer elapses (timer mode, desk wrap_up)
    wrap_up_due   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX advisor_presence_merchant ON advisor_presence (merchant_id);
CREATE INDEX advisor_presence_wrap_up_due ON advisor_presence (wrap_up_due)
    WHERE wrap_up_due IS NOT NULL;

-- No foreign key to advisors: the history stays when an advisor is removed.
CREATE TABLE advisor_events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id     text        NOT NULL,
    advisor_id      bigint      NOT NULL,
    at              timestamptz NOT NULL,
    event           text        NOT NULL,
    via             text,
    consultation_id text,
    before          text        NOT NULL,
    after           text        NOT NULL,
    desk            text        NOT NULL,
    load            integer     NOT NULL,
    reason          text        NOT NULL DEFAULT ''
);
CREATE INDEX advisor_events_merchant_at ON advisor_events (merchant_id, at);
CREATE INDEX advisor_events_advisor_at ON advisor_events (advisor_id, at);

CREATE TABLE customers (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id text        NOT NULL,
    account     text        NOT NULL CHECK (length(account) BETWEEN 1 AND 64),
    name        text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, account),
    UNIQUE (merchant_id, id)
);

-- A number belongs to one customer of a merchant (the caller ID finds the account).
CREATE TABLE customer_numbers (
    merchant_id text   NOT NULL,
    number      text   NOT NULL CHECK (number ~ '^\+[1-9][0-9]{6,14}$'),
    customer_id bigint NOT NULL,
    PRIMARY KEY (merchant_id, number),
    FOREIGN KEY (merchant_id, customer_id) REFERENCES customers (merchant_id, id)
        ON DELETE CASCADE
);
CREATE INDEX customer_numbers_customer ON customer_numbers (customer_id);
