"""``POST /v1/consultations`` (web click-to-call) over real HTTP and PostgreSQL: every
refusal is a 4xx naming the field or the reason; an accepted request is a queued job
(stored before the 202) that a worker's claim hands over with the advisor picked, after a
restart too; ``Idempotency-Key`` stores it once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import advisors
import callback_server
import shared
from advisors import presence as pm
from advisors import record_store
from advisors.live import Presences
from advisors.model import PstnContact, SipContact, Via
from advisors.schemas import AdvisorInput, CustomerInput
from advisors.store import AdvisorStore
from billing import records
from billing.ledger import Ledger
from billing.settings import BillingSettings
from callback_server.advisor_desk import AdvisorDesk
from callback_server.click_http import ClickIntake, install
from callback_server.consult_billing import ConsultBilling
from callback_server.guard.service import Guard
from callback_server.guard.settings import GuardSettings
from callback_server.routing import Routing
from callback_server.store import CallbackStore
from ivr_platform.sms_store import migrations as sms_migrations
from shared.db import create_pool, migrate_url, package_migrations
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from shared.phone import E164
from tests.integration import billing_db
from tests.integration.test_callback_http import MERCHANTS, TOKEN

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CUSTOMER = "+819012345678"
TABLES = ("click_to_call_requests, callback_attempts, callback_requests, guard_refusals, "
          "guard_callbacks, guard_numbers, "
          "advisor_settings, advisors, advisor_presence, advisor_events, customers, "
          "customer_numbers, billing_accounts, billing_policies, billing_records")


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("callback", callback_server.__file__),
                               package_migrations("advisors", advisors.__file__),
                               record_store.MIGRATIONS, billing_db.migrations(),
                               records.MIGRATIONS, sms_migrations()])
    p = await create_pool(pg_url, max_size=10)
    await CallbackStore(p, owner="setup").sync_merchants(MERCHANTS)
    yield p
    await p.close()


@pytest.fixture
async def db(pool: asyncpg.Pool) -> dict[str, int]:
    """Emptied; acme's advisors (id by name): ``sip`` online, ``pstn`` offline, 100 yen a
    minute; the customer member-42 at ``CUSTOMER`` with 1000 yen."""
    await pool.execute(f"TRUNCATE {TABLES} CASCADE")
    store = AdvisorStore(pool)
    ids = {}
    for name, code, contact in (("sip", "0001", SipContact("adv1")),
                                ("pstn", "0002", PstnContact(E164.parse("+81312340002")))):
        advisor, _ = await store.create_advisor("acme", AdvisorInput(
            display_name=name, code=code, contact=contact, price_per_minute_yen=100))
        ids[name] = advisor.id
    await Presences(pool).apply("acme", ids["sip"], pm.GoOnline(datetime.now(UTC), Via.API))
    await store.create_customer("acme", CustomerInput(account="member-42", name="Sato",
                                                      numbers=(E164.parse(CUSTOMER),)))
    await Ledger(pool).deposit("acme", "member-42", 1000, "op", "bank transfer")
    return ids


@pytest.fixture
async def client(pool: asyncpg.Pool) -> AsyncIterator[Any]:
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([(m.id, m.api_token_sha256) for m in MERCHANTS
                                      if m.api_token_sha256])
    install(app, lambda _: ClickIntake(
        CallbackStore(pool, owner="http"), AdvisorDesk(pool, Routing(None, ())),
        Guard(pool, GuardSettings()), ConsultBilling(pool, BillingSettings()),
        {m.id: m for m in MERCHANTS}))
    async with TestClient(TestServer(app)) as c:
        yield c


async def post(client: Any, body: Any, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = AUTH if key is None else {**AUTH, "Idempotency-Key": key}
    resp = await client.post("/v1/consultations", json=body, headers=headers)
    return resp.status, await resp.json()


async def test_a_request_is_a_queued_job_claimed_with_its_advisor(
        client: Any, db: dict[str, int], pool: asyncpg.Pool) -> None:
    status, body = await post(client, {"customer_number": CUSTOMER, "advisor_code": "0001"})
    assert status == 202, body
    callback_id = body["callback_id"]
    assert body == {"consultation_id": f"{callback_id}-c1", "callback_id": callback_id,
                    "advisor_id": db["sip"], "status": "queued"}
    # stored before the answer: a worker started afterwards (a restart) claims and dials it
    worker = CallbackStore(pool, owner="worker-after-restart")
    [job] = await worker.claim(10)
    assert (job.callback_id, job.click_advisor, str(job.caller), job.max_attempts) == (
        callback_id, db["sip"], CUSTOMER, 1)
    # the worker died before dialling: its lease expires, the next worker dials it
    await pool.execute("UPDATE callback_requests SET lease_expires_at = now() - interval"
                       " '1 second' WHERE callback_id = $1", callback_id)
    [rescued] = await CallbackStore(pool, owner="rescuer").claim(10)
    assert (rescued.callback_id, rescued.click_advisor, rescued.rescued) == (
        callback_id, db["sip"], True)


async def test_the_same_idempotency_key_stores_one_request(
        client: Any, db: dict[str, int], pool: asyncpg.Pool) -> None:
    body = {"customer_number": CUSTOMER, "advisor_id": db["sip"]}
    answers = await asyncio.gather(*(post(client, body, "order-77") for _ in range(3)))
    assert {s for s, _ in answers} == {202}
    assert len({b["callback_id"] for _, b in answers}) == 1
    assert await pool.fetchval("SELECT count(*) FROM callback_requests") == 1
    # answered as stored, even once the advisor is no longer free; another key is checked
    await Presences(pool).apply("acme", db["sip"], pm.GoOffline(datetime.now(UTC), Via.API))
    status, again = await post(client, body, "order-77")
    assert status == 202 and again == answers[0][1]
    status, other = await post(client, body, "order-78")
    assert status == 409 and other["error"]["reason"] == "offline"
    status, bad = await post(client, body, "bad key")
    assert status == 400 and bad["error"]["field"] == "Idempotency-Key"


@pytest.mark.parametrize(("body", "field"), [
    ({"advisor_id": 1}, "customer_number"),
    ({"customer_number": "0901234", "advisor_id": 1}, "customer_number"),
    ({"customer_number": CUSTOMER}, "advisor_id"),
    ({"customer_number": CUSTOMER, "advisor_id": 1, "advisor_code": "0001"}, "advisor_id"),
    ({"customer_number": CUSTOMER, "advisor_id": "1"}, "advisor_id"),
    ({"customer_number": CUSTOMER, "advisor_id": True}, "advisor_id"),
    ({"customer_number": CUSTOMER, "advisor_code": "12345"}, "advisor_code"),
    ({"customer_number": CUSTOMER, "advisor_code": "0001", "queue": 1}, "queue"),
])
async def test_a_malformed_body_is_400_naming_the_field(
        client: Any, db: dict[str, int], pool: asyncpg.Pool, body: dict[str, Any],
        field: str) -> None:
    status, answer = await post(client, body)
    assert status == 400 and answer["error"] == {
        "id": "invalid-field", "field": field, "message": answer["error"]["message"]}
    assert await pool.fetchval("SELECT count(*) FROM callback_requests") == 0


async def test_refusals_name_the_reason_and_store_nothing(
        client: Any, db: dict[str, int], pool: asyncpg.Pool) -> None:
    cases = [
        ({"customer_number": CUSTOMER, "advisor_code": "0009"}, 404, "not-found", None),
        ({"customer_number": CUSTOMER, "advisor_id": 999999}, 404, "not-found", None),
        ({"customer_number": CUSTOMER, "advisor_id": db["pstn"]}, 409,
         "advisor-unavailable", "offline"),
        ({"customer_number": "+441632960123", "advisor_id": db["sip"]}, 403,
         "number-refused", "destination_foreign"),
        ({"customer_number": "+819087654321", "advisor_id": db["sip"]}, 402,
         "billing-refused", "balance-too-low"),
    ]
    for body, status, error_id, reason in cases:
        got, answer = await post(client, body)
        assert (got, answer["error"]["id"], answer["error"].get("reason")) == (
            status, error_id, reason), answer
    assert await pool.fetchval("SELECT count(*) FROM callback_requests") == 0
    assert await pool.fetchval(
        "SELECT stage FROM guard_refusals WHERE number = '+441632960123'") == "click_to_call"
    resp = await client.post("/v1/consultations", json={})
    assert resp.status == 401


async def test_a_second_request_for_the_same_number_meets_the_guards_velocity(
        client: Any, db: dict[str, int], pool: asyncpg.Pool) -> None:
    """A click-to-call counts as a call-back request for the number: another one while
    it is pending is refused (the guard's per-number limit), with nothing stored."""
    body = {"customer_number": CUSTOMER, "advisor_id": db["sip"]}
    status, first = await post(client, body, "first")
    assert status == 202, first
    status, second = await post(client, body, "second")
    assert status == 403 and second["error"]["reason"] == "velocity_concurrent", second
    assert await pool.fetchval("SELECT count(*) FROM callback_requests") == 1
    assert await pool.fetchval("SELECT callback_id FROM guard_callbacks") == \
        first["callback_id"]
