"""Route choice and leg pricing, from routing_rates when it runs, else from config.

:class:`Routing` adapts ``routing_rates.RatingService`` (``ranking`` and
``cost``) to the two small protocols the worker and the ARI adapter use
(:class:`~callback_server.worker.RouteSource`, :class:`~callback_server.call_ports.Rater`).
Without a rating service, or when it knows no route, the static
``[[callback.routes]]`` of the config are used in their configured order, and
CDRs carry no cost.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from callback_server.config import StaticRoute
from callback_server.dialer_messages import Route
from shared.config import CarrierQuality
from shared.money import Money
from shared.phone import E164

if TYPE_CHECKING:
    from routing_rates import RatingService

log = logging.getLogger("callback.routing")


class Routing:
    def __init__(self, service: RatingService | None, static: tuple[StaticRoute, ...]) -> None:
        self.service = service
        self.static = static

    async def routes(self, number: E164, at: datetime, max_rate: Money | None = None,
                     quality: CarrierQuality | None = None) -> tuple[Route, ...]:
        """The carriers to try, cheapest first; none above ``max_rate`` per minute (the
        merchant's maximum): if every carrier pricing the number is, none (and never the
        static routes, whose price is not known). Those below the merchant's ``quality``
        floor come last (``routing_rates.quality``), each logged with why. The carriers in
        order with their expected costs, and each one's terms and deck, are logged at DEBUG
        (the worker's line for the claimed job names the routes)."""
        if self.service is not None:
            ranked = self.service.ranking(number, at, max_rate=max_rate, quality=quality)
            quotes, dropped = ranked.routes, ranked.dropped
            capped = [d for d in dropped if d.reason == "above-max-rate"]
            for d in capped:
                log.info("route %s left out for %s: above the merchant's maximum (%s)",
                         d.carrier_id, number, d.detail)
            if quotes:
                debug = log.isEnabledFor(logging.DEBUG)
                for q in quotes:
                    if q.demoted:
                        log.warning("carrier %s demoted for %s: %s", q.carrier_id, number,
                                    q.demoted)
                    if debug:
                        log.debug("route %s for %s: expected %s (%s)", q.carrier_id, number,
                                  q.expected_cost.round_up(4), q.explain)
                if debug:       # the worker's "job claimed" line names the routes in order
                    log.debug("routes for %s: %s", number, ", ".join(
                        f"{q.carrier_id} {q.expected_cost.round_up(4)}" for q in quotes))
                return tuple(Route(q.carrier_id, q.endpoint_template.format(
                    digits=number.digits, e164=str(number))) for q in quotes)
            if capped:
                log.warning("no carrier within the merchant's maximum of %s/min for %s",
                            max_rate, number)
                return ()
            log.warning("routing_rates has no route for %s; using the static routes", number)
        return tuple(s.route(number.digits) for s in self.static)

    def leg_cost(self, carrier_id: str, number: E164, at: datetime,
                 duration_s: int) -> tuple[Money | None, int]:
        if self.service is None:
            return None, duration_s
        return (self.service.cost(carrier_id, number, at, duration_s),
                self.service.billed_seconds(carrier_id, number, at, duration_s))

    def direct_cost(self, inbound_tariff: str, number: E164, at: datetime,
                    duration_s: int) -> Money | None:
        """What the same conversation would have cost the merchant on its toll-free number."""
        if self.service is None:
            return None
        return self.service.cost(inbound_tariff, number, at, duration_s)
