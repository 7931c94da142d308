-- The merchant's operators' live page (GET /operator): a sign-in link the merchant issues
-- (one use, expiring) and the browser sessions it opens, each acting for that merchant
-- only. Only SHA-256 digests of the link's and the session's tokens are kept; a session
-- is revoked by setting revoked_at (sign-out, or the merchant).
CREATE TABLE operator_signin_links (
    token_sha256 bytea       PRIMARY KEY,
    merchant_id  text        NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);
CREATE INDEX operator_signin_links_merchant ON operator_signin_links (merchant_id);

CREATE TABLE operator_sessions (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_sha256 bytea       NOT NULL UNIQUE,
    -- the page's CSRF token: sent back in the X-CSRF-Token header of every change
    csrf_token   text        NOT NULL,
    merchant_id  text        NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX operator_sessions_merchant ON operator_sessions (merchant_id);
