-- Housekeeping for the link: delivered outbox rows are purged by age
-- (Outbox.purge_delivered), and dead letters are listed newest first
-- (Outbox.dead_letters). Both need an index to stay cheap on a big table.

CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX outbox_dead ON outbox (dead_at) WHERE dead_at IS NOT NULL;
