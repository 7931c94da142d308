"""The IVR's request info (a flow's ``submit``) stored in one statement: the row and its
outbox message, or on a repeat of the same fact neither, in one round trip (a pool
connection held for one reply, not for BEGIN, two INSERTs and COMMIT)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

import callback_server
import shared
from callback_server.ivr import Submit
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from shared.config import AnnounceMode, Merchant
from shared.db import create_pool, migrate_url, package_migrations
from shared.outbox import fact_message_id, isoformat
from shared.phone import E164

pytestmark = pytest.mark.integration

MERCHANT = Merchant(
    id="acme", name="ACME", numbers=(E164("81120123456"),),
    callback_caller_id=E164("81120123456"), announce_mode=AnnounceMode.EARLY_MEDIA,
    inbound_tariff="ntt-freedial", pre_callback_delay_s=Decimal("0"), max_attempts=3,
    retry_backoff_s=(30, 120, 600), ring_timeout_s=30, ivr_flow="order", operator="operator",
    api_token_sha256=None)
CALLER = E164("819012345678")
ORDER = Submit("order", (("item_code", "1234"), ("quantity", "2")))
EMPTIED = "TRUNCATE request_info, callback_attempts, callback_requests, outbox CASCADE"


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("callback", callback_server.__file__)])
    p = await create_pool(pg_url, min_size=1, max_size=1)    # one connection: all logged
    await CallbackStore(p, owner="setup").sync_merchants([MERCHANT])
    yield p
    await p.close()


async def a_call_back(pool: asyncpg.Pool, store: CallbackStore, edge_call_id: str) -> str:
    now = datetime.now(UTC)
    await store.intake("44444444-4444-4444-8444-" + edge_call_id.rjust(12, "0")[-12:],
                       IntakeRequest(edge_call_id=edge_call_id, merchant_id="acme",
                                     caller=CALLER, dialed="+81120123456", received_at=now,
                                     hungup_at=now, announce_mode="early_media"), MERCHANT)
    callback_id: str = await pool.fetchval(
        "SELECT callback_id FROM callback_requests WHERE edge_call_id = $1", edge_call_id)
    return callback_id


async def test_request_info_is_one_round_trip_and_a_repeat_writes_nothing(
        pool: asyncpg.Pool) -> None:
    await pool.execute(EMPTIED)
    store = CallbackStore(pool, owner="w1")
    callback_id = await a_call_back(pool, store, "100")
    await pool.execute("TRUNCATE outbox")
    sent: list[str] = []

    def seen(logged: asyncpg.connection.LoggedQuery) -> None:
        sent.append(" ".join(logged.query.split()))

    async with pool.acquire() as conn:
        conn.add_query_logger(seen)
    at = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)
    for _ in range(2):          # the same fact twice (a retried store): one row, one message
        mid = await store.record_info(ORDER, callback_id=callback_id, edge_call_id="e-100",
                                      merchant_id="acme", caller=CALLER, collected_at=at,
                                      seq=1)
    async with pool.acquire() as conn:
        conn.remove_query_logger(seen)
    await asyncio.sleep(0)      # asyncpg calls a query logger at the loop's next turn
    ours = [q for q in sent if "request_info" in q or q.upper().startswith(("BEGIN", "COMMIT"))]
    assert len(ours) == 2 and all(q.startswith("WITH info AS") for q in ours), ours
    assert mid == fact_message_id("request_info", f"{callback_id}:1")
    rows = await pool.fetch("SELECT category, fields, message_id FROM request_info")
    assert [(r["category"], r["fields"], r["message_id"]) for r in rows] == [
        ("order", {"item_code": "1234", "quantity": "2"}, mid)]
    out = await pool.fetch("SELECT message_id, kind, path, body, merchant_id, held FROM outbox")
    assert len(out) == 1
    assert (str(out[0]["message_id"]), out[0]["kind"], out[0]["path"], out[0]["merchant_id"],
            out[0]["held"]) == (mid, "request_info", "/v1/link/events", "acme", False)
    assert json.loads(bytes(out[0]["body"])) == {
        "kind": "request_info", "callback_id": callback_id, "edge_call_id": "e-100",
        "merchant_id": "acme", "caller": str(CALLER), "category": "order",
        "fields": {"item_code": "1234", "quantity": "2"}, "collected_at": isoformat(at)}


async def test_a_second_submit_of_the_call_is_a_second_fact(pool: asyncpg.Pool) -> None:
    await pool.execute(EMPTIED)
    store = CallbackStore(pool, owner="w1")
    callback_id = await a_call_back(pool, store, "101")
    await pool.execute("TRUNCATE outbox")
    at = datetime.now(UTC)
    ids = [await store.record_info(Submit("inquiry", (("order_number", str(n)),)),
                                   callback_id=callback_id, edge_call_id="e-101",
                                   merchant_id="acme", caller=CALLER, collected_at=at, seq=n)
           for n in (1, 2)]
    assert len(set(ids)) == 2
    assert await pool.fetchval("SELECT count(*) FROM request_info") == 2
    assert sorted(str(r["message_id"]) for r in await pool.fetch(
        "SELECT message_id FROM outbox WHERE kind = 'request_info'")) == sorted(ids)
