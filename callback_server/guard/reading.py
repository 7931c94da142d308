"""The guard's latched caps, read from the database on each scrape of ``GET /metrics``.

``cbgw_guard_caps_tripped{scope, kind}`` is 1 for each cap tripped and not reset yet
(``guard_trips`` rows without ``reset_at``): while it is, the scope's originations are
refused until an operator resets it (``POST /v1/guard/caps/reset``). A gauge, not the
trips counter, is what an alert needs: it holds for as long as the latch does, from the
scrape after the trip, however long ago that was and whichever process tripped it.
No series while nothing is tripped.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from shared.metrics_http import Reading, pool_of


async def _read(app: web.Application) -> list[Metric]:
    rows = await pool_of(app).fetch(
        "SELECT scope, kind FROM guard_trips WHERE reset_at IS NULL ORDER BY scope, kind")
    tripped = GaugeMetricFamily(
        "cbgw_guard_caps_tripped",
        "Caps tripped and not reset, by scope and kind: 1 while the scope's originations "
        "are refused until an operator resets it.", labels=["scope", "kind"])
    for row in rows:
        tripped.add_metric([row["scope"], row["kind"]], 1.0)
    return [tripped]


GUARD_TRIPS = Reading("guard", ("cbgw_guard_caps_tripped",), _read)
