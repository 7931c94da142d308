"""A test receiver and sender for the link, shared by the link tests, fault tests and bench.

The receiver is built only from the shared pieces the real servers use
(:func:`shared.http.error_middleware`, :func:`shared.link.signature_middleware`,
:func:`shared.link.accept_once`, :func:`shared.link.serve_options`), served
with mutual TLS from the test PKI. Its one effect is a row in ``effects``,
which has *no* unique constraint: a message applied twice shows up as two
rows, so "no duplicate effects" is checked by counting, not assumed.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from shared import pki
from shared.config import LinkRoute
from shared.db import MigrationSet, create_pool, migrate_url
from shared.http import error_middleware
from shared.link import (
    VERIFIER_KEY,
    LinkClient,
    accept_once,
    batch_answer,
    batch_path,
    message_id,
    parse_batch,
    raw_body,
    serve_options,
    signature_middleware,
)
from shared.link_policy import LinkPolicy
from shared.signing import Signer, SigningKey, Verifier, load_public_key

REPO = Path(__file__).resolve().parents[2]
LINK_MIGRATIONS = MigrationSet("link", REPO / "shared" / "migrations")
REQUESTS_KEY = web.AppKey("link_requests", Counter)
BATCHES_KEY = web.AppKey("link_batches", Counter)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def prepare_pool(pg_url: str, **pool_kw: Any) -> asyncpg.Pool:
    """Migrate the link tables and create the receiver's ``effects`` table."""
    await migrate_url(pg_url, [LINK_MIGRATIONS])
    pool = await create_pool(pg_url, **pool_kw)
    await pool.execute("CREATE TABLE IF NOT EXISTS effects (message_id text NOT NULL, "
                       "n int NOT NULL, at timestamptz NOT NULL DEFAULT now())")
    return pool


@asynccontextmanager
async def empty_link_pool(pg_url: str, **pool_kw: Any) -> AsyncIterator[asyncpg.Pool]:
    """:func:`prepare_pool` with the link's tables and ``effects`` emptied; closed after."""
    pool = await prepare_pool(pg_url, **pool_kw)
    try:
        await pool.execute("TRUNCATE outbox, inbound_messages, effects")
        yield pool
    finally:
        await pool.close()


def verifier(pki_dir: Path, *key_ids: str) -> Verifier:
    ids = key_ids or ("edge-sign-1",)
    return Verifier({k: load_public_key(pki_dir / f"{k}.pub") for k in ids})


def receiver_app(pool: asyncpg.Pool, verify: Verifier, *, max_body: int = 64 * 1024,
                 answer_delay_s: float = 0.0, batches: bool = True) -> web.Application:
    """``POST /v1/link/test`` and ``/v1/link/other`` (``{"n": int}``), ``GET /healthz``;
    with ``batches``, ``POST /v1/link/test/batch`` too (the batch envelope of
    :func:`shared.link.parse_batch`, each message applied as a single one would be).

    ``n < 0`` is refused with 422 (a message the peer finds invalid).
    ``answer_delay_s`` waits after the commit, before answering: a connection
    cut in that window loses the acknowledgement of an applied message.
    ``app[REQUESTS_KEY]`` counts verified POSTs per message id (each message of a batch).
    ``app[BATCHES_KEY]`` counts verified batch requests.
    """
    app = web.Application(middlewares=[error_middleware, signature_middleware],
                          client_max_size=max_body)
    app[VERIFIER_KEY] = verify
    requests: Counter[str] = Counter()
    app[REQUESTS_KEY] = requests
    app[BATCHES_KEY] = Counter()

    async def apply(mid: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        requests[mid] += 1
        n = int(payload["n"])

        async def effect(conn: asyncpg.Connection) -> tuple[int, dict[str, Any]]:
            if n < 0:
                return 422, {"error": {"id": "invalid-field", "message": "n must be >= 0"}}
            await conn.execute("INSERT INTO effects (message_id, n) VALUES ($1, $2)", mid, n)
            return 202, {"accepted": n}

        async with pool.acquire() as conn, conn.transaction():
            return await accept_once(conn, mid, "test", effect)

    async def handle(request: web.Request) -> web.Response:
        status, body = await apply(message_id(request), json.loads(raw_body(request)))
        if answer_delay_s:
            await asyncio.sleep(answer_delay_s)
        return web.json_response(body, status=status)

    async def handle_batch(request: web.Request) -> web.Response:
        items = parse_batch(json.loads(raw_body(request)))
        app[BATCHES_KEY][len(items)] += 1
        answers = await asyncio.gather(*(apply(i.message_id, i.body) for i in items))
        if answer_delay_s:
            await asyncio.sleep(answer_delay_s)
        return web.json_response(batch_answer(items, answers))

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_post("/v1/link/test", handle)
    app.router.add_post("/v1/link/other", handle)
    if batches:
        app.router.add_post(batch_path("/v1/link/test"), handle_batch)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, pki_dir: Path, port: int, *, host: str = "127.0.0.1",
                site: str = "callback", keepalive_timeout_s: float | None = None
                ) -> web.AppRunner:
    """Serve ``app`` with mutual TLS and :func:`shared.link.serve_options`."""
    opts = serve_options() if keepalive_timeout_s is None else serve_options(
        keepalive_timeout_s=keepalive_timeout_s)
    runner = web.AppRunner(app, access_log=None, **opts)
    await runner.setup()
    ctx = pki.server_context(pki_dir / f"{site}.pem", pki_dir / f"{site}.key",
                             pki_dir / "ca.pem")
    await web.TCPSite(runner, host, port, ssl_context=ctx, backlog=1024).start()
    return runner


def link_client(pki_dir: Path, routes: Sequence[tuple[str, str]], *,
                keys: Sequence[str] = ("edge-sign-1",), policy: LinkPolicy | None = None,
                **kw: Any) -> LinkClient:
    signer = Signer([SigningKey.load(pki_dir / f"{k}.key") for k in keys])
    ctx = pki.client_context(pki_dir / "ca.pem", pki_dir / "edge.pem", pki_dir / "edge.key")
    kw.setdefault("connect_timeout_s", 1.0)
    return LinkClient([LinkRoute(n, u) for n, u in routes], signer, ctx,
                      policy=policy or LinkPolicy(), **kw)


async def effect_counts(pool: asyncpg.Pool) -> tuple[int, int]:
    """(distinct messages applied, messages applied more than once)."""
    row = await pool.fetchrow(
        "SELECT count(*) AS distinct_ids, count(*) FILTER (WHERE c > 1) AS duplicated "
        "FROM (SELECT message_id, count(*) AS c FROM effects GROUP BY message_id) t")
    assert row is not None
    return int(row["distinct_ids"]), int(row["duplicated"])
