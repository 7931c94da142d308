-- A prepaid top-up by a card typed into the top-up page: a card registration (its
-- SetupIntent and link token, billing_card_registrations) for an amount. Once Stripe says
-- the SetupIntent succeeded, the card is on file and the amount is charged to it once: the
-- top-up (billing_card_topups) the link made, requested under the link's row lock.
CREATE TABLE billing_topup_links (
    registration_id bigint PRIMARY KEY REFERENCES billing_card_registrations,
    amount_yen      bigint NOT NULL CHECK (amount_yen > 0)
);

CREATE TABLE billing_topup_link_charges (
    registration_id bigint PRIMARY KEY REFERENCES billing_topup_links,
    topup_id        bigint NOT NULL UNIQUE REFERENCES billing_card_topups
);

CREATE TRIGGER billing_topup_links_append_only BEFORE UPDATE OR DELETE
    ON billing_topup_links FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_topup_link_charges_append_only BEFORE UPDATE OR DELETE
    ON billing_topup_link_charges FOR EACH ROW EXECUTE FUNCTION billing_append_only();
