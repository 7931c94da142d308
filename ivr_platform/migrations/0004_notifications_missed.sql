-- A call-back that ended failed (never reached the caller) is notified too.
ALTER TABLE notifications DROP CONSTRAINT notifications_event_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_check
    CHECK (event IN ('request_collected', 'message_recorded', 'callback_missed'));
