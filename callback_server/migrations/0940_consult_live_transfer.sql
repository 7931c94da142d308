-- A consult transfer in progress beside its consultation's live row
-- (callback_server.consult_recovery.Second): the second party's leg (NULL: not dialled
-- yet), and the second advisor with the id their presence is under (both NULL: a
-- transfer to a number). The restart's reconciler hangs that leg up (its CDR's cost in
-- the record) and ends the second advisor's presence. `second_party` NULL: no transfer.
ALTER TABLE consult_live
    ADD COLUMN second_party jsonb CHECK (jsonb_typeof(second_party) = 'object');
