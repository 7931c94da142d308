-- A call outside the dialled number's business hours: it heard the closed message and
-- was rejected; nothing was queued (outcome 'outside_hours', detail: why, next opening).
ALTER TABLE edge_calls DROP CONSTRAINT edge_calls_state_check;
ALTER TABLE edge_calls ADD CONSTRAINT edge_calls_state_check CHECK (state IN (
    'stored', 'released', 'cancelled', 'refused', 'direct', 'abandoned', 'closed'));
