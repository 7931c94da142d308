-- A consultation kept from its first offer (callback_server.consult_recovery.offer): an
-- advisor being rung (their leg in advisor_channel, the advisor in advisor_id) or the
-- customer queued (both NULL), no bridge yet (bridge_id NULL). The restart's reconciler
-- withdraws the offer (the assignment cancelled: the advisor back to standby with no
-- miss, the customer out of advisor_queue), hangs the legs up and writes the record with
-- no talk.
ALTER TABLE consult_live
    ALTER COLUMN advisor_channel DROP NOT NULL,
    ALTER COLUMN bridge_id DROP NOT NULL,
    ALTER COLUMN advisor_id DROP NOT NULL;
