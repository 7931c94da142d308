"""The link layer end to end: outbox -> relay -> mutual TLS -> signature -> accept_once."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from shared import pki
from shared.config import LinkRoute
from shared.db import MigrationSet, create_pool, migrate_url
from shared.http import error_middleware
from shared.link import (
    VERIFIER_KEY,
    LinkClient,
    LinkUnavailable,
    accept_once,
    message_id,
    raw_body,
    signature_middleware,
)
from shared.outbox import Outbox, OutboxRelay
from shared.signing import Signer, SigningKey, Verifier, load_public_key

LINK = MigrationSet("link", Path(__file__).resolve().parents[2] / "shared" / "migrations")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [LINK])
    p = await create_pool(pg_url)
    await p.execute("CREATE TABLE received (message_id text PRIMARY KEY, n int)")
    yield p
    await p.close()


def receiver_app(pool: asyncpg.Pool, pki_dir: Path) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, signature_middleware], client_max_size=64 * 1024
    )
    app[VERIFIER_KEY] = Verifier({"edge-sign-1": load_public_key(pki_dir / "edge-sign-1.pub")})

    async def handle(request: web.Request) -> web.Response:
        payload = json.loads(raw_body(request))

        async def effect(conn: asyncpg.Connection) -> tuple[int, dict[str, Any]]:
            await conn.execute(
                "INSERT INTO received VALUES ($1, $2)", message_id(request), payload["n"]
            )
            return 202, {"accepted": payload["n"]}

        async with pool.acquire() as conn, conn.transaction():
            status, body = await accept_once(conn, message_id(request), "test", effect)
        return web.json_response(body, status=status)

    app.router.add_post("/v1/link/test", handle)
    return app


async def start_receiver(app: web.Application, pki_dir: Path, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = pki.server_context(pki_dir / "callback.pem", pki_dir / "callback.key", pki_dir / "ca.pem")
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    return runner


def client(pki_dir: Path, *urls: str) -> LinkClient:
    signer = Signer([SigningKey.load(pki_dir / "edge-sign-1.key")])
    ctx = pki.client_context(pki_dir / "ca.pem", pki_dir / "edge.pem", pki_dir / "edge.key")
    routes = [LinkRoute(f"r{i}", u) for i, u in enumerate(urls)]
    return LinkClient(routes, signer, ctx, connect_timeout_s=1.0)


async def test_relay_delivers_each_message_once_and_holds_until_released(
    pool: asyncpg.Pool, pg_url: str, pki_dir: Path
) -> None:
    port = free_port()
    runner = await start_receiver(receiver_app(pool, pki_dir), pki_dir, port)
    link = client(pki_dir, f"https://127.0.0.1:{port}")
    relay = OutboxRelay(pool, pg_url, link, owner="t1", sweep_s=0.5)
    task = asyncio.create_task(relay.run())
    try:
        async with pool.acquire() as conn, conn.transaction():
            for n in range(20):
                await Outbox.enqueue(conn, kind="test", path="/v1/link/test", payload={"n": n})
            held = await Outbox.enqueue(
                conn, kind="test", path="/v1/link/test", payload={"n": 99}, held=True
            )
        for _ in range(100):
            if await pool.fetchval("SELECT count(*) FROM received") == 20:
                break
            await asyncio.sleep(0.05)
        assert await pool.fetchval("SELECT count(*) FROM received") == 20
        assert await pool.fetchval("SELECT count(*) FROM received WHERE n = 99") == 0
        async with pool.acquire() as conn:
            assert await Outbox.release(conn, held)
        for _ in range(100):
            if await pool.fetchval("SELECT count(*) FROM received WHERE n = 99"):
                break
            await asyncio.sleep(0.05)
        assert await pool.fetchval("SELECT count(*) FROM received WHERE n = 99") == 1
        # the delivered marks ride on the relay's next claim, within SETTLE_WITHIN_S
        for _ in range(100):
            if not await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL"):
                break
            await asyncio.sleep(0.05)
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == 0
        stored = await pool.fetchval(
            "SELECT response_body FROM outbox WHERE message_id = $1::uuid", held
        )
        assert stored == {"accepted": 99}
    finally:
        task.cancel()
        await link.close()
        await runner.cleanup()


async def test_replay_returns_first_answer_and_has_no_effect(
    pool: asyncpg.Pool, pki_dir: Path
) -> None:
    port = free_port()
    runner = await start_receiver(receiver_app(pool, pki_dir), pki_dir, port)
    link = client(pki_dir, f"https://127.0.0.1:{port}")
    try:
        first = await link.post(
            "/v1/link/test", b'{"n": 500}', "11111111-1111-1111-1111-111111111111"
        )
        again = await link.post(
            "/v1/link/test", b'{"n": 500}', "11111111-1111-1111-1111-111111111111"
        )
        assert first.status == again.status == 202
        assert first.body == again.body == {"accepted": 500}
        assert await pool.fetchval("SELECT count(*) FROM received WHERE n = 500") == 1
    finally:
        await link.close()
        await runner.cleanup()


async def test_unsigned_or_tampered_requests_get_401_json(
    pool: asyncpg.Pool, pki_dir: Path
) -> None:
    port = free_port()
    runner = await start_receiver(receiver_app(pool, pki_dir), pki_dir, port)
    ctx = pki.client_context(pki_dir / "ca.pem", pki_dir / "edge.pem", pki_dir / "edge.key")
    signer = Signer([SigningKey.load(pki_dir / "edge-sign-1.key")])
    url = f"https://127.0.0.1:{port}/v1/link/test"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            async with session.post(url, data=b'{"n": 9001}') as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["id"] == "signature-missing"
            headers = signer.headers("POST", "/v1/link/test", b'{"n": 9001}')
            async with session.post(url, data=b'{"n": 9002}', headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["id"] == "signature-invalid"
        assert await pool.fetchval("SELECT count(*) FROM received WHERE n IN (9001, 9002)") == 0
    finally:
        await runner.cleanup()


async def test_client_without_certificate_is_refused_by_mutual_tls(
    pool: asyncpg.Pool, pki_dir: Path
) -> None:
    port = free_port()
    runner = await start_receiver(receiver_app(pool, pki_dir), pki_dir, port)
    no_cert = pki.client_context(pki_dir / "ca.pem")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=no_cert)) as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"https://127.0.0.1:{port}/v1/link/test", data=b"{}"):
                    pass
    finally:
        await runner.cleanup()


async def test_backup_route_takes_over_when_primary_is_down(
    pool: asyncpg.Pool, pki_dir: Path
) -> None:
    port, dead = free_port(), free_port()
    runner = await start_receiver(receiver_app(pool, pki_dir), pki_dir, port)
    link = client(pki_dir, f"https://127.0.0.1:{dead}", f"https://127.0.0.1:{port}")
    try:
        delivery = await link.post(
            "/v1/link/test", b'{"n": 700}', "22222222-2222-2222-2222-222222222222"
        )
        assert delivery.route == "r1"
        assert link.ordered_routes()[0].name == "r1"  # the dead primary is quarantined
    finally:
        await link.close()
        await runner.cleanup()
    only_dead = client(pki_dir, f"https://127.0.0.1:{dead}")
    try:
        with pytest.raises(LinkUnavailable):
            await only_dead.post("/v1/link/test", b"{}", "x")
    finally:
        await only_dead.close()
