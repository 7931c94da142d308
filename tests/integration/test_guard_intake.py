"""The guard on the real intake path, real PostgreSQL: the IRSF corpus, harassment of one
victim number, block lists over the operator API, refusals in GET /v1/callbacks/{id} and
/metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from callback_server.config import StaticRoute
from callback_server.guard.http import GUARD_KEY, install
from callback_server.guard.service import Guard
from callback_server.guard.settings import GuardSettings
from callback_server.guard.testing import FakeClock, irsf_corpus
from callback_server.http import attach_store, create_http_app
from callback_server.ivr_flow import load_named
from callback_server.routing import Routing
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.testing import FakeAri, FixedRater, merchant
from callback_server.worker import Worker
from shared import ari
from shared.link import encode_batch
from shared.metrics_http import install as install_metrics
from shared.phone import E164
from shared.signing import Signer, SigningKey, Verifier
from tests import prom
from tests.integration import callback_db
from tests.integration.raw_http import DEEP_JSON, EDGE_TIMES, raw_get

pytestmark = pytest.mark.integration

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
PEER_KEY = SigningKey.generate("edge-sign-1")
TOKEN = "acme-token"
OPERATOR = "operator-secret"
ACME = replace(merchant("acme", api_token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest()),
               retry_backoff_s=(0,))
PATH = "/v1/link/callbacks"
BATCH_PATH = "/v1/link/callbacks/batch"
T0 = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
SETTINGS = GuardSettings(operator_token_sha256=hashlib.sha256(OPERATOR.encode()).hexdigest())


pool, clean = callback_db.fixtures([ACME])


def body(edge_call_id: str, caller: str) -> bytes:
    return json.dumps({"edge_call_id": edge_call_id, "merchant_id": "acme", "caller": caller,
                       "dialed": "+81120123456", "received_at": "2026-11-22T01:02:03.456Z",
                       "hungup_at": "2026-11-22T01:02:06.001Z",
                       "announce_mode": "early_media"}).encode()


def signed(raw: bytes) -> dict[str, str]:
    headers = Signer([PEER_KEY]).headers("POST", PATH, raw, message_id=str(uuid.uuid4()))
    headers["content-type"] = "application/json"
    return headers


def make_app(guard: Guard) -> web.Application:
    app = create_http_app(merchants=[ACME],
                          verifier=Verifier({PEER_KEY.key_id: PEER_KEY.public()}))
    install(app)
    install_metrics(app, lambda _: guard.pool)
    attach_store(app, CallbackStore(guard.pool, owner="http", guard=guard))
    app[GUARD_KEY] = guard
    return app


class NeverAnswers(FakeAri):
    """A victim's phone that rings out (cause 19) every time; never presses 1."""

    async def originate(self, endpoint: str, **kw: Any) -> ari.Channel:
        channel = await super().originate(endpoint, **kw)
        loop = asyncio.get_running_loop()
        loop.call_soon(self.router.dispatch, ari.ChannelDestroyed(channel, cause=19))
        return channel


def worker(store: CallbackStore, db_url: str, fake: FakeAri, guard: Guard) -> Worker:
    ready = asyncio.Event()
    ready.set()
    return Worker(store=store, db_url=db_url, merchants={"acme": ACME},
                  flows={"order": load_named("order")},
                  routes=Routing(None, (StaticRoute("carrier-b", "PJSIP/{digits}@carrier-b"),)),
                  client=fake, router=fake.router, rater=FixedRater(), ari_ready=ready,
                  guard=guard)


async def run_until_idle(w: Worker) -> None:
    while True:
        started = await w.claim_and_start()
        if w._tasks:
            await asyncio.wait(list(w._tasks.values()), timeout=10)
        if not started and not w._tasks:
            return


# --- IRSF ----------------------------------------------------------------------------------

async def test_irsf_corpus_of_1000_triggers_makes_no_origination(
        clean: asyncpg.Pool, aiohttp_client: ClientFactory, pg_url: str) -> None:
    guard = Guard(clean, SETTINGS)
    client = await aiohttp_client(make_app(guard))
    refused_before = prom.total("cbgw_guard_refusals_total")
    decisions_before = (prom.total("cbgw_guard_decision_seconds_sum"),
                        prom.total("cbgw_guard_decision_seconds_count"))
    reasons: dict[str, int] = {}
    latencies: list[float] = []
    for i, caller in enumerate(irsf_corpus(1000)):
        raw = body(f"irsf-{i}", caller)
        started = time.perf_counter()
        resp = await client.post(PATH, data=raw, headers=signed(raw))
        latencies.append(time.perf_counter() - started)
        data = await resp.json()
        if resp.status == 202:
            assert data["status"] == "refused", (caller, data)
            reason = data["reason"]
        else:
            assert resp.status == 422, (caller, resp.status, data)
            assert data["error"]["id"] == "destination-refused"
            reason = data["error"]["reason"]
        reasons[reason] = reasons.get(reason, 0) + 1
    assert sum(reasons.values()) == 1000
    assert await clean.fetchval("SELECT count(*) FROM callback_requests "
                                "WHERE status <> 'refused'") == 0
    assert await clean.fetchval("SELECT count(*) FROM guard_refusals") == 1000
    assert prom.total("cbgw_guard_refusals_total") - refused_before == 1000
    fake = FakeAri()
    w = worker(CallbackStore(clean, owner="w", guard=guard), pg_url, fake, guard)
    assert await w.claim_and_start() == 0
    assert fake.named("originate") == []
    latencies.sort()
    p99 = latencies[int(0.99 * len(latencies))]
    decided = (prom.total("cbgw_guard_decision_seconds_sum") - decisions_before[0],
               prom.total("cbgw_guard_decision_seconds_count") - decisions_before[1])
    print(f"\nIRSF corpus: 1000 triggers, 0 originations; reasons {sorted(reasons.items())}\n"
          f"p99 HTTP intake (signed, loopback) {p99 * 1000:.1f} ms; mean guard decision "
          f"(E.164 screened in the transaction) {decided[0] / max(1, decided[1]) * 1000:.2f} ms")


# --- harassment ----------------------------------------------------------------------------

async def test_irsf_corpus_in_batch_requests_is_refused_message_by_message(
        clean: asyncpg.Pool, aiohttp_client: ClientFactory) -> None:
    """The relay's batch route screens each message as the single route does: raw callers
    get their own 422 (recorded under the message's id), numbered ones a refused 202."""
    guard = Guard(clean, SETTINGS)
    client = await aiohttp_client(make_app(guard))
    corpus = list(irsf_corpus(200)) + ["+819012345678"]
    messages = [(str(uuid.uuid4()), body(f"irsf-b-{i}", caller)) for i, caller in enumerate(corpus)]
    results: list[dict[str, Any]] = []
    for start in range(0, len(messages), 50):
        raw = encode_batch(messages[start:start + 50])
        headers = Signer([PEER_KEY]).headers("POST", BATCH_PATH, raw)
        resp = await client.post(BATCH_PATH, data=raw, headers=headers)
        assert resp.status == 200, await resp.text()
        results += (await resp.json())["results"]
    assert [r["message_id"] for r in results] == [mid for mid, _ in messages]
    *irsf, customer = results
    raw_refused = [r for r in irsf if r["status"] == 422]
    assert raw_refused and all(r["body"]["error"]["id"] == "destination-refused"
                               for r in raw_refused)
    assert all(r["body"]["status"] == "refused" for r in irsf if r["status"] == 202)
    assert len(raw_refused) + sum(r["status"] == 202 for r in irsf) == 200
    assert customer["status"] == 202 and customer["body"]["status"] == "queued"
    assert await clean.fetchval("SELECT count(*) FROM guard_refusals") == 200
    logged = await clean.fetchval("SELECT count(*) FROM guard_refusals WHERE message_id = ANY($1)",
                                  [r["message_id"] for r in raw_refused])
    assert logged == len(raw_refused)
    assert await clean.fetchval("SELECT count(*) FROM callback_requests "
                                "WHERE status <> 'refused'") == 1


async def test_200_triggers_in_10_minutes_for_a_victim_ring_at_most_twice(
        clean: asyncpg.Pool, pg_url: str) -> None:
    clock = FakeClock(T0)
    guard = Guard(clean, GuardSettings(), clock=clock)
    store = CallbackStore(clean, owner="w", guard=guard)
    fake = NeverAnswers()
    w = worker(store, pg_url, fake, guard)
    victim = E164("819012345678")
    answers: list[dict[str, Any]] = []
    for i in range(200):                                   # one every 3 s: 10 minutes
        clock.now = T0 + timedelta(seconds=3 * i)
        req = IntakeRequest(edge_call_id=f"harass-{i}", merchant_id="acme", caller=victim,
                            dialed="+81120123456", received_at=clock.now, hungup_at=clock.now,
                            announce_mode="early_media")
        answers.append((await store.intake(str(uuid.uuid4()), req, ACME))[1])
        await run_until_idle(w)
    originations = fake.named("originate")
    assert len(originations) <= 2, originations
    assert len(originations) == 2
    locked = await clean.fetchval("SELECT locked_until FROM guard_numbers WHERE number = $1",
                                  str(victim))
    assert locked is not None and locked > clock.now
    refused = [a["reason"] for a in answers if a["status"] == "refused"]
    assert len(refused) == 199 and "number_locked" in refused
    assert set(refused) <= {"velocity_concurrent", "number_locked"}
    first = await clean.fetchrow("SELECT status, reason FROM callback_requests "
                                 "WHERE edge_call_id = 'harass-0'")
    assert dict(first) == {"status": "failed", "reason": "number_locked"}
    rounds = await clean.fetch("SELECT rang, confirmed FROM guard_rounds")
    assert [tuple(r) for r in rounds] == [(True, False), (True, False)]


# --- operator API, GET /v1/callbacks/{id}, /metrics ------------------------------------------

async def test_block_list_over_the_api_refuses_and_the_reason_is_visible(
        clean: asyncpg.Pool, aiohttp_client: ClientFactory) -> None:
    guard = Guard(clean, SETTINGS)
    client = await aiohttp_client(make_app(guard))
    op = {"Authorization": f"Bearer {OPERATOR}"}
    resp = await client.put("/v1/guard/lists/block/+819011112222", headers=op,
                            json={"reason": "fraud report", "by": "noc"})
    assert resp.status == 200, await resp.text()
    assert (await client.put("/v1/guard/lists/block/+819011112222")).status == 401
    entries = await (await client.get("/v1/guard/lists/block", headers=op)).json()
    assert [e["number"] for e in entries["entries"]] == ["+819011112222"]

    before = await (await client.get("/metrics")).text()
    raw = body("blocked-1", "+819011112222")
    answer = await (await client.post(PATH, data=raw, headers=signed(raw))).json()
    assert answer["status"] == "refused" and answer["reason"] == "number_blocked"
    got = await client.get(f"/v1/callbacks/{answer['callback_id']}",
                           headers={"Authorization": f"Bearer {TOKEN}"})
    row = await got.json()
    assert row["status"] == "refused" and row["reason"] == "number_blocked"
    event = json.loads(await clean.fetchval(
        "SELECT body FROM outbox WHERE kind = 'callback_status'"))
    assert event["status"] == "failed" and event["reason"] == "number_blocked"

    resp = await client.delete("/v1/guard/lists/block/819011112222", headers=op)
    assert resp.status == 204
    raw = body("blocked-2", "+819011112222")
    answer = await (await client.post(PATH, data=raw, headers=signed(raw))).json()
    assert answer["status"] == "queued"

    refusals = await (await client.get("/v1/guard/refusals?reason=number_blocked",
                                       headers=op)).json()
    assert len(refusals["refusals"]) == 1
    after = await (await client.get("/metrics")).text()
    for name, labels, grew in (
            ("cbgw_guard_refusals_total",
             {"stage": "intake", "reason": "number_blocked", "merchant": "acme"}, 1),
            ("cbgw_guard_decision_seconds_count", {}, 2),
            ("cbgw_guard_accepted_total", {}, 1)):
        assert prom.scraped(after, name, **labels) - prom.scraped(before, name, **labels) \
            == grew, name
    status = await (await client.get("/v1/guard/status", headers=op)).json()
    assert status["trips"] == [] and status["brake"]["engaged"] is False


async def test_a_repeat_of_a_known_edge_call_is_not_a_velocity_refusal(
        clean: asyncpg.Pool) -> None:
    store = CallbackStore(clean, owner="w", guard=Guard(clean, GuardSettings()))
    req = IntakeRequest("dup-1", "acme", E164("819033334444"), None, T0, T0, None)
    first = await store.intake(str(uuid.uuid4()), req, ACME)
    again = await store.intake(str(uuid.uuid4()), req, ACME)
    assert first == again and first[1]["status"] == "queued"


async def test_operator_api_is_off_without_a_token(clean: asyncpg.Pool,
                                                   aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(Guard(clean, GuardSettings())))
    resp = await client.get("/v1/guard/status", headers={"Authorization": "Bearer x"})
    assert resp.status == 403
    assert (await resp.json())["error"]["id"] == "operator-api-disabled"


async def test_operator_api_refuses_bad_input_with_4xx(clean: asyncpg.Pool,
                                                       aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(Guard(clean, SETTINGS)))
    status, body = await raw_get(client, "/v1/guard/status", b"Authorization: Bearer \xff")
    assert status == 401 and body["error"]["id"] == "auth-invalid"
    op = {"Authorization": f"Bearer {OPERATOR}"}
    for limit in ("\u00b2", "1" * 5000, "0", "1001"):
        resp = await client.get("/v1/guard/refusals", params={"limit": limit}, headers=op)
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "limit"
    for at in EDGE_TIMES:
        resp = await client.put("/v1/guard/lists/block/+819011112222", headers=op,
                                json={"by": "noc", "expires_at": at})
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "expires_at"
    resp = await client.post(PATH, data=DEEP_JSON, headers=signed(DEEP_JSON))
    assert resp.status == 400 and (await resp.json())["error"]["id"] == "invalid-json"
    resp = await client.get("/v1/guard/refusals?reason=G%00", headers=op)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "reason"
    resp = await client.post("/v1/guard/caps/reset", headers=op,
                             data=b'{"by": "no\\u0000c", "kind": "cps"}')
    assert resp.status == 400 and (await resp.json())["error"]["id"] == "invalid-json"


async def test_the_operator_api_takes_numbers_in_the_forms_the_cli_takes(
        clean: asyncpg.Pool, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(Guard(clean, SETTINGS)))
    op = {"Authorization": f"Bearer {OPERATOR}"}
    for form in ("09011113333", "819011113333", "+819011113333", "090-1111-3333"):
        resp = await client.put(f"/v1/guard/lists/block/{form}", headers=op, json={"by": "noc"})
        assert resp.status == 200 and (await resp.json())["number"] == "+819011113333"
        assert (await client.delete(f"/v1/guard/lists/block/{form}", headers=op)).status == 204
    resp = await client.put("/v1/guard/lists/block/0901", headers=op, json={"by": "noc"})
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "number"
