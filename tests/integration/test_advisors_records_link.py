"""A consultation record from the callback site's store to the edge's call-center API, end
to end: real PostgreSQL for each site, the callback site's outbox relay, mutual TLS with
pinned peers, signatures, the edge's HTTP app. Stored once at the edge (a re-delivery is
answered, not stored again), money exact; a malformed or foreign record is refused
with a 4xx naming its field."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

import advisors
import shared
from advisors.record_store import MIGRATIONS, ConsultationRecords
from advisors.records import ConsultationRecord, LegCost
from edge_server.flow_messages import Outcome, RecordCall
from edge_server.http import POOL_KEY, create_http_app
from edge_server.store import CallStore, edge_migrations
from shared import pki
from shared.config import LinkRoute
from shared.db import create_pool, migrate_url, package_migrations
from shared.link import LinkClient, LinkRejected, pin_peer
from shared.money import Money
from shared.outbox import EVENTS_PATH, OutboxRelay, fact_message_id
from shared.phone import E164
from shared.signing import Signer, SigningKey, Verifier, load_public_key
from tests.conftest import drop_database, fresh_database
from tests.integration.test_edge_http import ACME_TOKEN, MERCHANTS, bearer
from tests.integration.test_shared_link import free_port
from tests.unit.test_advisors_records import answered

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def callback_pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("advisors", advisors.__file__),
                               MIGRATIONS])
    pool = await create_pool(pg_url)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def edge_pool(pg_server_url: str) -> AsyncIterator[asyncpg.Pool]:
    name = f"t{os.getpid()}_consultation_edge"
    url = await fresh_database(pg_server_url, name)
    await migrate_url(url, edge_migrations())
    pool = await create_pool(url)
    await CallStore(pool).sync_merchants(MERCHANTS)
    yield pool
    await pool.close()
    await drop_database(pg_server_url, name)


@pytest.fixture
async def clean(callback_pool: asyncpg.Pool, edge_pool: asyncpg.Pool) -> None:
    await callback_pool.execute("TRUNCATE consultations, consultation_leg_costs, outbox CASCADE")
    await edge_pool.execute("TRUNCATE consultations, consultation_leg_costs, inbound_messages "
                            "CASCADE")


class Edge:
    """The edge's HTTP app on TLS (pinned to the callback site's certificate), and a link
    client of the callback site to it."""

    def __init__(self, pool: asyncpg.Pool, pki_dir: Path) -> None:
        self.pki_dir = pki_dir
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        app = create_http_app(merchants=MERCHANTS, verifier=Verifier(
            {"callback-sign-1": load_public_key(pki_dir / "callback-sign-1.pub")}))
        app[POOL_KEY] = pool
        pin_peer(app, "callback")
        self.runner = web.AppRunner(app)
        signer = Signer([SigningKey.load(pki_dir / "callback-sign-1.key")])
        self.link = LinkClient(
            [LinkRoute("wan", self.url)], signer,
            pki.client_context(pki_dir / "ca.pem", pki_dir / "callback.pem",
                               pki_dir / "callback.key"),
            peer_identity="edge", connect_timeout_s=2.0)

    async def start(self) -> None:
        await self.runner.setup()
        ctx = pki.server_context(self.pki_dir / "edge.pem", self.pki_dir / "edge.key",
                                 self.pki_dir / "ca.pem", require_client_cert=False)
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def close(self) -> None:
        await self.link.close()
        await self.runner.cleanup()

    async def call_center(self, path: str, **params: str) -> tuple[int, Any]:
        """A call center's GET (server certificate checked, no client certificate)."""
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.pem"))
        ctx.check_hostname = False   # the edge's certificate names "edge", we dial 127.0.0.1
        async with aiohttp.ClientSession() as session, session.get(
                self.url + path, params=params, headers=bearer(ACME_TOKEN), ssl=ctx) as resp:
            return resp.status, await resp.json()

    async def post(self, body: dict[str, Any], message_id: str) -> tuple[int, Any]:
        """What the edge answers the callback site's link for one message."""
        try:
            answer = await self.link.post(EVENTS_PATH, json.dumps(body).encode(), message_id,
                                          kind="consultation")
        except LinkRejected as refused:
            return refused.status, refused.body
        return answer.status, answer.body


@pytest.fixture
async def edge(edge_pool: asyncpg.Pool, pki_dir: Path, clean: None) -> AsyncIterator[Edge]:
    site = Edge(edge_pool, pki_dir)
    await site.start()
    yield site
    await site.close()


async def until(check: Any, timeout_s: float = 15.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {check.__doc__}")


async def test_a_record_reaches_the_call_center_once_with_its_money_exact(
        callback_pool: asyncpg.Pool, edge_pool: asyncpg.Pool, pg_url: str,
        edge: Edge) -> None:
    record = answered(leg_costs=(
        LegCost("cb-0f3a9c-1-customer", "customer", "carrier-b",
                Money.of("0.139800001", "USD")),
        LegCost("co-7f3a-r2", "advisor", None, Money.of("1200", "JPY")),
        LegCost("co-7f3a-r1", "advisor", "carrier-a", None)))
    records = ConsultationRecords(callback_pool)
    assert await records.save(record) and not await records.save(record)
    relay = OutboxRelay(callback_pool, pg_url, edge.link, owner="test-callback", sweep_s=0.2)
    task = asyncio.create_task(relay.run())
    try:
        async def delivered() -> bool:
            """the outbox message is delivered"""
            return bool(await callback_pool.fetchval(
                "SELECT delivered_at IS NOT NULL FROM outbox"))
        await until(delivered)
        assert await edge_pool.fetchval("SELECT count(*) FROM consultations") == 1
        answer = await callback_pool.fetchval("SELECT response_body FROM outbox")
        assert answer == {"status": "stored", "kind": "consultation"}

        # the acknowledgement was lost: the relay sends it again under the same id
        await callback_pool.execute(
            "UPDATE outbox SET delivered_at = NULL, response_body = NULL, attempts = 0, "
            "next_attempt_at = now(), lease_owner = NULL, lease_expires_at = NULL")
        await callback_pool.execute("NOTIFY outbox")
        await until(delivered)
        assert await callback_pool.fetchval("SELECT response_body FROM outbox") == answer
        assert await edge_pool.fetchval("SELECT count(*) FROM consultations") == 1
        assert await edge_pool.fetchval("SELECT count(*) FROM consultation_leg_costs") == 3
    finally:
        task.cancel()

    status, page = await edge.call_center("/v1/consultations")
    assert status == 200 and page["next_cursor"] is None
    [item] = page["items"]
    assert item["leg_costs"][0]["cost"] == {"amount": "0.139800001", "currency": "USD"}
    assert item["leg_costs"][1]["cost"] == {"amount": "1200", "currency": "JPY"}
    item.pop("recorded_at")
    assert ConsultationRecord.from_json(item) == record
    status, filtered = await edge.call_center("/v1/consultations", advisor_id="99")
    assert (status, filtered["items"]) == (200, [])


async def test_the_same_record_under_another_message_id_is_a_duplicate(edge: Edge) -> None:
    body = {"kind": "consultation", **answered().to_json()}
    first = await edge.post(body, fact_message_id("consultation", "co-7f3a"))
    again = await edge.post(body, str(uuid.uuid4()))
    assert first == (200, {"status": "stored", "kind": "consultation"})
    assert again == (200, {"status": "duplicate", "kind": "consultation"})
    status, page = await edge.call_center("/v1/consultations")
    assert status == 200 and len(page["items"]) == 1


async def test_a_customer_leg_whose_cost_is_unknown_is_stored_once_and_shown(
        edge: Edge, edge_pool: asyncpg.Pool) -> None:
    """The record sent past the customer leg's wait: the edge stores it once under its
    message id (a re-delivery answered alike, nothing stored again) and the call center
    reads the customer leg marked ``cost_unknown``."""
    unknown = LegCost("cb-0f3a9c-1-customer", "customer", None, None, cost_unknown=True)
    record = answered(leg_costs=(*answered().leg_costs[1:], unknown))
    body = {"kind": "consultation", **record.to_json()}
    message_id = fact_message_id("consultation", record.consultation_id)
    first = await edge.post(body, message_id)
    assert first == (200, {"status": "stored", "kind": "consultation"})
    assert await edge.post(body, message_id) == first
    assert await edge_pool.fetchval("SELECT count(*) FROM consultation_leg_costs") == 3
    status, page = await edge.call_center("/v1/consultations")
    [item] = page["items"]
    assert status == 200 and item["leg_costs"][-1] == {
        "call_id": "cb-0f3a9c-1-customer", "role": "customer", "carrier_id": None,
        "cost": None, "cost_unknown": True}
    item.pop("recorded_at")
    assert ConsultationRecord.from_json(item) == record


@pytest.mark.parametrize(("mutate", "status", "error", "field"), [
    (lambda b: b.update(talk_s=-1), 400, "invalid-field", "talk_s"),
    (lambda b: b.update(end_reason="hung_up"), 400, "invalid-field", "end_reason"),
    (lambda b: b.pop("leg_costs"), 400, "invalid-field", "leg_costs"),
    (lambda b: b["rings"][1].update(ended_at="2026-12-05T00:00:00Z"), 400, "invalid-field",
     "rings[1].ended_at"),
    (lambda b: b["leg_costs"][0].update(cost={"amount": 0.2, "currency": "USD"}), 400,
     "invalid-field", "leg_costs[0].cost"),
    (lambda b: b["leg_costs"][0].update(cost_unknown=True), 400, "invalid-field",
     "leg_costs[0].cost_unknown"),                             # unknown, yet a cost
    (lambda b: b.update(advisor_id=None), 400, "invalid-field", "advisor_id"),
    (lambda b: b.update(surprise=True), 400, "invalid-field", "surprise"),
    (lambda b: b.update(merchant_id="nobody"), 422, "unknown-merchant", "merchant_id"),
])
async def test_a_malformed_record_is_refused_naming_its_field(
        edge: Edge, edge_pool: asyncpg.Pool, mutate: Any, status: int, error: str,
        field: str) -> None:
    body = {"kind": "consultation", **answered().to_json()}
    mutate(body)
    got, answer = await edge.post(body, str(uuid.uuid4()))
    assert (got, answer["error"]["id"], answer["error"].get("field")) == (status, error, field)
    assert await edge_pool.fetchval("SELECT count(*) FROM consultations") == 0


async def test_a_record_naming_another_merchants_call_is_refused(
        edge: Edge, edge_pool: asyncpg.Pool) -> None:
    await CallStore(edge_pool).record_call(RecordCall(
        "edge-bento-1", "bento-1", "bento", E164.parse("+819012345678"),
        E164.parse("+81120999888"), Outcome.KEPT_DIRECT, "fixed line"), answered().ended_at)
    body = {"kind": "consultation", **answered(edge_call_id="edge-bento-1").to_json()}
    status, answer = await edge.post(body, str(uuid.uuid4()))
    assert (status, answer["error"]["id"]) == (422, "tenant-mismatch")
    assert await edge_pool.fetchval("SELECT count(*) FROM consultations") == 0


@pytest.mark.parametrize(("params", "field"), [
    ({"advisor_id": "x"}, "advisor_id"), ({"group_id": "0"}, "group_id"),
    ({"talk_s": "1"}, "talk_s"), ({"cursor": "nope"}, "cursor"), ({"limit": "501"}, "limit"),
    ({"until": "2026-12-05T01:00:00"}, "until"),
])
async def test_the_call_centers_bad_query_is_a_400_naming_it(edge: Edge, params: dict[str, str],
                                                              field: str) -> None:
    status, body = await edge.call_center("/v1/consultations", **params)
    assert (status, body["error"]["id"], body["error"]["field"]) == (400, "invalid-field", field)
