"""A merchant's day in billing (Asia/Tokyo calendar day), read from the ledger.

Consultations settled that day (count, talk and billed seconds, charges) by tax rate, with
the tax of each rate derived once from that rate's summed tax-inclusive total, as a
qualified invoice states it (:func:`tax_by_rate`; the sum of per-charge taxes may be a few
yen lower); money in by source (bank transfers, card top-ups), refunds, adjustments, and
the customers' funds (available and held) at the end of the day. Postpaid consultations
charged that day are apart, by tax rate the same way (their cards are charged after them,
outside the prepaid ledger), with what the cards paid that day.

Beside them, the day's totals (consultations, talk and billed seconds and minutes, tax)
and, from the billing records of the day (``at`` that day), revenue (what was paid),
carrier cost (exact ``Decimal`` yen) and margin (revenue less cost). :meth:`to_csv` gives
the flat figures as CSV: a header row and the day's row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from billing import records
from billing.rating import tax_included
from shared.timeutil import TOKYO


@dataclass(frozen=True, slots=True)
class RateLine:
    tax_percent: int
    consultations: int
    talk_s: int
    billed_s: int
    total_yen: int
    #: floor(total × rate / (100 + rate)), once for the rate
    tax_yen: int


@dataclass(frozen=True, slots=True)
class DailyReport:
    merchant_id: str
    day: date
    charges: tuple[RateLine, ...]
    bank_transfers_yen: int
    card_topups_yen: int
    refunds_yen: int
    #: the adjustments' net effect on the customers' balances
    adjustments_yen: int
    #: the customers' money (available + held) at the end of the day
    customer_funds_yen: int
    #: postpaid consultations charged that day (the card is charged after), by tax rate
    postpaid: tuple[RateLine, ...] = ()
    #: postpaid charges the card paid that day
    postpaid_paid_yen: int = 0
    #: what the day's billing records were paid (failed charges: nothing)
    revenue_yen: int = 0
    #: the day's billing records' carrier costs, exact yen
    carrier_cost_yen: Decimal = Decimal(0)

    @property
    def margin_yen(self) -> Decimal:
        return self.revenue_yen - self.carrier_cost_yen

    def to_json(self) -> dict[str, Any]:
        lines = self.charges + self.postpaid
        talk_s, billed_s = sum(c.talk_s for c in lines), sum(c.billed_s for c in lines)
        return {"merchant_id": self.merchant_id, "date": self.day.isoformat(),
                "consultations": sum(c.consultations for c in lines),
                "talk_s": talk_s, "billed_s": billed_s, "talk_minutes": _minutes(talk_s),
                "billed_minutes": _minutes(billed_s),
                "tax_yen": sum(c.tax_yen for c in lines), "revenue_yen": self.revenue_yen,
                "carrier_cost_yen": str(self.carrier_cost_yen),
                "margin_yen": str(self.margin_yen),
                "charges": _lines_json(self.charges),
                "charged_yen": sum(c.total_yen for c in self.charges),
                "postpaid_charges": _lines_json(self.postpaid),
                "postpaid_charged_yen": sum(c.total_yen for c in self.postpaid),
                "postpaid_paid_yen": self.postpaid_paid_yen,
                "bank_transfers_yen": self.bank_transfers_yen,
                "card_topups_yen": self.card_topups_yen, "refunds_yen": self.refunds_yen,
                "adjustments_yen": self.adjustments_yen,
                "customer_funds_yen": self.customer_funds_yen}

    def to_csv(self) -> str:
        """The flat figures of :meth:`to_json` (not the lines by tax rate): a header row
        (:data:`CSV_COLUMNS`) and the day's row."""
        figures = self.to_json()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerow([figures[c] for c in CSV_COLUMNS])
        return out.getvalue()


#: the CSV export's columns, in order
CSV_COLUMNS = ("merchant_id", "date", "consultations", "talk_s", "billed_s", "talk_minutes",
               "billed_minutes", "charged_yen", "postpaid_charged_yen", "tax_yen",
               "revenue_yen", "carrier_cost_yen", "margin_yen", "postpaid_paid_yen",
               "bank_transfers_yen", "card_topups_yen", "refunds_yen", "adjustments_yen",
               "customer_funds_yen")


def _minutes(seconds: int) -> str:
    """Seconds as minutes to the hundredth (half up)."""
    return str(Decimal((seconds * 100 + 30) // 60).scaleb(-2))


def _lines_json(lines: tuple[RateLine, ...]) -> list[dict[str, int]]:
    return [{"tax_percent": c.tax_percent, "consultations": c.consultations,
             "talk_s": c.talk_s, "billed_s": c.billed_s, "total_yen": c.total_yen,
             "tax_yen": c.tax_yen} for c in lines]


def _rate_lines(rows: list[asyncpg.Record]) -> tuple[RateLine, ...]:
    taxes = tax_by_rate({r["tax_percent"]: int(r["total_yen"]) for r in rows})
    return tuple(RateLine(r["tax_percent"], r["n"], int(r["talk_s"]), int(r["billed_s"]),
                          int(r["total_yen"]), taxes[r["tax_percent"]]) for r in rows)


def tax_by_rate(totals: Mapping[int, int]) -> dict[int, int]:
    """Tax-inclusive totals by tax rate (percent) → the tax in each, rounded down once per
    rate."""
    return {rate: tax_included(total, rate) for rate, total in sorted(totals.items())}


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The start and end of ``day`` in Asia/Tokyo."""
    start = datetime.combine(day, time(), TOKYO)
    return start, start + timedelta(days=1)


async def daily(pool: asyncpg.Pool, merchant_id: str, day: date) -> DailyReport:
    start, end = day_bounds(day)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                       readonly=True):
        rates = await conn.fetch(
            """SELECT (r.terms->>'tax_percent')::int AS tax_percent, count(*) AS n,
                      sum(s.talk_s) AS talk_s, sum(s.billed_s) AS billed_s,
                      sum(s.total_yen) AS total_yen
               FROM billing_settlements s
               JOIN billing_reservations r ON r.id = s.reservation_id
               JOIN billing_accounts a ON a.id = r.account_id
               WHERE a.merchant_id = $1 AND s.settled_at >= $2 AND s.settled_at < $3
                 AND s.total_yen > 0
               GROUP BY 1 ORDER BY 1""", merchant_id, start, end)
        moves = await conn.fetchrow(
            """SELECT
                 coalesce(sum(t.amount_yen) FILTER (WHERE b.id IS NOT NULL), 0) AS bank,
                 coalesce(sum(t.amount_yen) FILTER (WHERE o.topup_id IS NOT NULL), 0) AS card,
                 coalesce(sum(t.amount_yen) FILTER (WHERE t.kind = 'refund'), 0) AS refunds,
                 coalesce(sum(e.amount_yen) FILTER (WHERE t.kind = 'adjustment'), 0) AS adjusted
               FROM billing_transactions t
               JOIN billing_accounts a ON a.id = t.account_id
               LEFT JOIN billing_bank_transfers b ON b.transaction_id = t.id
               LEFT JOIN billing_card_topup_outcomes o ON o.transaction_id = t.id
               LEFT JOIN billing_entries e ON e.transaction_id = t.id AND e.book = 'available'
                                          AND t.kind = 'adjustment'
               WHERE a.merchant_id = $1 AND t.created_at >= $2 AND t.created_at < $3""",
            merchant_id, start, end)
        postpaid = await conn.fetch(
            """SELECT (c.terms->>'tax_percent')::int AS tax_percent, count(*) AS n,
                      sum(c.talk_s) AS talk_s, sum(c.billed_s) AS billed_s,
                      sum(c.total_yen) AS total_yen
               FROM billing_postpaid_charges c
               WHERE c.merchant_id = $1 AND c.requested_at >= $2 AND c.requested_at < $3
               GROUP BY 1 ORDER BY 1""", merchant_id, start, end)
        paid = await conn.fetchval(
            """SELECT coalesce(sum(c.total_yen), 0) FROM billing_postpaid_outcomes o
               JOIN billing_postpaid_attempts t ON t.id = o.attempt_id
               JOIN billing_postpaid_charges c ON c.id = t.charge_id
               WHERE c.merchant_id = $1 AND o.outcome = 'succeeded'
                 AND o.recorded_at >= $2 AND o.recorded_at < $3""", merchant_id, start, end)
        funds = await conn.fetchval(
            """SELECT coalesce(sum(e.amount_yen), 0) FROM billing_entries e
               JOIN billing_transactions t ON t.id = e.transaction_id
               JOIN billing_accounts a ON a.id = e.account_id
               WHERE a.merchant_id = $1 AND t.created_at < $2
                 AND e.book IN ('available', 'held')""", merchant_id, end)
        day_records = await records.between(conn, merchant_id, start, end)
    return DailyReport(
        merchant_id, day, _rate_lines(rates), int(moves["bank"]), int(moves["card"]),
        int(moves["refunds"]), int(moves["adjusted"]), int(funds), _rate_lines(postpaid),
        int(paid), sum(r.revenue_yen for r in day_records),
        sum((r.cost_yen for r in day_records), Decimal(0)))
