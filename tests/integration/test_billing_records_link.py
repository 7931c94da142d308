"""A consultation's settlement to the call center's billing records, end to end: real
PostgreSQL for each site, the ledger's settlement writing its billing record and outbox
message in one transaction, the outbox relay over mutual TLS with signatures, the edge's
HTTP app. One record per settlement (a repeated settle writes none), stored once at the
edge (a re-delivery is answered, not stored again), revenue, cost and margin exact; a
malformed record is refused with a 4xx naming its field."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import advisors
import shared
from advisors.record_store import ConsultationRecords
from advisors.records import LegCost
from billing import records
from billing.consultation_charges import consultation_charges
from billing.ledger import Ledger
from billing.rating import Terms
from shared.db import create_pool, migrate_url, package_migrations
from shared.money import FxTable, Money
from shared.outbox import OutboxRelay, fact_message_id
from tests.integration import billing_db
from tests.integration.test_advisors_records_link import Edge, edge_pool, until
from tests.unit.test_advisors_records import answered

pytestmark = pytest.mark.integration
__all__ = ["edge_pool"]   # the edge's database, a fixture of this module too

FX = FxTable.from_mapping("JPY", {"USD": "150.25"})
#: the customer leg 0.2097 USD × 150.25 + the advisor leg 45 JPY; the third leg unrated
COST_YEN = Decimal("0.2097") * Decimal("150.25") + 45
RECORD = answered(leg_costs=(
    LegCost("cb-0f3a9c-1-customer", "customer", "carrier-b", Money.of("0.2097", "USD")),
    LegCost("co-7f3a-r2", "advisor", None, Money.of("45", "JPY")),
    LegCost("co-7f3a-r1", "advisor", "carrier-a", None)))


@pytest.fixture(scope="module")
async def callback_pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("advisors", advisors.__file__),
                               *billing_db.SETS])
    pool = await create_pool(pg_url)
    yield pool
    await pool.close()


@pytest.fixture
async def edge(callback_pool: asyncpg.Pool, edge_pool: asyncpg.Pool,
               pki_dir: Path) -> AsyncIterator[Edge]:
    await billing_db.truncate(callback_pool, "billing_policies", "billing_records",
                              "consultations", "consultation_leg_costs", "outbox")
    await edge_pool.execute("TRUNCATE billing_records, consultations, consultation_leg_costs, "
                            "inbound_messages CASCADE")
    site = Edge(edge_pool, pki_dir)
    await site.start()
    yield site
    await site.close()


async def settled(pool: asyncpg.Pool) -> tuple[Ledger, int]:
    """RECORD saved, then its prepaid reservation at 300 yen a minute settled (95 s)."""
    assert await ConsultationRecords(pool).save(RECORD)
    ledger = Ledger(pool, fx=FX)
    await ledger.deposit("acme", "member-42", 10_000, "test", "funds")
    reservation = await ledger.reserve("acme", "member-42", RECORD.consultation_id, Terms(300))
    assert not isinstance(reservation, Exception) and hasattr(reservation, "id")
    await ledger.settle("acme", reservation.id, RECORD.talk_s)
    return ledger, reservation.id


async def test_a_settlement_writes_one_record_and_one_message_with_exact_margin(
        callback_pool: asyncpg.Pool, edge: Edge) -> None:
    ledger, rid = await settled(callback_pool)
    await ledger.settle("acme", rid, RECORD.talk_s)         # again: the same settlement
    assert await callback_pool.fetchval("SELECT count(*) FROM billing_records") == 1
    assert await callback_pool.fetchval(
        "SELECT count(*) FROM outbox WHERE kind = 'billing_record'") == 1
    [item] = await records.consultation_records(callback_pool, "acme", RECORD.consultation_id)
    # 95 s billed as 120 s at 300 yen a minute: 600 yen, of which 54 tax
    assert (item["total_yen"], item["tax_yen"], item["billed_s"]) == (600, 54, 120)
    assert item["advisor_id"] == 12 and item["paid_by"] == "prepaid"
    assert Decimal(item["cost_yen"]) == COST_YEN == Decimal("76.507425")
    assert Decimal(item["margin_yen"]) == 600 - COST_YEN == Decimal("523.492575")
    assert [leg["cost_yen"] for leg in item["legs"]] == ["31.507425", "45", None]
    assert item["fx"] == {"base": "JPY", "rates": {"USD": "150.25"}}
    body = await callback_pool.fetchval("SELECT body FROM outbox WHERE kind = 'billing_record'")
    assert records.BillingRecord.from_json(json.loads(body)).margin_yen == Decimal("523.492575")
    assert await consultation_charges(callback_pool, "acme", RECORD.consultation_id)


async def test_the_record_reaches_the_call_center_once_with_its_money_exact(
        callback_pool: asyncpg.Pool, edge_pool: asyncpg.Pool, pg_url: str,
        edge: Edge) -> None:
    await settled(callback_pool)
    relay = OutboxRelay(callback_pool, pg_url, edge.link, owner="test-billing", sweep_s=0.2)
    task = asyncio.create_task(relay.run())
    try:
        async def delivered() -> bool:
            """both outbox messages are delivered"""
            return bool(await callback_pool.fetchval(
                "SELECT bool_and(delivered_at IS NOT NULL) FROM outbox"))
        await until(delivered)
        answer = await callback_pool.fetchval(
            "SELECT response_body FROM outbox WHERE kind = 'billing_record'")
        assert answer == {"status": "stored", "kind": "billing_record"}
        # the acknowledgement was lost: the relay sends it again under the same id
        await callback_pool.execute(
            "UPDATE outbox SET delivered_at = NULL, response_body = NULL, attempts = 0, "
            "next_attempt_at = now(), lease_owner = NULL, lease_expires_at = NULL")
        await callback_pool.execute("NOTIFY outbox")
        await until(delivered)
        assert await edge_pool.fetchval("SELECT count(*) FROM billing_records") == 1
    finally:
        task.cancel()

    status, page = await edge.call_center("/v1/billing-records")
    assert status == 200 and page["next_cursor"] is None
    [item] = page["items"]
    assert (item["consultation_id"], item["account"], item["total_yen"]) == (
        "co-7f3a", "member-42", 600)
    assert (item["cost_yen"], item["margin_yen"]) == ("76.507425", "523.492575")
    [at_callback] = await records.consultation_records(callback_pool, "acme", "co-7f3a")
    assert {**item, "recorded_at": None} == {**at_callback, "recorded_at": None}
    status, filtered = await edge.call_center("/v1/billing-records", advisor_id="99")
    assert (status, filtered["items"]) == (200, [])
    status, mine = await edge.call_center("/v1/billing-records", advisor_id="12",
                                          since="2026-01-01T00:00:00Z")
    assert (status, len(mine["items"])) == (200, 1)
    status, theirs = await edge.call_center("/v1/billing-records", account="member-7")
    assert (status, theirs["items"]) == (200, [])
    status, mine = await edge.call_center("/v1/billing-records", account="member-42")
    assert (status, len(mine["items"])) == (200, 1)
    status, bad = await edge.call_center("/v1/billing-records", account="m" * 65)
    assert (status, bad["error"]["field"]) == (400, "account")


def message(**changes: Any) -> dict[str, Any]:
    return {"kind": "billing_record", **records.EXAMPLE, **changes}


async def test_the_same_record_under_another_message_id_is_a_duplicate(edge: Edge) -> None:
    first = await edge.post(message(), fact_message_id("billing_record", "co-7f3a/settlement-17"))
    again = await edge.post(message(), str(uuid.uuid4()))
    assert first == (200, {"status": "stored", "kind": "billing_record"})
    assert again == (200, {"status": "duplicate", "kind": "billing_record"})


@pytest.mark.parametrize(("changes", "status", "error", "field"), [
    ({"tax_yen": 601}, 400, "invalid-field", "tax_yen"),
    ({"total_yen": -1}, 400, "invalid-field", "total_yen"),
    ({"state": "paid"}, 400, "invalid-field", "state"),
    ({"margin_yen": "600"}, 400, "invalid-field", "margin_yen"),
    ({"legs": [{**records.EXAMPLE["legs"][0], "cost": {"amount": 0.025, "currency": "USD"}}]},
     400, "invalid-field", "legs[0].cost"),
    ({"fx": {"base": "JPY", "rates": {"USD": 155}}}, 400, "invalid-field", "fx"),
    ({"surprise": True}, 400, "invalid-field", "surprise"),
    ({"merchant_id": "nobody"}, 422, "unknown-merchant", "merchant_id"),
])
async def test_a_malformed_record_is_refused_naming_its_field(
        edge: Edge, edge_pool: asyncpg.Pool, changes: dict[str, Any], status: int, error: str,
        field: str) -> None:
    got, answer = await edge.post(message(**changes), str(uuid.uuid4()))
    assert (got, answer["error"]["id"], answer["error"].get("field")) == (status, error, field)
    assert await edge_pool.fetchval("SELECT count(*) FROM billing_records") == 0
