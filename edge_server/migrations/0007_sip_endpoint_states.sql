-- What the callback site is told of the advisors' SIP endpoints (edge_server.sip_endpoints):
-- each change of an endpoint (created, new password, deleted, registered somewhere or at
-- no edge Asterisk any more) takes the next version and sends its state over the link in
-- its transaction (outbox kind sip_endpoint); the callback site keeps the highest version.
CREATE SEQUENCE sip_endpoint_versions;
ALTER TABLE sip_endpoints
    ADD COLUMN version bigint NOT NULL DEFAULT nextval('sip_endpoint_versions');

-- Which edge Asterisk (its system name) holds a registered contact of an endpoint, as its
-- edge server last read the endpoint's state there.
CREATE TABLE sip_registrations (
    endpoint_id  text        NOT NULL REFERENCES sip_endpoints ON DELETE CASCADE,
    asterisk     text        NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, asterisk)
);

-- The endpoints made before: announced once.
INSERT INTO outbox (message_id, kind, path, body, merchant_id)
SELECT gen_random_uuid(), 'sip_endpoint', '/v1/link/sip-endpoints',
       convert_to(json_build_object('merchant_id', merchant_id, 'user', sip_user,
                                    'exists', true, 'registered', false,
                                    'version', version)::text, 'UTF8'),
       merchant_id
  FROM sip_endpoints;
