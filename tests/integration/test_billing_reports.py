"""A merchant's day in billing from a real ledger: charges by tax rate with the tax of each
rate's total (not the sum of per-charge taxes), money in by source, refunds, adjustments,
customers' funds at the end of the day, minutes, and revenue, carrier cost and margin from
the day's billing records; over HTTP and the CLI, as JSON and as CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from billing import records
from billing.cli import main
from billing.ledger import Ledger, Reservation
from billing.rating import Terms, rate
from billing.reports import CSV_COLUMNS, daily, tax_by_rate
from billing.transfers import parse, record, tokyo_today
from shared.money import FxTable, Money
from shared.openapi import document
from tests.integration import billing_db
from tests.integration.test_billing_http import AUTH, app_over, ok, refused, transfer

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()


def test_tax_is_taken_once_per_rate_from_the_summed_total() -> None:
    assert tax_by_rate({10: 210, 8: 108}) == {8: 8, 10: 19}
    assert 2 * rate(60, Terms(105)).tax_yen == 18          # per charge: 9 + 9


async def consult(ledger: Ledger, name: str, terms: Terms, talk_s: int) -> None:
    held = await ledger.reserve("acme", "member-42", name, terms)
    assert isinstance(held, Reservation)
    await ledger.settle("acme", held.id, talk_s)


async def failed_card_charge(pool: asyncpg.Pool) -> None:
    """A card charge that failed today: no revenue, its carrier leg 0.2097 USD at 150.25
    all the same (31.507425 yen)."""
    async with pool.acquire() as conn:
        assert await records.insert_record(conn, records.BillingRecord(
            "failed-1", "acme", "call-9", None, "member-42", "card", "failed", 300, 95, 120,
            600, 54, (records.Leg("cb-1-customer", "customer", "carrier-b",
                                  Money.of("0.2097", "USD")),),
            FxTable.from_mapping("JPY", {"USD": "150.25"}), await conn.fetchval("SELECT now()")))


def csv_rows(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    return list(reader)


async def test_a_day_of_deposits_consultations_refunds_and_adjustments(
        clean: asyncpg.Pool, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(clean)
    await failed_card_charge(clean)
    await record(clean, "acme", parse(transfer(), tokyo_today()))
    await ledger.adjust("acme", "member-42", -500, "sato", "entered 500 yen too much")
    await consult(ledger, "call-1", Terms(105), 60)
    await consult(ledger, "call-2", Terms(105), 45)
    await consult(ledger, "call-3", Terms(108, tax_percent=8), 30)
    await consult(ledger, "call-4", Terms(300, grace_s=30), 20)   # free: not a charge
    await ledger.refund("acme", "member-42", 100, "sato", "line noise")
    await ledger.deposit("bento", "member-42", 9999, "x", "another merchant")
    today = await clean.fetchval("SELECT (now() AT TIME ZONE 'Asia/Tokyo')::date")
    report = (await daily(clean, "acme", today)).to_json()
    assert report == {
        "merchant_id": "acme", "date": today.isoformat(), "consultations": 3,
        "talk_s": 135, "billed_s": 180, "talk_minutes": "2.25", "billed_minutes": "3.00",
        "tax_yen": 27, "revenue_yen": 318, "carrier_cost_yen": "31.507425",
        "margin_yen": "286.492575",
        "charges": [{"tax_percent": 8, "consultations": 1, "talk_s": 30, "billed_s": 60,
                     "total_yen": 108, "tax_yen": 8},
                    {"tax_percent": 10, "consultations": 2, "talk_s": 105, "billed_s": 120,
                     "total_yen": 210, "tax_yen": 19}],
        "charged_yen": 318, "postpaid_charges": [], "postpaid_charged_yen": 0,
        "postpaid_paid_yen": 0, "bank_transfers_yen": 5000, "card_topups_yen": 0,
        "refunds_yen": 100, "adjustments_yen": -500,
        "customer_funds_yen": 5000 - 500 - 318 + 100}
    assert Decimal(report["margin_yen"]) == 318 - Decimal("0.2097") * Decimal("150.25")
    [row] = csv_rows((await daily(clean, "acme", today)).to_csv())
    assert row == {c: str(report[c]) for c in CSV_COLUMNS}
    assert (row["billed_minutes"], row["carrier_cost_yen"], row["margin_yen"]) == (
        "3.00", "31.507425", "286.492575")
    before = (await daily(clean, "acme", today - timedelta(days=1))).to_json()
    assert (before["charges"], before["customer_funds_yen"]) == ([], 0)
    app = app_over(clean)
    async with TestClient(TestServer(app)) as client:
        got = await ok(await client.get(f"/v1/billing/reports/daily?date={today}",
                                        headers=AUTH))
        assert got == report
        for query, accept in (("&format=csv", "*/*"), ("", "text/csv")):
            answer = await client.get(f"/v1/billing/reports/daily?date={today}{query}",
                                      headers={**AUTH, "Accept": accept})
            assert answer.status == 200
            assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert csv_rows(await answer.text()) == [row]
        assert await ok(await client.get(
            f"/v1/billing/reports/daily?date={today}&format=json",
            headers={**AUTH, "Accept": "text/csv"})) == report
        reply = document(app)["paths"]["/v1/billing/reports/daily"]["get"][
            "responses"]["200"]["content"]
        assert sorted(reply) == ["application/json", "text/csv"]
        assert await refused(await client.get("/v1/billing/reports/daily?format=xml",
                                              headers=AUTH)) == ("invalid-field", "format")
        assert await refused(await client.get("/v1/billing/reports/daily?date=2026-02-30",
                                              headers=AUTH)) == ("invalid-field", "date")
    code = await asyncio.to_thread(main, ["--database-url", pg_url, "--merchant", "acme",
                                          "report", "--date", today.isoformat()])
    out: Any = capsys.readouterr()
    assert code == 0 and json.loads(out.out) == report
    code = await asyncio.to_thread(main, ["--database-url", pg_url, "--merchant", "acme",
                                          "report", "--date", today.isoformat(), "--csv"])
    assert code == 0 and csv_rows(capsys.readouterr().out) == [row]
    code = await asyncio.to_thread(main, ["--database-url", pg_url, "--merchant", "acme",
                                          "report", "--date", "12/04"])
    assert code == 2 and capsys.readouterr().err == (
        "error: --date: expected a date YYYY-MM-DD\n")
