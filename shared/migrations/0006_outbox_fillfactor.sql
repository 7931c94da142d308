-- Room on an outbox row's page for its updated versions, so the relay's claim (lease_owner,
-- lease_expires_at, attempts: no indexed column, none in a partial index's predicate)
-- is a HOT update and writes no index entry. At fillfactor 100 the pages filled up with
-- inserts and only 32 % (edge) and 42 % (callback) of the updates were HOT over a 20/s
-- control step (bench/README.md); each other claim wrote an entry in outbox_pkey and
-- outbox_pending. The delivery (delivered_at, in the partial indexes' predicates) and
-- the release of a held message (held) cannot be HOT. New pages only: rows already
-- stored stay where they are.
ALTER TABLE outbox SET (fillfactor = 70);
