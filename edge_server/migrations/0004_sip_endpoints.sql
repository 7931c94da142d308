-- Advisors' SIP endpoints at the edge: each merchant's softphones that register to the
-- edge Asterisk and are rung through the trunk from the callback site. The endpoint,
-- its auth and its aor are named endpoint_id = '<merchant_id>.<sip_user>' (merchant
-- ids hold no '.'), pushed to Asterisk over ARI by edge_server (edge_server.sip_push).
-- Only the digest hash is kept: ha1 = md5('<endpoint_id>:<realm>:<password>').
CREATE TABLE sip_endpoints (
    endpoint_id  text        PRIMARY KEY,
    merchant_id  text        NOT NULL,
    sip_user     text        NOT NULL,
    realm        text        NOT NULL,
    ha1          text        NOT NULL CHECK (ha1 ~ '^[0-9a-f]{32}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, sip_user),
    CHECK (endpoint_id = merchant_id || '.' || sip_user)
);
