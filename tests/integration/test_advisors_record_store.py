"""Consultation records on the callback site with a real PostgreSQL: saved once with one
outbox message, read back exactly (money, microseconds, order of the parts), listed per
merchant with filters and cursors, and served under the merchant's token."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from advisors.record_store import ConsultationRecords
from advisors.records import ConsultationRecord, LegCost
from shared.money import Money
from shared.outbox import EVENTS_PATH, fact_message_id
from shared.paging import ListQuery, decode_cursor
from tests.integration import advisors_db
from tests.integration.test_advisors_http import (  # noqa: F401 (the client fixture)
    AUTH,
    client,
    field_error,
    ok,
)
from tests.unit.test_advisors_records import answered, at, unanswered

pytestmark = pytest.mark.integration
pool, clean = advisors_db.fixtures()


def numbered(n: int, **changes: Any) -> ConsultationRecord:
    """The n-th consultation (n ≥ 1): its own id and legs, a minute after the one before."""
    shift = timedelta(minutes=n)
    record = answered()
    return dataclasses.replace(
        record, consultation_id=f"co-{n}", requested_at=record.requested_at + shift,
        rings=tuple(dataclasses.replace(r, started_at=r.started_at + shift,
                                        ended_at=r.ended_at + shift if r.ended_at else None)
                    for r in record.rings),
        answered_at=at(25) + shift,
        holds=tuple(dataclasses.replace(h, started_at=h.started_at + shift,
                                        ended_at=h.ended_at + shift if h.ended_at else None)
                    for h in record.holds),
        ended_at=record.ended_at + shift, **changes)


async def test_a_record_saved_twice_is_one_row_and_one_message(clean: asyncpg.Pool) -> None:
    records = ConsultationRecords(clean)
    record = answered()
    assert await records.save(record) is True
    assert await records.save(record) is False
    # a different record under the same consultation id changes nothing either
    assert await records.save(dataclasses.replace(record, talk_s=3)) is False
    assert await clean.fetchval("SELECT count(*) FROM consultations") == 1
    assert await clean.fetchval("SELECT count(*) FROM consultation_leg_costs") == 3
    messages = await clean.fetch("SELECT message_id, kind, path, body, merchant_id, held "
                                 "FROM outbox")
    assert len(messages) == 1
    message = messages[0]
    assert (str(message["message_id"]), message["kind"], message["path"],
            message["merchant_id"], message["held"]) == (
        fact_message_id("consultation", "co-7f3a"), "consultation", EVENTS_PATH, "acme", False)
    body = json.loads(bytes(message["body"]))
    assert body == {"kind": "consultation", **record.to_json()}
    assert ConsultationRecord.from_json(body, ignore=("kind",)) == record


async def test_concurrent_saves_of_one_record_store_it_once(clean: asyncpg.Pool) -> None:
    records = ConsultationRecords(clean)
    results = await asyncio.gather(*(records.save(answered()) for _ in range(8)),
                                   return_exceptions=True)
    assert sorted(map(str, results)) == ["False"] * 7 + ["True"]
    assert await clean.fetchval("SELECT count(*) FROM outbox") == 1


async def test_a_record_reads_back_exactly(clean: asyncpg.Pool) -> None:
    records = ConsultationRecords(clean)
    costs = (LegCost("leg-1", "customer", "carrier-b", Money.of("0.123456789", "USD")),
             LegCost("leg-2", "advisor", None, Money.of("1200.50", "JPY")),
             LegCost("leg-3", "advisor", None, Money.of("-0.000001", "KWD")),
             LegCost("leg-0", "transfer", None, None))
    record = answered(leg_costs=costs)
    await records.save(record)
    await records.save(unanswered(consultation_id="co-none", leg_costs=()))
    found = await records.get("acme", "co-7f3a")
    assert found is not None
    assert found.pop("recorded_at").endswith("Z")
    assert ConsultationRecord.from_json(found) == record
    assert [c["cost"] for c in found["leg_costs"]] == [
        {"amount": "0.123456789", "currency": "USD"}, {"amount": "1200.50", "currency": "JPY"},
        {"amount": "-0.000001", "currency": "KWD"}, None]   # in order, digits kept
    stored = await clean.fetchval("SELECT cost_amount FROM consultation_leg_costs "
                                  "WHERE call_id = 'leg-1'")
    assert stored == Decimal("0.123456789")
    none = await records.get("acme", "co-none")
    assert none is not None and none["leg_costs"] == [] and none["answered_at"] is None
    assert await records.get("bento", "co-7f3a") is None   # another merchant's
    assert await records.get("acme", "co-missing") is None


async def test_listing_pages_filters_and_keeps_merchants_apart(clean: asyncpg.Pool) -> None:
    records = ConsultationRecords(clean)
    for n in range(1, 6):
        await records.save(numbered(n, advisor_id=20 + n % 2, customer_id=n))
    await records.save(numbered(9, merchant_id="bento"))
    first = await records.page(ListQuery("acme", limit=2))
    assert [i["consultation_id"] for i in first.items] == ["co-1", "co-2"]
    assert first.next_cursor is not None
    rest = await records.page(ListQuery("acme", after_id=decode_cursor(first.next_cursor)))
    assert [i["consultation_id"] for i in rest.items] == ["co-3", "co-4", "co-5"]
    assert rest.next_cursor is None
    assert len(rest.items[0]["leg_costs"]) == 3
    by_advisor = await records.page(ListQuery("acme", filters={"advisor_id": 21}))
    assert [i["consultation_id"] for i in by_advisor.items] == ["co-1", "co-3", "co-5"]
    by_customer = await records.page(ListQuery("acme", filters={"customer_id": 4}))
    assert [i["consultation_id"] for i in by_customer.items] == ["co-4"]
    window = await records.page(ListQuery("acme", since=numbered(2).requested_at,
                                          until=numbered(4).requested_at))
    assert [i["consultation_id"] for i in window.items] == ["co-2", "co-3"]
    bento = await records.page(ListQuery("bento"))
    assert [i["consultation_id"] for i in bento.items] == ["co-9"]
    with pytest.raises(ValueError):
        await records.page(ListQuery("acme", filters={"talk_s": 1}))


# --- the merchant API -----------------------------------------------------------------------

async def test_the_api_lists_and_reads_the_merchants_records(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:  # noqa: F811
    records = ConsultationRecords(clean)
    for n in (1, 2, 3):
        await records.save(numbered(n))
    await records.save(numbered(7, merchant_id="bento"))
    assert (await client.get("/v1/consultations")).status == 401
    page = await ok(await client.get("/v1/consultations?limit=2", headers=AUTH))
    assert [i["consultation_id"] for i in page["items"]] == ["co-1", "co-2"]
    rest = await ok(await client.get("/v1/consultations", headers=AUTH,
                                      params={"cursor": page["next_cursor"]}))
    assert [i["consultation_id"] for i in rest["items"]] == ["co-3"]
    assert rest["next_cursor"] is None
    one = await ok(await client.get("/v1/consultations/co-2", headers=AUTH))
    assert one == page["items"][1]
    one.pop("recorded_at")
    assert ConsultationRecord.from_json(one) == numbered(2)
    assert one["leg_costs"][0]["cost"] == {"amount": "0.2097", "currency": "USD"}
    filtered = await ok(await client.get("/v1/consultations", headers=AUTH, params={
        "advisor_id": "12", "since": "2026-12-05T01:02:00+00:00"}))
    assert [i["consultation_id"] for i in filtered["items"]] == ["co-2", "co-3"]
    # another merchant's record is not found, not forbidden
    missing = await client.get("/v1/consultations/co-7", headers=AUTH)
    assert missing.status == 404
    assert (await missing.json())["error"]["id"] == "not-found"


@pytest.mark.parametrize(("url", "field"), [
    ("/v1/consultations?limit=0", "limit"),
    ("/v1/consultations?limit=x", "limit"),
    ("/v1/consultations?cursor=nope", "cursor"),
    ("/v1/consultations?since=yesterday", "since"),
    ("/v1/consultations?advisor_id=-1", "advisor_id"),
    ("/v1/consultations?customer_id=0", "customer_id"),
    ("/v1/consultations?talk_s=3", "talk_s"),
    ("/v1/consultations?since=2026-12-05T00:00:00Z&until=2026-12-04T00:00:00Z", "until"),
    ("/v1/consultations/co%20bad", "consultation_id"),
    ("/v1/consultations/" + "x" * 129, "consultation_id"),
])
async def test_bad_input_is_a_400_naming_the_field(
        client: TestClient[Any, Any], url: str, field: str) -> None:  # noqa: F811
    assert await field_error(await client.get(url, headers=AUTH)) == field
