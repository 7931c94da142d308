-- Card and top-up links are kept as the SHA-256 of their token only, as the sign-in links
-- are: a reader of the database or of a backup cannot use a live link. Existing rows keep
-- working: their digest is the digest of the token they were sent with. The registrations
-- are append-only; their trigger is set aside for this one conversion.
ALTER TABLE billing_card_registrations ADD COLUMN link_sha256 bytea;
ALTER TABLE billing_card_registrations DISABLE TRIGGER billing_card_registrations_append_only;
UPDATE billing_card_registrations SET link_sha256 = sha256(convert_to(link_token, 'UTF8'));
ALTER TABLE billing_card_registrations ENABLE TRIGGER billing_card_registrations_append_only;
ALTER TABLE billing_card_registrations
    ALTER COLUMN link_sha256 SET NOT NULL,
    ADD CONSTRAINT billing_card_registrations_link_sha256_key UNIQUE (link_sha256),
    ADD CONSTRAINT billing_card_registrations_link_sha256_check CHECK (length(link_sha256) = 32),
    DROP COLUMN link_token;
