-- The customer's click-to-call page (GET /m/{merchant}/advisors): a number is verified by
-- a one-time code sent by SMS before it may ask for a call. Only SHA-256 digests of the
-- codes and of the verified sessions' tokens are kept. The rows are also the rate
-- limits' counts (codes and calls per number and per client address).
CREATE TABLE click_phone_codes (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  text        NOT NULL,
    number       text        NOT NULL,
    client       text        NOT NULL,
    code_sha256  bytea       NOT NULL,
    sms_id       bigint      NOT NULL,
    sent_at      timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    wrong        integer     NOT NULL DEFAULT 0,
    used_at      timestamptz
);
CREATE INDEX click_phone_codes_number ON click_phone_codes (merchant_id, number, sent_at);
CREATE INDEX click_phone_codes_client ON click_phone_codes (client, sent_at);

-- a number that keyed a wrong code too often: no code is sent or checked until then
CREATE TABLE click_phone_locks (
    merchant_id  text        NOT NULL,
    number       text        NOT NULL,
    locked_until timestamptz NOT NULL,
    PRIMARY KEY (merchant_id, number)
);

CREATE TABLE click_verified (
    token_sha256 bytea       PRIMARY KEY,
    csrf_token   text        NOT NULL,
    merchant_id  text        NOT NULL,
    number       text        NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);

-- every call the page asked for, refused or not (the rate limits count them all)
CREATE TABLE click_web_calls (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  text        NOT NULL,
    number       text        NOT NULL,
    client       text        NOT NULL,
    requested_at timestamptz NOT NULL,
    callback_id  text        UNIQUE REFERENCES callback_requests
);
CREATE INDEX click_web_calls_number ON click_web_calls (merchant_id, number, requested_at);
CREATE INDEX click_web_calls_client ON click_web_calls (client, requested_at);
