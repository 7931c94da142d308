"""The callback site's HTTP API: aiohttp test client, real PostgreSQL, bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import callback_server
import shared
from callback_server.http import INTAKE_KEY, attach_store, create_http_app
from callback_server.store import CallbackStore
from callback_server.testing import merchant
from shared import logs
from shared.db import create_pool, migrate_url, package_migrations
from shared.link import encode_batch
from shared.signing import Signer, SigningKey, Verifier
from tests import prom
from tests.harness.json_log import json_log
from tests.integration.raw_http import DEEP_JSON, EDGE_TIMES, raw_get, raw_request

pytestmark = pytest.mark.integration

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
PEER_KEY = SigningKey.generate("edge-sign-1")
TOKEN = "acme-call-center-token"
MERCHANTS = [merchant("acme", api_token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest()),
             merchant("bento", "0120999888",
                      api_token_sha256=hashlib.sha256(b"bento").hexdigest())]
PATH = "/v1/link/callbacks"


def body(call_id: str = "edge-1", **changes: Any) -> bytes:
    data: dict[str, Any] = {
        "edge_call_id": call_id, "merchant_id": "acme", "caller": "+819012345678",
        "dialed": "+81120123456", "received_at": "2026-11-22T01:02:03.456Z",
        "hungup_at": "2026-11-22T01:02:06.001Z", "announce_mode": "early_media"}
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def signed(raw: bytes, message_id: str | None = None) -> dict[str, str]:
    headers = Signer([PEER_KEY]).headers("POST", PATH, raw,
                                         message_id=message_id or str(uuid.uuid4()))
    headers["content-type"] = "application/json"
    return headers


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("callback", callback_server.__file__)])
    p = await create_pool(pg_url)
    await CallbackStore(p, owner="setup").sync_merchants(MERCHANTS)
    yield p
    await p.close()


def make_app(store: CallbackStore | None) -> web.Application:
    app = create_http_app(merchants=MERCHANTS,
                          verifier=Verifier({PEER_KEY.key_id: PEER_KEY.public()}))
    if store is not None:
        attach_store(app, store)
    return app


@pytest.fixture
async def client(pool: asyncpg.Pool, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app(CallbackStore(pool, owner="http")))


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    data: dict[str, Any] = (await resp.json())["error"]
    return data


async def test_intake_is_idempotent_by_message_and_by_edge_call(
        client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    raw = body("edge-http-1")
    mid = str(uuid.uuid4())
    first = await client.post(PATH, data=raw, headers=signed(raw, mid))
    assert first.status == 202
    answer = await first.json()
    assert answer["status"] == "queued" and answer["callback_id"].startswith("cb-")
    again = await client.post(PATH, data=raw, headers=signed(raw, mid))
    assert again.status == 202 and await again.json() == answer
    other = await client.post(PATH, data=raw, headers=signed(raw))
    assert (await other.json())["callback_id"] == answer["callback_id"]
    assert await pool.fetchval("SELECT count(*) FROM callback_requests "
                               "WHERE edge_call_id = 'edge-http-1'") == 1


async def test_body_over_64_kib_is_413_json(client: TestClient[Any, Any]) -> None:
    raw = body("edge-big", dialed="x" * (70 * 1024))
    err = await error_of(await client.post(PATH, data=raw, headers=signed(raw)), 413)
    assert err["id"] == "body-too-large"


@pytest.mark.parametrize(("changes", "field"), [
    ({"caller": None}, "caller"), ({"caller": "09012345678"}, "caller"),
    ({"caller": 819012345678}, "caller"), ({"edge_call_id": ""}, "edge_call_id"),
    ({"received_at": "yesterday"}, "received_at"),
    ({"received_at": "2026-11-22T01:02:03"}, "received_at"),
    ({"announce_mode": "loud"}, "announce_mode"), ({"merchant_id": "ACME!"}, "merchant_id"),
    *[({name: at}, name) for name in ("received_at", "hungup_at") for at in EDGE_TIMES],
])
async def test_bad_field_is_400_naming_it(client: TestClient[Any, Any],
                                          changes: dict[str, Any], field: str) -> None:
    raw = body("edge-bad", **changes)
    err = await error_of(await client.post(PATH, data=raw, headers=signed(raw)), 400)
    assert err["id"] == "invalid-field" and err["field"] == field and field in err["message"]


async def test_bad_json_is_400(client: TestClient[Any, Any]) -> None:
    raw = b'{"edge_call_id": '
    err = await error_of(await client.post(PATH, data=raw, headers=signed(raw)), 400)
    assert err["id"] == "invalid-json"


async def test_json_nested_too_deep_is_400(client: TestClient[Any, Any]) -> None:
    resp = await client.post(PATH, data=DEEP_JSON, headers=signed(DEEP_JSON))
    assert (await error_of(resp, 400))["id"] == "invalid-json"


@pytest.mark.parametrize("dialed", [r"+8112\u0000", r"\ud800", r"\udfff1"])
async def test_text_no_database_column_takes_is_400(client: TestClient[Any, Any],
                                                    dialed: str) -> None:
    raw = body("edge-nul").replace(b'"+81120123456"', f'"{dialed}"'.encode())
    assert dialed.encode() in raw
    assert (await error_of(await client.post(PATH, data=raw, headers=signed(raw)),
                           400))["id"] == "invalid-json"
    err = await error_of(await client.get("/v1/callbacks/cb-%00",
                                          headers={"Authorization": f"Bearer {TOKEN}"}), 400)
    assert err["id"] == "invalid-field" and err["field"] == "callback_id"


@pytest.mark.parametrize(("header", "error_id"), [("webhook-id", "signature-missing"),
                                                 ("webhook-key-id", "signature-unknown-key")])
async def test_signature_headers_with_bytes_no_text_has_are_401(
        client: TestClient[Any, Any], header: str, error_id: str) -> None:
    raw = body("edge-raw-id")
    lines = b"\r\n".join(f"{k}: {v}".encode() for k, v in signed(raw).items() if k != header)
    status, err = await raw_request(client, "POST", PATH,
                                    lines + f"\r\n{header}: ".encode() + b"\xff", raw)
    assert status == 401 and err["error"]["id"] == error_id


async def test_unknown_merchant_is_422(client: TestClient[Any, Any]) -> None:
    raw = body("edge-unknown", merchant_id="nobody")
    err = await error_of(await client.post(PATH, data=raw, headers=signed(raw)), 422)
    assert err["id"] == "unknown-merchant" and err["field"] == "merchant_id"


async def test_unsigned_or_tampered_is_401_and_stores_nothing(
        client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    raw = body("edge-forged")
    err = await error_of(await client.post(PATH, data=raw), 401)
    assert err["id"].startswith("signature")
    headers = signed(raw)
    tampered = raw.replace(b"+819012345678", b"+819099999999")
    err = await error_of(await client.post(PATH, data=tampered, headers=headers), 401)
    assert err["id"].startswith("signature")
    assert await pool.fetchval("SELECT count(*) FROM callback_requests "
                               "WHERE edge_call_id = 'edge-forged'") == 0


async def test_database_down_is_503_so_the_edge_retries(aiohttp_client: ClientFactory) -> None:
    dead = await asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=0,
                                     max_size=1, timeout=2)
    try:
        client = await aiohttp_client(make_app(CallbackStore(dead, owner="http")))
        raw = body("edge-db-down")
        resp = await client.post(PATH, data=raw, headers=signed(raw))
        err = await error_of(resp, 503)
        assert err["id"] == "database-unavailable" and resp.headers["Retry-After"]
        health = await client.get("/healthz")
        assert health.status == 503 and (await health.json())["database"].startswith("unavail")
    finally:
        await dead.close()


async def test_not_yet_connected_is_503(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(None))
    raw = body("edge-early")
    err = await error_of(await client.post(PATH, data=raw, headers=signed(raw)), 503)
    assert err["id"] == "database-unavailable"


async def test_get_callback_for_its_merchant_only(client: TestClient[Any, Any]) -> None:
    raw = body("edge-get")
    answer = await (await client.post(PATH, data=raw, headers=signed(raw))).json()
    url = f"/v1/callbacks/{answer['callback_id']}"
    resp = await client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    data = await resp.json()
    assert data["status"] == "queued" and data["edge_call_id"] == "edge-get"
    assert data["legs"] == [] and data["caller"] == "+819012345678"
    assert (await error_of(await client.get(url), 401))["id"] == "auth-missing"
    status, err = await raw_get(client, url, b"Authorization: Bearer \xff")
    assert status == 401 and err["error"]["id"] == "auth-invalid"
    other = await client.get(url, headers={"Authorization": "Bearer bento"})
    assert (await error_of(other, 404))["id"] == "not-found"


async def test_healthz(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["database"] == "ok"


# --- POST /v1/link/callbacks/batch --------------------------------------------------------

BATCH_PATH = "/v1/link/callbacks/batch"


def batch(messages: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    raw = encode_batch(messages)
    headers = Signer([PEER_KEY]).headers("POST", BATCH_PATH, raw)
    headers["content-type"] = "application/json"
    return raw, headers


async def results_of(resp: Any) -> list[dict[str, Any]]:
    assert resp.status == 200, await resp.text()
    results: list[dict[str, Any]] = (await resp.json())["results"]
    return results


async def test_batch_answers_each_message_as_its_own_request_would(
        client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    stored_raw = body("edge-b-stored", caller="+819012340001")
    stored_mid = str(uuid.uuid4())
    first = await (await client.post(PATH, data=stored_raw,
                                     headers=signed(stored_raw, stored_mid))).json()
    messages = [
        (str(uuid.uuid4()), body("edge-b-1", caller="+819012340002")),
        (stored_mid, stored_raw),                                   # a repeat of a message id
        (str(uuid.uuid4()), body("edge-b-stored", caller="+819012340001")),  # same edge call
        (str(uuid.uuid4()), body("edge-b-bad", received_at="yesterday")),
        (str(uuid.uuid4()), body("edge-b-nobody", merchant_id="nobody")),
        (str(uuid.uuid4()), body("edge-b-2", merchant_id="bento", caller="+819012340003")),
    ]
    raw, headers = batch(messages)
    results = await results_of(await client.post(BATCH_PATH, data=raw, headers=headers))
    assert [r["message_id"] for r in results] == [mid for mid, _ in messages]
    statuses = [r["status"] for r in results]
    assert statuses == [202, 202, 202, 400, 422, 202]
    assert results[0]["body"]["status"] == "queued"
    assert results[1]["body"] == first and results[2]["body"]["callback_id"] == first["callback_id"]
    assert results[3]["body"]["error"]["field"] == "received_at"
    assert results[4]["body"]["error"]["id"] == "unknown-merchant"
    rows = await pool.fetch("SELECT edge_call_id, merchant_id, status FROM callback_requests "
                            "WHERE edge_call_id LIKE 'edge-b-%' ORDER BY edge_call_id")
    assert [tuple(r) for r in rows] == [("edge-b-1", "acme", "queued"),
                                        ("edge-b-2", "bento", "queued"),
                                        ("edge-b-stored", "acme", "queued")]
    # the same batch again (a relay retry, or a replay inside the window): the same answers
    again = await results_of(await client.post(BATCH_PATH, data=raw, headers=headers))
    assert [(r["status"], r["body"]) for r in again[:3]] == [
        (r["status"], r["body"]) for r in results[:3]]
    assert await pool.fetchval("SELECT count(*) FROM callback_requests "
                               "WHERE edge_call_id LIKE 'edge-b-%'") == 3
    # the messages are queued together, so they share the group commit
    assert client.app[INTAKE_KEY].batches < client.app[INTAKE_KEY].messages


@pytest.mark.parametrize(("envelope", "field"), [
    (b'{"messages": []}', "messages"),
    (b'{"message": [{"message_id": "m", "body": {}}]}', "messages"),
    (b'{"messages": [{"message_id": "", "body": {}}]}', "messages[0].message_id"),
    (b'{"messages": [{"message_id": "m", "body": "x"}]}', "messages[0].body"),
    (b'{"messages": [{"message_id": "m", "body": {}}, {"message_id": "m", "body": {}}]}',
     "messages[1].message_id"),
    (json.dumps({"messages": [{"message_id": f"m{i}", "body": {}} for i in range(101)]}
                ).encode(), "messages"),
])
async def test_bad_batch_is_400_naming_the_field_and_stores_nothing(
        client: TestClient[Any, Any], pool: asyncpg.Pool, envelope: bytes, field: str) -> None:
    headers = Signer([PEER_KEY]).headers("POST", BATCH_PATH, envelope)
    before = await pool.fetchval("SELECT count(*) FROM callback_requests")
    err = await error_of(await client.post(BATCH_PATH, data=envelope, headers=headers), 400)
    assert err["id"] == "invalid-field" and err["field"] == field
    assert await pool.fetchval("SELECT count(*) FROM callback_requests") == before


async def test_batch_nested_too_deep_is_400_and_a_time_out_of_range_is_its_message_400(
        client: TestClient[Any, Any]) -> None:
    raw, headers = batch([("m-deep", DEEP_JSON)])
    assert (await error_of(await client.post(BATCH_PATH, data=raw, headers=headers),
                           400))["id"] == "invalid-json"
    raw, headers = batch([("m-range", body("edge-range", received_at=EDGE_TIMES[0]))])
    [result] = await results_of(await client.post(BATCH_PATH, data=raw, headers=headers))
    assert result["status"] == 400 and result["body"]["error"]["field"] == "received_at"


async def test_batch_signed_for_another_path_or_tampered_is_401_and_stores_nothing(
        client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    messages = [(str(uuid.uuid4()), body("edge-b-forged", caller="+819012340009"))]
    raw, headers = batch(messages)
    single_headers = signed(raw)        # a signature for /v1/link/callbacks
    err = await error_of(await client.post(BATCH_PATH, data=raw, headers=single_headers), 401)
    assert err["id"] == "signature-invalid"
    tampered = raw.replace(b"+819012340009", b"+819012340008")
    err = await error_of(await client.post(BATCH_PATH, data=tampered, headers=headers), 401)
    assert err["id"] == "signature-invalid"
    assert (await error_of(await client.post(BATCH_PATH, data=raw), 401))["id"].startswith(
        "signature")
    assert await pool.fetchval("SELECT count(*) FROM callback_requests "
                               "WHERE edge_call_id = 'edge-b-forged'") == 0


async def test_batch_with_the_database_down_answers_each_message_503(
        aiohttp_client: ClientFactory) -> None:
    dead = await asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=0,
                                     max_size=1, timeout=2)
    try:
        client = await aiohttp_client(make_app(CallbackStore(dead, owner="http")))
        messages = [(str(uuid.uuid4()), body(f"edge-b-down-{i}")) for i in range(3)]
        raw, headers = batch(messages)
        results = await results_of(await client.post(BATCH_PATH, data=raw, headers=headers))
        assert [r["status"] for r in results] == [503] * 3
        assert {r["body"]["error"]["id"] for r in results} == {"database-unavailable"}
    finally:
        await dead.close()


async def test_the_intake_line_names_the_call_the_message_and_the_merchant(
        client: TestClient[Any, Any]) -> None:
    """The request's line names it; the group commit's line (its batcher was started by
    this first request, and serves every later one) names no request."""
    raw = body("edge-http-logs", merchant_id="bento", dialed="+81120999888")
    mid = str(uuid.uuid4())
    with json_log("callback") as logged:
        resp = await client.post(PATH, data=raw, headers=signed(raw, mid))
        assert resp.status == 202
    lines = {line["logger"]: line for line in logged()}
    line = lines["callback.http"]
    assert line["message"].startswith("call-back request for +819012345678 answered 202")
    assert (line["call_id"], line["request_id"], line["merchant"]) == \
        ("edge-http-logs", mid, "bento")
    commit = lines["callback.store"]
    assert commit["message"].startswith("stored 1 call-back request messages in one commit")
    assert not set(logs.FIELDS) & set(commit), commit


async def test_a_database_that_does_not_keep_up_sheds_new_requests_with_retry_after(
        pool: asyncpg.Pool, aiohttp_client: ClientFactory) -> None:
    """The intake's table is locked by another connection: the requests taken wait (and
    are stored once it is released); once one has waited over the shedding threshold, new
    requests (single or batch) are refused at once with 503 overloaded + Retry-After."""
    client = await aiohttp_client(make_app(CallbackStore(pool, owner="http")))
    intake = client.app[INTAKE_KEY]
    shed_before = prom.sample("cbgw_callback_intake_shed_total")
    locker = await pool.acquire()
    lock = locker.transaction()
    await lock.start()
    waiting: list[asyncio.Task[Any]] = []
    try:
        await locker.execute("LOCK TABLE inbound_messages IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        i = 0
        while not intake.overloaded():   # batches fill the intake's connections, then queue
            assert time.monotonic() - started < 30, "the intake never fell behind"
            raw = body(f"edge-slow-{i}", caller=f"+8190123{46000 + i}")
            waiting.append(asyncio.create_task(client.post(PATH, data=raw, headers=signed(raw))))
            i += 1
            await asyncio.sleep(0.3)
        raw = body("edge-shed", caller="+819012349999")
        refused = await client.post(PATH, data=raw, headers=signed(raw))
        assert (await error_of(refused, 503))["id"] == "overloaded"
        assert refused.headers["Retry-After"] == "2"
        envelope, headers = batch([(str(uuid.uuid4()), body("edge-shed-b1")),
                                   (str(uuid.uuid4()), body("edge-shed-b2"))])
        refused_batch = await client.post(BATCH_PATH, data=envelope, headers=headers)
        assert (await error_of(refused_batch, 503))["id"] == "overloaded"
        assert refused_batch.headers["Retry-After"] == "2"
        assert prom.sample("cbgw_callback_intake_shed_total") - shed_before == 3
    finally:
        await lock.rollback()
        await pool.release(locker)
    answers = [await resp.json() for resp in await asyncio.gather(*waiting)]
    assert [a["status"] for a in answers] == ["queued"] * len(waiting)
    assert await pool.fetchval("SELECT count(*) FROM callback_requests WHERE edge_call_id "
                               "LIKE 'edge-shed%'") == 0
