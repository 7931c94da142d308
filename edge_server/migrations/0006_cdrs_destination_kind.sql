-- What a CDR's destination is: an E.164 number (pstn: a customer's, a PSTN advisor's, a
-- transfer number) or a SIP endpoint (sip: a SIP advisor's softphone, the operator phone).
-- The CDRs stored before were all of numbers (the link refused any other destination).
ALTER TABLE cdrs ADD COLUMN destination_kind text NOT NULL DEFAULT 'pstn'
    CHECK (destination_kind IN ('pstn', 'sip'));
