"""Billing's metrics on the callback site's ``GET /metrics`` (see :mod:`shared.metrics` for
the registry and the multiprocess mode, and docs/CONTRACTS.md for the list).

Counted by the process that made the event, once it is committed:

* ``cbgw_billing_consultations_charged{merchant, paid_by}`` and
  ``cbgw_billing_charged_yen{merchant, paid_by}``: consultations charged (a prepaid
  settlement of more than 0 yen, a postpaid charge paid) and their yen, ``paid_by``
  ``prepaid`` or ``postpaid``;
* ``cbgw_billing_card_charges_failed{merchant, kind}``: card charges Stripe declined or
  that had no card (``kind`` ``postpaid``: a consultation's charge, ``topup``: a card
  top-up);
* ``cbgw_billing_cutoffs{merchant}``: prepaid consultations cut off when their balance
  ran out;
* ``cbgw_billing_refusals{merchant, reason}``: consultations billing did not admit
  (``balance-too-low``, ``no-card``, ``in-dunning``, ``unpaid-limit``; a reservation the
  ledger refused too).

Read from the database on each scrape (:data:`BILLING_STATE`):
``cbgw_billing_live_reservations{merchant}`` and ``cbgw_billing_held_yen{merchant}``
(reservations not settled: consultations in progress, or left live by a crash), and
``cbgw_billing_accounts_in_dunning{merchant}``.

``merchant`` labels take configured merchants' ids (bounded).
"""

from __future__ import annotations

import functools

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from shared.metrics import registry
from shared.metrics_http import Reading, pool_of


class BillingMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.charged = Counter(
            "cbgw_billing_consultations_charged",
            "Consultations charged (a prepaid settlement above 0 yen, a postpaid charge "
            "paid), by merchant and paid_by (prepaid, postpaid).", ["merchant", "paid_by"],
            registry=r)
        self.charged_yen = Counter(
            "cbgw_billing_charged_yen",
            "Yen charged for consultations (tax included), by merchant and paid_by.",
            ["merchant", "paid_by"], registry=r)
        self.card_failed = Counter(
            "cbgw_billing_card_charges_failed",
            "Card charges declined or without a card, by merchant and kind (postpaid: a "
            "consultation's charge; topup: a card top-up).", ["merchant", "kind"], registry=r)
        self.cutoffs = Counter(
            "cbgw_billing_cutoffs",
            "Prepaid consultations cut off when the balance ran out, by merchant.",
            ["merchant"], registry=r)
        self.refusals = Counter(
            "cbgw_billing_refusals",
            "Consultations billing did not admit (or reserve), by merchant and reason.",
            ["merchant", "reason"], registry=r)


@functools.cache
def billing() -> BillingMetrics:
    return BillingMetrics(registry())


async def _read(app: web.Application) -> list[Metric]:
    pool = pool_of(app)
    live = await pool.fetch(
        """SELECT a.merchant_id, count(*) AS live, sum(coalesce(x.held_yen, r.held_yen)) AS held
           FROM billing_reservations r
           JOIN billing_accounts a ON a.id = r.account_id
           LEFT JOIN LATERAL (SELECT e.held_yen FROM billing_reservation_extensions e
                              WHERE e.reservation_id = r.id ORDER BY e.id DESC LIMIT 1) x
                  ON true
           WHERE NOT EXISTS (SELECT 1 FROM billing_settlements s
                             WHERE s.reservation_id = r.id)
           GROUP BY 1""")
    dunning = await pool.fetch(
        """SELECT c.merchant_id, count(DISTINCT c.account_id) AS accounts
           FROM billing_postpaid_charges c
           JOIN LATERAL (SELECT t.id FROM billing_postpaid_attempts t
                         WHERE t.charge_id = c.id ORDER BY t.attempt DESC LIMIT 1) l ON true
           JOIN billing_postpaid_outcomes o ON o.attempt_id = l.id AND o.outcome = 'failed'
           WHERE NOT EXISTS (SELECT 1 FROM billing_postpaid_closures x
                             WHERE x.charge_id = c.id)
           GROUP BY 1""")
    reservations = GaugeMetricFamily(
        "cbgw_billing_live_reservations", "Prepaid reservations not settled (consultations in "
        "progress, or left live by a crash), by merchant.", labels=["merchant"])
    held = GaugeMetricFamily("cbgw_billing_held_yen", "Yen those reservations hold, by "
                             "merchant.", labels=["merchant"])
    in_dunning = GaugeMetricFamily(
        "cbgw_billing_accounts_in_dunning", "Postpaid accounts with a charge whose newest "
        "attempt failed and that no operator closed, by merchant.", labels=["merchant"])
    for row in live:
        reservations.add_metric([row["merchant_id"]], row["live"])
        held.add_metric([row["merchant_id"]], int(row["held"]))
    for row in dunning:
        in_dunning.add_metric([row["merchant_id"]], row["accounts"])
    return [reservations, held, in_dunning]


BILLING_STATE = Reading("billing", ("cbgw_billing_live_reservations", "cbgw_billing_held_yen",
                                    "cbgw_billing_accounts_in_dunning"), _read)
