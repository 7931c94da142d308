-- routing_rates.quality (site edge) reads the customer legs of the last days every few
-- minutes, when a merchant has a [merchants.carrier_quality] floor.
CREATE INDEX cdrs_customer_started ON cdrs (started_at) WHERE leg = 'customer';
