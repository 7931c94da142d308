"""Advisors on each scrape of ``GET /metrics``, read from the presence rows:

* ``cbgw_advisors{merchant, state}``: advisors by shown state (offline, standby, working,
  break, wrap_up, ringing, talking), every state present (0 when none); retired
  advisors are not counted;
* ``cbgw_advisor_consultations{merchant}``: consultations in progress (ringing or talking).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from advisors.model import State
from shared.metrics_http import Reading, pool_of


async def _read(app: web.Application) -> list[Metric]:
    rows = await pool_of(app).fetch(
        """SELECT merchant_id,
                  CASE WHEN sessions @> '[{"answered": true}]' THEN 'talking'
                       WHEN jsonb_array_length(sessions) > 0 THEN 'ringing'
                       ELSE desk END AS state,
                  count(*) AS advisors, sum(jsonb_array_length(sessions)) AS consultations
           FROM advisor_presence p
           WHERE NOT EXISTS (SELECT 1 FROM advisors a WHERE a.id = p.advisor_id
                             AND a.retired_at IS NOT NULL)
           GROUP BY 1, 2""")
    advisors = GaugeMetricFamily("cbgw_advisors", "Advisors by merchant and shown state.",
                                 labels=["merchant", "state"])
    consultations = GaugeMetricFamily("cbgw_advisor_consultations",
                                      "Consultations in progress (ringing or talking), by "
                                      "merchant.", labels=["merchant"])
    counts = {(r["merchant_id"], r["state"]): r for r in rows}
    for merchant in sorted({r["merchant_id"] for r in rows}):
        for state in State:
            row = counts.get((merchant, state.value))
            advisors.add_metric([merchant, state.value], 0.0 if row is None
                                else float(row["advisors"]))
        consultations.add_metric([merchant], float(sum(
            r["consultations"] for r in rows if r["merchant_id"] == merchant)))
    return [advisors, consultations]


ADVISORS_BY_STATE = Reading("advisors", ("cbgw_advisors", "cbgw_advisor_consultations"), _read)
