-- The release of a call-back request (state 'stored' -> 'released'), its cancel and the
-- callback site's status on the call become HOT updates: no new index entry for them.
-- edge_calls_stored had the state in its predicate, so every release wrote a new entry
-- in each of the table's four other indexes. The requests still held are found through
-- their held outbox messages instead (outbox_held, a handful of rows: the callers on the
-- line), joined on edge_calls' unique message_id (edge_server.store.CallStore.sweep_held,
-- held_for_channel_ids): a request is 'stored' exactly while its message is held (both
-- written, released and withdrawn together in one statement).
-- Room on each page for the two updated versions of its rows (HOT needs the new version
-- on the same page); new pages only: rows already stored stay where they are.
DROP INDEX edge_calls_stored;
ALTER TABLE edge_calls SET (fillfactor = 90);
