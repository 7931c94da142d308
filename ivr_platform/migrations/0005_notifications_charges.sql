-- A postpaid card charge that failed (dunning) or was paid on a retry is notified too.
ALTER TABLE notifications DROP CONSTRAINT notifications_event_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_check
    CHECK (event IN ('request_collected', 'message_recorded', 'callback_missed',
                     'charge_failed', 'charge_recovered'));
