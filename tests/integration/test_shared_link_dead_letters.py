"""Dead letters: a message the peer refuses for good is parked (status, error body, when),
alerted and counted, shown to the operator, and requeued by hand once the cause is fixed:
then it is delivered once. Real peer over mutual TLS, real PostgreSQL, real relay."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shared import pki
from shared.http import error_middleware
from shared.link import VERIFIER_KEY, message_id, raw_body, signature_middleware
from shared.link_policy import HealthSettings, LinkPolicy
from shared.outbox import (
    RETRYABLE_4XX,
    DeadLetter,
    Outbox,
    OutboxRelay,
)
from shared.outbox_operator import OPERATOR_KEY, OutboxOperator, add_routes
from shared.signing import Verifier, load_public_key
from tests import prom
from tests.conftest import REPO, drop_database, fresh_database
from tests.faults.linklab import free_port, link_client, prepare_pool, serve, verifier

pytestmark = pytest.mark.integration

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
NO_PROBES = LinkPolicy(health=HealthSettings(interval_s=0))
TOKEN = "operator-secret"
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATH = "/v1/link/answer"
#: the peer answers each message ``{"status": N}`` with N while ``app[REFUSING]["now"]``
REFUSING = web.AppKey("refusing", dict[str, bool])
SEEN = web.AppKey("seen", Counter)


def peer_app(verify: Verifier) -> web.Application:
    """A signed-link peer that answers ``{"status": N}`` with HTTP N and a JSON error body
    while ``app[REFUSING]["now"]``, and 202 once fixed; ``app[SEEN]`` counts verified requests."""
    app = web.Application(middlewares=[error_middleware, signature_middleware])
    app[VERIFIER_KEY] = verify
    app[REFUSING] = {"now": True}
    app[SEEN] = Counter()

    async def answer(request: web.Request) -> web.Response:
        mid = message_id(request)
        request.app[SEEN][mid] += 1
        status = int(json.loads(raw_body(request))["status"])
        if request.app[REFUSING]["now"]:
            return web.json_response({"error": {"id": f"refused-{status}",
                                                "message": "as asked"}}, status=status)
        return web.json_response({"accepted": mid}, status=202)

    app.router.add_post(PATH, answer)
    return app


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await prepare_pool(pg_url)
    await p.execute("TRUNCATE outbox, inbound_messages")
    yield p
    await p.close()


@pytest.fixture
async def peer(pki_dir: Path) -> AsyncIterator[tuple[web.Application, str]]:
    app, port = peer_app(verifier(pki_dir)), free_port()
    runner = await serve(app, pki_dir, port)
    yield app, f"https://127.0.0.1:{port}"
    await runner.cleanup()


async def _enqueue(pool: asyncpg.Pool, status: int) -> str:
    async with pool.acquire() as conn, conn.transaction():
        return await Outbox.enqueue(conn, kind="test", path=PATH, payload={"status": status})


def dead_count() -> float:
    return prom.sample("cbgw_link_deliveries_total", kind="test", route="none", result="dead")


RETRIED = sorted(RETRYABLE_4XX | {500, 503})
PARKED = [400, 404, 410, 413, 422]


@pytest.mark.parametrize("status", RETRIED + PARKED)
async def test_which_refusals_park_a_message_and_which_are_retried(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: tuple[web.Application, str],
        status: int, caplog: pytest.LogCaptureFixture) -> None:
    _, url = peer
    client = link_client(pki_dir, [("r", url)], policy=NO_PROBES)
    letters: list[DeadLetter] = []
    relay = OutboxRelay(pool, pg_url, client, owner="dead", sweep_s=0.2,
                        on_dead_letter=letters.append)
    before = dead_count()
    caplog.set_level(logging.WARNING, logger="shared.outbox")
    try:
        mid = await _enqueue(pool, status)
        assert await relay.pass_once() == 1
    finally:
        await client.close()
    row = await pool.fetchrow("SELECT * FROM outbox WHERE message_id = $1::uuid", mid)
    assert row is not None and row["delivered_at"] is None and row["attempts"] == 1
    if status in PARKED:
        assert row["dead_at"] is not None and row["response_status"] == status
        assert row["response_body"]["error"]["id"] == f"refused-{status}"
        assert [(d.message_id, d.status) for d in letters] == [(mid, status)]
        assert dead_count() == before + 1
        assert [r.levelno for r in caplog.records if "dead letter" in r.getMessage()] == [
            logging.ERROR]
        assert (await relay.stats()).dead == 1
    else:
        assert row["dead_at"] is None and f"HTTP {status}" in row["last_error"]
        assert letters == [] and dead_count() == before
        assert (await relay.stats()).pending == 1


async def test_a_signing_key_rotation_half_done_is_retried_not_dead(
        pool: asyncpg.Pool, pg_url: str, tmp_path: Path) -> None:
    """The sender already signs with its new key only; the peer does not trust it yet (401
    ``signature-*``). The message waits, and goes once the peer trusts the new key."""
    pki_dir = tmp_path / "pki"
    pki.init(pki_dir, ["edge", "callback"])
    pki.new_signing_key(pki_dir, "edge")
    trusted = {"edge-sign-1": load_public_key(pki_dir / "edge-sign-1.pub")}
    app, port = peer_app(Verifier(trusted)), free_port()
    app[REFUSING]["now"] = False
    runner = await serve(app, pki_dir, port)
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], keys=["edge-sign-2"],
                         policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="rotation", sweep_s=0.2)
    try:
        mid = await _enqueue(pool, 202)
        await relay.pass_once()
        row = await pool.fetchrow("SELECT dead_at, last_error FROM outbox")
        assert row is not None and row["dead_at"] is None and "HTTP 401" in row["last_error"]
        assert app[SEEN][mid] == 0  # refused before the handler
        trusted["edge-sign-2"] = load_public_key(pki_dir / "edge-sign-2.pub")  # rotation done
        await pool.execute("UPDATE outbox SET next_attempt_at = now()")
        await relay.pass_once()
    finally:
        await client.close()
        await runner.cleanup()
    assert app[SEEN][mid] == 1
    assert await pool.fetchval("SELECT delivered_at IS NOT NULL FROM outbox") is True


async def test_the_operator_sees_a_dead_letter_and_requeues_it_and_it_goes_once(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: tuple[web.Application, str],
        aiohttp_client: ClientFactory) -> None:
    peer_app_, url = peer
    # the sender site's operator API: unsigned (its bearer token) under the link's prefix
    site = web.Application(middlewares=[error_middleware, signature_middleware])
    site[VERIFIER_KEY] = verifier(pki_dir)
    add_routes(site)
    site[OPERATOR_KEY] = OutboxOperator(pool, TOKEN_SHA256)
    operator = await aiohttp_client(site)
    client = link_client(pki_dir, [("r", url)], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="requeue", sweep_s=0.2)
    try:
        mid = await _enqueue(pool, 422)
        await relay.pass_once()
        await relay.pass_once()  # nothing due: the dead letter is not retried
        assert peer_app_[SEEN][mid] == 1

        resp = await operator.get("/v1/link/outbox/dead")
        assert resp.status == 401 and (await resp.json())["error"]["id"] == "auth-missing"
        resp = await operator.get("/v1/link/outbox/dead",
                                  headers={"Authorization": "Bearer wrong"})
        assert resp.status == 401 and (await resp.json())["error"]["id"] == "auth-invalid"
        resp = await operator.get("/v1/link/outbox/dead", headers=AUTH)
        assert resp.status == 200
        [dead] = (await resp.json())["dead"]
        assert (dead["message_id"], dead["kind"], dead["status"]) == (mid, "test", 422)
        assert dead["response"]["error"]["id"] == "refused-422"
        assert dead["attempts"] == 1 and dead["requeues"] == 0
        assert dead["dead_at"].endswith("Z") and dead["body"] == {"status": 422}

        peer_app_[REFUSING]["now"] = False  # the cause is fixed
        resp = await operator.post(f"/v1/link/outbox/{mid}/requeue", headers=AUTH)
        assert resp.status == 200 and await resp.json() == {"message_id": mid,
                                                            "status": "requeued"}
        row = await pool.fetchrow("SELECT attempts, dead_at, requeues, requeued_at FROM outbox")
        assert row is not None and (row["attempts"], row["dead_at"], row["requeues"]) == (
            0, None, 1) and row["requeued_at"] is not None
        await relay.pass_once()
        await relay.pass_once()
        assert peer_app_[SEEN][mid] == 2  # refused once, then delivered once
        row = await pool.fetchrow("SELECT attempts, delivered_at, response_status FROM outbox")
        assert row is not None and row["delivered_at"] is not None
        assert (row["attempts"], row["response_status"]) == (1, 202)

        resp = await operator.post(f"/v1/link/outbox/{mid}/requeue", headers=AUTH)
        assert resp.status == 404 and (await resp.json())["error"]["id"] == "not-found"
        resp = await operator.post("/v1/link/outbox/not-an-id/requeue", headers=AUTH)
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "message_id"
        resp = await operator.get("/v1/link/outbox/dead", headers=AUTH)
        assert (await resp.json())["dead"] == []
    finally:
        await client.close()


async def test_without_an_operator_token_the_api_is_disabled(
        pool: asyncpg.Pool, aiohttp_client: ClientFactory) -> None:
    site = web.Application(middlewares=[error_middleware])
    add_routes(site)
    site[OPERATOR_KEY] = OutboxOperator(pool, None)
    operator = await aiohttp_client(site)
    resp = await operator.get("/v1/link/outbox/dead", headers=AUTH)
    assert resp.status == 403 and (await resp.json())["error"]["id"] == "operator-api-disabled"


def _site_config(site: str, pki_dir: Path, tmp_path: Path) -> Path:
    text = (REPO / f"deploy/{site}.example.toml").read_text().replace("../var/pki", str(pki_dir))
    path = tmp_path / f"{site}.toml"
    path.write_text(text)
    return path


def _site_env(site: str, db_url: str) -> dict[str, str]:
    prefix = site.upper()
    return {f"{prefix}__DATABASE__URL": db_url, f"{prefix}__ARI__URL": "http://127.0.0.1:9",
            f"{prefix}__RATES__ENABLED": "false",
            f"{prefix}__OPERATOR__API_TOKEN_SHA256": TOKEN_SHA256,
            f"{prefix}__PEER__ROUTES": '[{name = "internet", url = "https://127.0.0.1:9"}]'}


@pytest.mark.parametrize("site", ["edge", "callback"])
async def test_both_sites_serve_the_operator_api_and_the_command_line(
        site: str, pki_dir: Path, pg_server_url: str, tmp_path: Path) -> None:
    name = f"t{os.getpid()}_dead_letters_{site}"
    db_url = await fresh_database(pg_server_url, name)
    try:
        config, env = _site_config(site, pki_dir, tmp_path), _site_env(site, db_url)
        if site == "edge":
            from edge_server.app import create_app as create_edge
            from edge_server.config import EdgeSettings
            app = create_edge(EdgeSettings.load(config, environ=env), with_ari=False)
        else:
            from callback_server.app import create_app as create_callback
            from callback_server.config import CallbackSettings
            app = create_callback(CallbackSettings.load(config, environ=env), with_ari=False)
        async with TestClient(TestServer(app)) as client:
            pool = app[OPERATOR_KEY].pool
            async with pool.acquire() as conn, conn.transaction():
                mid = await Outbox.enqueue(conn, kind="test", path=PATH, payload={"n": 1})
            await pool.execute("UPDATE outbox SET dead_at = now(), response_status = 422, "
                               "response_body = '{\"error\": {\"id\": \"x\"}}'")
            resp = await client.get("/v1/link/outbox/dead", headers=AUTH)
            assert resp.status == 200, await resp.text()
            assert [d["message_id"] for d in (await resp.json())["dead"]] == [mid]
            def cli(*args: str) -> Awaitable[subprocess.CompletedProcess[str]]:
                return asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", f"{site}_server", "outbox", *args],
                    env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
                    cwd=REPO)

            shown = await cli("dead", "--config", str(config))
            assert shown.returncode == 0, shown.stderr
            assert [json.loads(line)["message_id"] for line in shown.stdout.splitlines()] \
                == [mid]
            done = await cli("requeue", "--config", str(config), mid)
            assert done.returncode == 0 and f"requeued {mid}" in done.stdout, done.stderr
            assert await pool.fetchval("SELECT dead_at IS NULL AND requeues = 1 FROM outbox")
            again = await cli("requeue", "--config", str(config), mid)
            assert again.returncode == 1 and "no dead message" in again.stdout
            resp = await client.post(f"/v1/link/outbox/{mid}/requeue", headers=AUTH)
            assert resp.status == 404
            if site == "callback":  # its relay raises a guard alert for each dead letter
                from callback_server.app import dead_letter_alert
                from callback_server.guard.http import GUARD_KEY
                guard = app[GUARD_KEY]
                await pool.execute("UPDATE outbox SET dead_at = now()")  # parked again
                async with pool.acquire() as conn:
                    [letter] = await Outbox.dead_letters(conn)
                sent = prom.sample("cbgw_guard_alerts_total", kind="link_dead_letter",
                                   sent="yes")
                dead_letter_alert(guard)(letter)
                await guard.alerter.drain()
                assert prom.sample("cbgw_guard_alerts_total", kind="link_dead_letter",
                                   sent="yes") == sent + 1
    finally:
        await drop_database(pg_server_url, name)
