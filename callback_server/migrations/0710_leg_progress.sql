-- The first sign of the far end on an originated leg: ringing, or the answer (ARI
-- ChannelStateChange Ringing/Up, its event time). From originate (cdrs.started_at) to it
-- is the post-dial delay routing_rates.quality averages per carrier and destination.
ALTER TABLE callback_attempts ADD COLUMN progress_at timestamptz;
