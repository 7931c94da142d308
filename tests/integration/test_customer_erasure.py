"""Erasing a customer, end to end on real PostgreSQL at both sites: the route at the
callback site (merchant key), the outbox relay over mutual TLS with signatures, the edge's
HTTP app applying the event. After it no row of either database holds the number in any
form (every column of every table scanned), the money records keep every amount, the
recording's file is gone, the other merchant's rows are theirs; a second erasure changes
nothing (200); a live consultation and a charge not settled are 409s naming why."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from advisors.record_store import ConsultationRecords
from billing.ledger import Ledger
from billing.postpaid import Postpaid
from billing.rating import Terms
from billing.standing import close
from callback_server.app import migration_sets
from callback_server.erasure import install
from callback_server.store import CallbackStore
from edge_server.reports import EVENT_EXAMPLES
from shared.db import create_pool, migrate_url
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from shared.outbox import EVENTS_PATH, Outbox, OutboxRelay
from tests.integration.db_scan import tables_holding
from tests.integration.localstripe import client_for
from tests.integration.test_advisors_records_link import Edge, edge_pool, until
from tests.integration.test_edge_app import free_port
from tests.integration.test_edge_http import ACME_TOKEN, MERCHANTS, bearer
from tests.unit.test_advisors_records import answered

pytestmark = pytest.mark.integration
__all__ = ["edge_pool"]   # the edge's database, a fixture of this module too

NUMBER = "+819012345678"
#: what every form of the number holds (E.164, its digits, national, significant)
SIGNIFICANT = "9012345678"
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SECRET = b"the site's secret"


@pytest.fixture(scope="module")
async def callback_pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, migration_sets(False))
    pool = await create_pool(pg_url)
    await CallbackStore(pool, owner="setup").sync_merchants(MERCHANTS)
    yield pool
    await pool.close()


@pytest.fixture
async def edge(edge_pool: asyncpg.Pool, pki_dir: Path) -> AsyncIterator[Edge]:
    site = Edge(edge_pool, pki_dir)
    await site.start()
    yield site
    await site.close()


@pytest.fixture
async def client(callback_pool: asyncpg.Pool, tmp_path: Path
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([(m.id, m.api_token_sha256) for m in MERCHANTS
                                      if m.api_token_sha256])
    install(app, lambda _: callback_pool, SECRET, tmp_path)
    async with TestClient(TestServer(app)) as c:
        yield c


async def erase(client: TestClient[Any, Any], number: str = "090-1234-5678"
                ) -> tuple[int, Any]:
    resp = await client.post(f"/v1/customers/{number}/erasure", json={"by": "support desk"},
                             headers=bearer(ACME_TOKEN))
    return resp.status, await resp.json()


async def customer_rows(pool: asyncpg.Pool, recordings: Path) -> None:
    """The customer at the callback site as calls, the click page, billing, the guard,
    SMS, notifications and recordings leave them; and the other merchant's call from the
    same number."""
    calls = [("acme", "cb-e1", "edge-e1"), ("bento", "cb-e2", "edge-e2")]
    for merchant, callback_id, edge_call_id in calls:
        await pool.execute(
            "INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller, "
            "dialed, received_at, message_id, max_attempts, next_attempt_at, status) "
            "VALUES ($1, $2, $3, $4, '0312345678', $5, $1, 3, $5, 'completed')",
            callback_id, edge_call_id, merchant, NUMBER, NOW)
    await pool.execute(
        "INSERT INTO callback_attempts (channel_id, callback_id, merchant_id, attempt_no, "
        "leg_seq, leg, carrier_id, endpoint, worker) VALUES ('ch-1', 'cb-e1', 'acme', 1, 1, "
        "'customer', 'carrier-a', 'PJSIP/09012345678@carrier-a', 'w1')")
    await pool.execute(
        "INSERT INTO cdrs (call_id, callback_id, merchant_id, leg, destination, carrier_id, "
        "started_at, ended_at, duration_s, billed_s, hangup_cause, disposition) VALUES "
        "('cb-e1-1-customer', 'cb-e1', 'acme', 'customer', $1, 'carrier-a', $2, $2, 60, 60, "
        "16, 'answered')", NUMBER, NOW)
    await pool.execute(
        "INSERT INTO request_info (callback_id, merchant_id, category, fields, collected_at, "
        "message_id) VALUES ('cb-e1', 'acme', 'order', $1, $2, 'm-ri')",
        {"callback_number": "09012345678", "item": "1234"}, NOW)
    sms = await pool.fetchval(
        "INSERT INTO sms_messages (merchant_id, to_number, sender, body, encoding, segments, "
        "provider) VALUES ('acme', $1, '+815011112222', 'code 123456', 'gsm7', 1, 'twilio') "
        "RETURNING id", NUMBER)
    later = NOW + timedelta(minutes=5)
    await pool.execute(
        "INSERT INTO click_phone_codes (merchant_id, number, client, code_sha256, sms_id, "
        "sent_at, expires_at) VALUES ('acme', $1, '203.0.113.7', '\\x00', $2, $3, $4)",
        NUMBER, sms, NOW, later)
    await pool.execute("INSERT INTO click_phone_locks VALUES ('acme', $1, $2)", NUMBER, later)
    await pool.execute(
        "INSERT INTO click_verified (token_sha256, csrf_token, merchant_id, number, "
        "created_at, expires_at) VALUES ('\\x01', 'csrf', 'acme', $1, $2, $3)",
        NUMBER, NOW, later)
    await pool.execute("INSERT INTO click_web_calls (merchant_id, number, client, "
                       "requested_at) VALUES ('acme', $1, '203.0.113.7', $2)", NUMBER, NOW)
    await pool.execute("INSERT INTO phonebook (merchant_id, number, name) VALUES "
                       "('acme', $1, 'Sato')", NUMBER)
    customer = await pool.fetchval("INSERT INTO customers (merchant_id, account) VALUES "
                                   "('acme', $1) RETURNING id", NUMBER)
    await pool.execute("INSERT INTO customer_numbers VALUES ('acme', $1, $2)", NUMBER, customer)
    for table in ("guard_callbacks", "guard_rounds"):
        extra = ("attempt_no, rang, confirmed, ended_at", "1, true, false, $2") \
            if table == "guard_rounds" else ("accepted_at", "$2")
        await pool.execute(
            f"INSERT INTO {table} (callback_id, number, merchant_id, known, {extra[0]}) "
            f"VALUES ('cb-e1', $1, 'acme', false, {extra[1]})", NUMBER, NOW)
    await pool.execute("INSERT INTO guard_numbers (number, first_seen_at) VALUES ($1, $2)",
                       NUMBER, NOW)
    await pool.execute(
        "INSERT INTO guard_refusals (at, stage, reason, last_at, number, merchant_id, detail) "
        "VALUES ($1, 'intake', 'velocity', $1, $2, 'acme', $3)",
        NOW, NUMBER, f"{NUMBER}: 3 call-backs in an hour")
    await pool.execute(
        "INSERT INTO notifications (merchant_id, event, fact_key, facts) VALUES ('acme', "
        "'request_collected', 'cb-e1', $1)", {"caller": NUMBER, "category": "order"})
    (recordings / "cb-e1.wav").write_bytes(b"RIFF....WAVE")
    await pool.execute(
        "INSERT INTO recordings (id, merchant_id, callback_id, edge_call_id, file, "
        "duration_ms, size_bytes, created_at, expires_at) VALUES ($1, 'acme', 'cb-e1', "
        "'edge-e1', 'cb-e1.wav', 1000, 12, $2, $3)", uuid.uuid4(), NOW, later)


async def edge_reports(pool: asyncpg.Pool) -> None:
    """What the edge will hold of the customer: its call, and the request info and CDR the
    callback site reports over the link."""
    for kind, number_field in (("request_info", "caller"), ("cdr", "destination")):
        body = {**EVENT_EXAMPLES[kind], number_field: NUMBER, "callback_id": "cb-e1",
                "edge_call_id": "edge-e1"}
        async with pool.acquire() as conn:
            await Outbox.enqueue(conn, kind=kind, path=EVENTS_PATH, payload=body,
                                 merchant_id="acme")


async def relayed(pool: asyncpg.Pool, pg_url: str, edge: Edge) -> None:
    """Every outbox message delivered to the edge."""
    relay = OutboxRelay(pool, pg_url, edge.link, owner="test-erasure", sweep_s=0.2)
    task = asyncio.create_task(relay.run())
    try:
        async def delivered() -> bool:
            """every outbox message is delivered"""
            return bool(await pool.fetchval(
                "SELECT bool_and(delivered_at IS NOT NULL) FROM outbox"))
        await until(delivered)
    finally:
        task.cancel()
    answers = await pool.fetch("SELECT kind, response_body FROM outbox")
    assert all(a["response_body"]["status"] == "stored" for a in answers), answers


async def money(pool: asyncpg.Pool) -> list[Any]:
    return [tuple(r) for r in await pool.fetch(
        "SELECT e.transaction_id, e.book, e.amount_yen FROM billing_entries e "
        "ORDER BY e.transaction_id, e.book, e.amount_yen")] + [tuple(r) for r in await pool.fetch(
            "SELECT record_id, total_yen, tax_yen FROM billing_records "
            "ORDER BY record_id")] + [tuple(r) for r in await pool.fetch(
                "SELECT id, total_yen, tax_yen FROM billing_postpaid_charges ORDER BY id")]


async def test_a_customer_erased_leaves_no_number_at_either_site_and_every_amount(
        client: TestClient[Any, Any], callback_pool: asyncpg.Pool, edge_pool: asyncpg.Pool,
        pg_url: str, edge: Edge, tmp_path: Path) -> None:
    await customer_rows(callback_pool, tmp_path)
    await edge_pool.execute(
        "INSERT INTO edge_calls (edge_call_id, channel_id, merchant_id, caller, dialed, "
        "state, received_at) VALUES ('edge-e1', 'ch-e1', 'acme', $1, '0312345678', 'released', "
        "$2)", NUMBER, NOW)
    record = answered(consultation_id="co-e1", callback_id="cb-e1", edge_call_id="edge-e1",
                      merchant_id="acme", customer_number=NUMBER)
    assert await ConsultationRecords(callback_pool).save(record)
    ledger = Ledger(callback_pool)
    await ledger.deposit("acme", NUMBER, 5_000, "test", "funds")
    held = await ledger.reserve("acme", NUMBER, "co-e1", Terms(300))
    assert hasattr(held, "id")
    await edge_reports(callback_pool)

    # a consultation going on, then a charge not settled: refused, nothing changed
    await callback_pool.execute(
        "INSERT INTO consult_live (consultation_id, callback_id, merchant_id, "
        "customer_channel, presence_id, snapshot) VALUES ('co-e1', 'cb-e1', 'acme', 'c1', "
        "'p1', $1)", record.to_json())
    status, body = await erase(client)
    assert (status, body["error"]["id"]) == (409, "consultation-live")
    await callback_pool.execute("DELETE FROM consult_live")
    status, body = await erase(client)
    assert (status, body["error"]["id"], body["error"]["reservations"]) == (
        409, "charge-unsettled", 1)
    await ledger.settle("acme", held.id, record.talk_s)
    # a postpaid charge of an earlier consultation, unpaid, then declined and written off
    postpaid = Postpaid(callback_pool, client_for(free_port()))
    recorded = await postpaid.record("acme", NUMBER, "co-e0", 60, Terms(100), by="calls")
    assert recorded is not None
    charge, attempt = recorded
    status, body = await erase(client)
    assert (status, body["error"]["id"], body["error"]["unpaid"]) == (
        409, "charge-unsettled", 1)
    await callback_pool.execute("INSERT INTO billing_postpaid_outcomes (attempt_id, outcome, "
                                "failure) VALUES ($1, 'failed', 'card_declined')", attempt)
    await callback_pool.execute(
        "INSERT INTO billing_notices (merchant_id, account_id, kind, charge_id, detail) "
        "SELECT 'acme', account_id, 'charge-failed', id, $2 FROM billing_postpaid_charges "
        "WHERE id = $1", charge.id, "attempt 1 failed: card_declined")
    await close(callback_pool, "acme", charge.id, "written-off", by="op", reason="test")
    await callback_pool.execute(
        "INSERT INTO guard_alerts (at, kind, key, message, details) VALUES ($1, 'lockout', "
        "$2, $3, $4)", NOW, f"number:{NUMBER}", f"{NUMBER} locked out",
        {"merchant_id": "acme", "number": NUMBER})
    await callback_pool.execute(
        "INSERT INTO billing_records_awaiting (record_id, customer_call_id, record) VALUES "
        "('br-e0', 'cb-e0-1-customer', $1)", {"merchant_id": "acme", "account": NUMBER})
    await relayed(callback_pool, pg_url, edge)
    assert await tables_holding(edge_pool, SIGNIFICANT) == {
        "public.billing_records": 1, "public.cdrs": 1, "public.consultations": 1,
        "public.edge_calls": 1, "public.requests": 1}
    before_money = await money(callback_pool)
    balance = await ledger.balance("acme", NUMBER)

    status, first = await erase(client)
    assert status == 200 and first["changed"] is True, first
    alias = first["pseudonym"]
    assert alias.startswith("erased:") and len(alias) == len("erased:") + 16
    assert first["requested_by"] == "support desk"
    assert first["rows"]["recordings"] == 1 and first["rows"]["callback_requests"] == 1
    assert first["rows"]["billing_accounts"] == 1 and first["rows"]["consultations"] == 1
    for table in ("guard_alerts", "billing_records_awaiting"):
        assert first["rows"][table] == 1, first["rows"]
    assert not (tmp_path / "cb-e1.wav").exists()
    await relayed(callback_pool, pg_url, edge)

    # nothing left of the number at either site, but the other merchant's own call
    assert await tables_holding(callback_pool, SIGNIFICANT) == {
        "public.callback_requests": 1, "public.guard_numbers": 1}
    assert await callback_pool.fetchval(
        "SELECT merchant_id FROM callback_requests WHERE caller = $1", NUMBER) == "bento"
    assert await tables_holding(edge_pool, SIGNIFICANT) == {}
    assert await tables_holding(edge_pool, alias) == {
        "public.billing_records": 1, "public.cdrs": 1, "public.consultations": 1,
        "public.edge_calls": 1, "public.requests": 1}
    # the money kept, now under the pseudonym
    assert await money(callback_pool) == before_money
    assert await ledger.balance("acme", alias) == balance
    audit = await callback_pool.fetchrow("SELECT * FROM customer_erasures")
    assert (audit["pseudonym"], audit["requested_by"], audit["rows"]) == (
        alias, "support desk", first["rows"])

    status, again = await erase(client, NUMBER)
    assert status == 200 and again == {**first, "changed": False}
    assert await callback_pool.fetchval("SELECT count(*) FROM customer_erasures") == 1
    assert await callback_pool.fetchval(
        "SELECT count(*) FROM outbox WHERE kind = 'customer_erasure'") == 1


async def test_a_bad_number_or_body_is_a_400(client: TestClient[Any, Any]) -> None:
    for number, body in (("12", {"by": "x"}), ("090-1234-5678", {}),
                         ("090-1234-5678", {"by": "x", "why": "y"})):
        resp = await client.post(f"/v1/customers/{number}/erasure", json=body,
                                 headers=bearer(ACME_TOKEN))
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"]["id"] == "invalid-field"
    resp = await client.post("/v1/customers/090-1234-5678/erasure", json={"by": "x"})
    assert resp.status == 401
    assert json.loads(await resp.text())["error"]["id"] == "auth-missing"
