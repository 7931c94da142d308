"""The call-back queue, read from the database on each scrape of ``GET /metrics``.

One grouped query over the jobs that are not finished (``queued`` or ``dialing``, the
predicate of the partial index ``callback_requests_active_caller``; finished ones are
never read), so its cost follows the queue, not the history:

* ``cbgw_callback_queue_jobs{merchant, state}``: ``due`` (queued, its time has
  come), ``scheduled`` (queued for a later retry), ``dialing``;
* ``cbgw_callback_queue_oldest_due_seconds{merchant}``: how long the oldest due
  job has been waiting for a dialer (0: none).

Every configured merchant has its series, at 0 when it has no jobs.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from callback_server.http import MERCHANTS_KEY
from shared.metrics_http import Reading, pool_of

STATES = ("due", "scheduled", "dialing")


async def _read(app: web.Application) -> list[Metric]:
    rows = await pool_of(app).fetch(
        """SELECT merchant_id,
                  count(*) FILTER (WHERE status = 'queued' AND next_attempt_at <= now()) AS due,
                  count(*) FILTER (WHERE status = 'queued' AND next_attempt_at > now())
                      AS scheduled,
                  count(*) FILTER (WHERE status = 'dialing') AS dialing,
                  EXTRACT(EPOCH FROM now() - min(next_attempt_at)
                          FILTER (WHERE status = 'queued' AND next_attempt_at <= now()))
                      AS oldest_due_s
           FROM callback_requests WHERE status IN ('queued', 'dialing')
           GROUP BY merchant_id""")
    by_merchant = {r["merchant_id"]: r for r in rows}
    jobs = GaugeMetricFamily("cbgw_callback_queue_jobs",
                             "Call-back jobs not finished, by merchant and state (due, "
                             "scheduled, dialing).", labels=["merchant", "state"])
    oldest = GaugeMetricFamily("cbgw_callback_queue_oldest_due_seconds",
                               "How long the oldest due call-back job has waited, by "
                               "merchant (0: none).", labels=["merchant"])
    configured = app[MERCHANTS_KEY]
    for merchant in sorted(configured.keys() | by_merchant.keys()):
        row = by_merchant.get(merchant)
        for state in STATES:
            jobs.add_metric([merchant, state], 0.0 if row is None else float(row[state]))
        age = None if row is None else row["oldest_due_s"]
        oldest.add_metric([merchant], 0.0 if age is None else float(age))
    return [jobs, oldest]


CALLBACK_QUEUE = Reading("callback_queue", ("cbgw_callback_queue_jobs",
                                            "cbgw_callback_queue_oldest_due_seconds"), _read)
