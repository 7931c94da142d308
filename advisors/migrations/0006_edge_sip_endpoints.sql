-- The advisors' SIP endpoints at the edge, as the edge last told (link kind sip_endpoint,
-- advisors.edge_phones): whether the merchant's user exists there and whether a softphone
-- is registered as it at any edge Asterisk. version is the edge's: a message older than
-- the row changes nothing, so they may arrive in any order or twice. A deleted endpoint
-- stays as present = false (its version keeps an older creation from coming back).
CREATE TABLE edge_sip_endpoints (
    merchant_id  text        NOT NULL,
    sip_user     text        NOT NULL,
    present      boolean     NOT NULL,
    registered   boolean     NOT NULL,
    version      bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, sip_user)
);
