-- The advisor's web page: a sign-in link the merchant issues (one use, expiring) and the
-- browser sessions it opens. Only SHA-256 digests of the link's and the session's tokens
-- are kept; a session is revoked by setting revoked_at (sign-out, or the merchant).
CREATE TABLE advisor_signin_links (
    token_sha256 bytea       PRIMARY KEY,
    merchant_id  text        NOT NULL,
    advisor_id   bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    FOREIGN KEY (merchant_id, advisor_id) REFERENCES advisors (merchant_id, id)
        ON DELETE CASCADE
);
CREATE INDEX advisor_signin_links_advisor ON advisor_signin_links (advisor_id);

CREATE TABLE advisor_sessions (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_sha256 bytea       NOT NULL UNIQUE,
    -- the page's CSRF token: sent back in the X-CSRF-Token header of every change
    csrf_token   text        NOT NULL,
    merchant_id  text        NOT NULL,
    advisor_id   bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    FOREIGN KEY (merchant_id, advisor_id) REFERENCES advisors (merchant_id, id)
        ON DELETE CASCADE
);
CREATE INDEX advisor_sessions_advisor ON advisor_sessions (advisor_id);
