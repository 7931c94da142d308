"""Advisors' SIP endpoints at the edge: the store and the call center's API, against a
real PostgreSQL (the push to Asterisk is proven end to end in
``tests/e2e/test_sip_advisors.py``)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from advisors.edge_phones import KIND, PATH, EndpointState
from edge_server.http import POOL_KEY, create_http_app
from edge_server.sip_cli import main as sip_cli
from edge_server.sip_endpoints import CHANNEL, SipEndpoints
from edge_server.sip_http import SIP_ENDPOINTS_KEY
from edge_server.sip_push import SipEndpointSettings
from shared.db import listening
from shared.outbox import fact_message_id
from shared.signing import Verifier
from tests.integration.test_edge_http import (  # noqa: F401 (the pool fixture)
    ACME_TOKEN,
    BENTO_TOKEN,
    MERCHANTS,
    pool,
)

pytestmark = pytest.mark.integration

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ACME, BENTO = ACME_TOKEN, BENTO_TOKEN
PASSWORD = "hoshino-pass-2026"
REALM = "edge.example.jp"


@pytest.fixture
async def db(pool: asyncpg.Pool) -> asyncpg.Pool:  # noqa: F811 (test_edge_http's)
    await pool.execute("DELETE FROM sip_endpoints")
    await pool.execute("DELETE FROM outbox WHERE kind = $1", KIND)
    return pool


@pytest.fixture
async def client(db: asyncpg.Pool, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    app = create_http_app(merchants=MERCHANTS, verifier=Verifier({}),
                          sip=SipEndpointSettings(realm=REALM))
    app[POOL_KEY] = db
    app[SIP_ENDPOINTS_KEY] = SipEndpoints(db)
    return await aiohttp_client(app)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def put(client: TestClient[Any, Any], user: str, body: Any, token: str = ACME
              ) -> tuple[int, str]:
    resp = await client.put(f"/v1/sip-endpoints/{user}", json=body, headers=auth(token))
    return resp.status, await resp.text()


async def test_put_creates_the_endpoint_storing_only_the_digest_hash(
        client: TestClient[Any, Any], db: asyncpg.Pool,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status, text = await put(client, "hoshino", {"password": PASSWORD})
    assert status == 201, text
    row = await db.fetchrow("SELECT * FROM sip_endpoints")
    assert row is not None
    ha1 = hashlib.md5(f"acme.hoshino:{REALM}:{PASSWORD}".encode()).hexdigest()
    assert (row["endpoint_id"], row["merchant_id"], row["sip_user"], row["realm"],
            row["ha1"]) == ("acme.hoshino", "acme", "hoshino", REALM, ha1)
    assert PASSWORD not in str(dict(row).values())
    shown = await (await client.get("/v1/sip-endpoints", headers=auth(ACME))).json()
    assert [(e["user"], e["endpoint"], e["realm"]) for e in shown["items"]] == [
        ("hoshino", "acme.hoshino", REALM)]
    for where in (text, str(shown), caplog.text):
        assert PASSWORD not in where and ha1 not in where


async def test_a_second_put_sets_a_new_password(client: TestClient[Any, Any],
                                                db: asyncpg.Pool) -> None:
    assert (await put(client, "hoshino", {"password": PASSWORD}))[0] == 201
    before = await db.fetchval("SELECT ha1 FROM sip_endpoints")
    status, text = await put(client, "hoshino", {"password": PASSWORD + "-new"})
    assert status == 200, text
    assert await db.fetchval("SELECT ha1 FROM sip_endpoints") != before
    assert await db.fetchval("SELECT count(*) FROM sip_endpoints") == 1


async def test_merchants_have_their_own_endpoints(client: TestClient[Any, Any]) -> None:
    assert (await put(client, "hoshino", {"password": PASSWORD}))[0] == 201
    assert (await put(client, "hoshino", {"password": PASSWORD}, BENTO))[0] == 201
    for token, name in ((ACME, "acme.hoshino"), (BENTO, "bento.hoshino")):
        shown = await (await client.get("/v1/sip-endpoints", headers=auth(token))).json()
        assert [e["endpoint"] for e in shown["items"]] == [name]
    gone = await client.delete("/v1/sip-endpoints/hoshino", headers=auth(BENTO))
    assert gone.status == 200 and await gone.json() == {"user": "hoshino",
                                                        "status": "deleted"}
    again = await client.delete("/v1/sip-endpoints/hoshino", headers=auth(BENTO))
    assert again.status == 404 and (await again.json())["error"]["id"] == "not-found"
    shown = await (await client.get("/v1/sip-endpoints", headers=auth(ACME))).json()
    assert [e["endpoint"] for e in shown["items"]] == ["acme.hoshino"]


@pytest.mark.parametrize(("user", "body", "field"), [
    ("hoshino", {"password": "short"}, "password"),
    ("hoshino", {"password": "x" * 129}, "password"),
    ("hoshino", {"password": "line\nbreak-passwd"}, "password"),
    ("hoshino", {}, "password"),
    ("hoshino", {"password": PASSWORD, "realm": "other"}, "realm"),
    ("hos%2Fhino", {"password": PASSWORD}, "user"),
    ("a" * 65, {"password": PASSWORD}, "user"),
    ("hoshino+1", {"password": PASSWORD}, "user"),
])
async def test_bad_input_is_400_naming_the_field_never_the_password(
        client: TestClient[Any, Any], db: asyncpg.Pool, user: str, body: Any,
        field: str) -> None:
    status, text = await put(client, user, body)
    assert status == 400, text
    assert f'"field": "{field}"' in text or f'"field":"{field}"' in text, text
    assert "short" not in text and "break" not in text and PASSWORD not in text
    assert await db.fetchval("SELECT count(*) FROM sip_endpoints") == 0


async def test_without_a_token_nothing_is_read_or_changed(
        client: TestClient[Any, Any]) -> None:
    assert (await client.get("/v1/sip-endpoints")).status == 401
    status, _ = await put(client, "hoshino", {"password": PASSWORD}, "wrong-token")
    assert status == 401


async def test_every_change_is_notified_for_the_edge_servers_to_push(
        client: TestClient[Any, Any], pg_url: str) -> None:
    async with listening(pg_url, CHANNEL) as changes:
        assert (await put(client, "hoshino", {"password": PASSWORD}))[0] == 201
        assert await asyncio.wait_for(changes.get(), 5) == "acme.hoshino"
        await client.delete("/v1/sip-endpoints/hoshino", headers=auth(ACME))
        assert await asyncio.wait_for(changes.get(), 5) == "acme.hoshino"
        # a refused request changes nothing, so it notifies nothing
        assert (await client.delete("/v1/sip-endpoints/hoshino",
                                    headers=auth(ACME))).status == 404
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(changes.get(), 0.5)


async def test_fingerprint_moves_with_every_change(db: asyncpg.Pool) -> None:
    await db.execute("DELETE FROM sip_endpoints")
    store = SipEndpoints(db)
    empty = await store.fingerprint()
    await store.put("acme", "ren", PASSWORD, REALM)
    made = await store.fingerprint()
    await store.put("acme", "ren", PASSWORD + "2", REALM)
    changed = await store.fingerprint()
    await store.delete("acme", "ren")
    assert len({empty, made, changed}) == 3
    assert (await store.fingerprint())[0] == 0


EXAMPLE = Path(__file__).resolve().parents[2] / "deploy/edge.example.toml"


async def test_the_cli_sets_lists_and_deletes_reading_the_password_from_stdin(
        db: asyncpg.Pool, pg_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGE__DATABASE__URL", pg_url)

    async def cli(*args: str, stdin: str = "", status: int = 0) -> Any:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = await asyncio.to_thread(sip_cli, ["--config", str(EXAMPLE), "--merchant",
                                                 "acme", *args])
        out = capsys.readouterr()
        assert code == status, out
        assert PASSWORD not in out.out + out.err
        return json.loads(out.out) if status == 0 else out.err

    made = await cli("set", "ren", stdin=PASSWORD + "\n")
    assert (made["endpoint"], made["created"], made["realm"]) == ("acme.ren", True, "cbgw")
    assert await db.fetchval("SELECT ha1 FROM sip_endpoints") == hashlib.md5(
        f"acme.ren:cbgw:{PASSWORD}".encode()).hexdigest()
    assert (await cli("set", "ren", stdin=PASSWORD + "2\n"))["created"] is False
    assert [e["endpoint"] for e in (await cli("list"))["items"]] == ["acme.ren"]
    assert await cli("delete", "ren") == {"user": "ren", "status": "deleted"}
    assert "no SIP endpoint ren" in await cli("delete", "ren", status=2)
    assert "password: expected 12..128" in await cli("set", "ren", stdin="short\n", status=2)
    assert "user: expected" in await cli("set", "ren/x", stdin=PASSWORD, status=2)
    assert await db.fetchval("SELECT count(*) FROM sip_endpoints") == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code = await asyncio.to_thread(sip_cli, ["--config", str(EXAMPLE), "--merchant",
                                             "nobody", "list"])
    assert code == 2 and "--merchant: no merchant 'nobody'" in capsys.readouterr().err


async def told(db: asyncpg.Pool) -> list[EndpointState]:
    """The states the outbox holds for the callback site, oldest first (each message's
    id is its fact's: endpoint and version)."""
    rows = await db.fetch("SELECT message_id, path, body FROM outbox WHERE kind = $1 "
                          "ORDER BY created_at, message_id", KIND)
    states = []
    for row in rows:
        assert row["path"] == PATH
        body = json.loads(bytes(row["body"]))
        states.append(EndpointState(body["merchant_id"], body["user"], body["exists"],
                                    body["registered"], body["version"]))
        assert str(row["message_id"]) == fact_message_id(
            KIND, f"{body['merchant_id']}.{body['user']}:{body['version']}")
    return sorted(states, key=lambda s: s.version)


async def test_the_callback_site_is_told_each_change_of_an_endpoint_s_state_once(
        db: asyncpg.Pool) -> None:
    """Created, registered at one edge Asterisk, at the other too (no change), left the
    first (still registered), left the second, deleted: four messages, each with a later
    version; a new password, an endpoint the table does not hold and a round with
    nothing new tell nothing."""
    store = SipEndpoints(db)
    await store.put("acme", "hoshino", PASSWORD, REALM)
    await store.put("acme", "hoshino", PASSWORD + "2", REALM)          # a new password
    assert await store.registrations("cbgw-edge", {"acme.hoshino", "acme.ghost"}) \
        == ["acme.hoshino"]
    assert await store.registrations("cbgw-edge", {"acme.hoshino"}) == []
    assert await store.registrations("cbgw-edge2", {"acme.hoshino"}) == []
    assert await store.registrations("cbgw-edge", set()) == []          # still at edge2
    assert await store.registrations("cbgw-edge2", set()) == ["acme.hoshino"]
    await store.delete("acme", "hoshino")
    states = await told(db)
    assert [(s.merchant_id, s.user, s.exists, s.registered) for s in states] == [
        ("acme", "hoshino", True, False), ("acme", "hoshino", True, True),
        ("acme", "hoshino", True, False), ("acme", "hoshino", False, False)]
    assert len({s.version for s in states}) == 4


async def test_a_deleted_endpoint_s_registrations_go_with_it(db: asyncpg.Pool) -> None:
    store = SipEndpoints(db)
    await store.put("acme", "ren", PASSWORD, REALM)
    await store.registrations("cbgw-edge", {"acme.ren"})
    await store.delete("acme", "ren")
    assert await db.fetchval("SELECT count(*) FROM sip_registrations") == 0
    await store.put("acme", "ren", PASSWORD, REALM)      # made again: not registered
    assert (await told(db))[-1] == EndpointState("acme", "ren", True, False,
                                                 (await told(db))[-1].version)
    assert await store.registrations("cbgw-edge", {"acme.ren"}) == ["acme.ren"]
