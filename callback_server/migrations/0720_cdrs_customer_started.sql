-- routing_rates.quality reads the customer legs of the last days every few minutes.
CREATE INDEX cdrs_customer_started ON cdrs (started_at) WHERE leg = 'customer';
