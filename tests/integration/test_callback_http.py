"""The callback site's HTTP API: aiohttp test client, real PostgreSQL, bad input."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import callback_server
import shared
from callback_server.http import attach_store, create_http_app
from callback_server.store import CallbackStore
from callback_server.testing import merchant
from shared.db import create_pool, migrate_url, package_migrations
from shared.signing import Signer, SigningKey, Verifier

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
    other = await client.get(url, headers={"Authorization": "Bearer bento"})
    assert (await error_of(other, 404))["id"] == "not-found"


async def test_healthz(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["database"] == "ok"
