"""Key rotation end to end, and how long received message ids are kept.

Rotation: ``python -m shared.pki rotate`` adds ``edge-sign-2``; the sender
signs with both keys during the overlap; a receiver that trusts only the old
key and one that trusts only the new key both accept; once the old key is
removed from the trust list (revocation) a message signed only with it is
refused and has no effect.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared import pki
from shared.link import LinkRejected, purge_seen
from tests.faults.linklab import (
    REPO,
    free_port,
    link_client,
    prepare_pool,
    receiver_app,
    serve,
    verifier,
)


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await prepare_pool(pg_url)
    yield p
    await p.close()


async def _effects(pool: asyncpg.Pool, mid: str) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM effects WHERE message_id = $1", mid)
    return n


async def test_rotation_overlap_then_revocation(pool: asyncpg.Pool, tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    pki.init(pki_dir, ["edge", "callback"])
    rotate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.pki", "rotate", "--dir", str(pki_dir), "--site", "edge",
        cwd=REPO, stdout=asyncio.subprocess.PIPE)
    out, _ = await rotate.communicate()
    assert rotate.returncode == 0 and b"edge-sign-2.key" in out
    receivers = {}
    runners = []
    for name, trusted in {"old": ("edge-sign-1",), "new": ("edge-sign-2",),
                          "both": ("edge-sign-1", "edge-sign-2")}.items():
        port = free_port()
        runners.append(await serve(receiver_app(pool, verifier(pki_dir, *trusted)), pki_dir,
                                   port))
        receivers[name] = f"https://127.0.0.1:{port}"
    try:
        async def send(keys: tuple[str, ...], receiver: str) -> tuple[str, int | None]:
            client = link_client(pki_dir, [("r", receivers[receiver])], keys=keys)
            mid = str(uuid.uuid4())
            try:
                d = await client.post("/v1/link/test", b'{"n": 1}', mid, kind="test")
                return mid, d.status
            except LinkRejected as exc:
                assert exc.body["error"]["id"] == "signature-unknown-key", exc.body
                return mid, exc.status
            finally:
                await client.close()

        # overlap: dual-signed messages pass old-only, new-only and both verifiers
        for receiver in ("old", "new", "both"):
            mid, status = await send(("edge-sign-1", "edge-sign-2"), receiver)
            assert status == 202, receiver
            assert await _effects(pool, mid) == 1
        # before the overlap: old-signed passes old and both
        assert (await send(("edge-sign-1",), "both"))[1] == 202
        # after the overlap the sender signs only with the new key
        assert (await send(("edge-sign-2",), "new"))[1] == 202
        # revoked: the old key was removed from the trust list ("new" receiver)
        mid, status = await send(("edge-sign-1",), "new")
        assert status == 401
        assert await _effects(pool, mid) == 0
        assert await pool.fetchval(
            "SELECT count(*) FROM inbound_messages WHERE message_id = $1", mid) == 0
    finally:
        for runner in runners:
            await runner.cleanup()


ALL_IDS = "SELECT message_id FROM inbound_messages"


async def test_purge_seen_never_forgets_ids_younger_than_24_hours(pool: asyncpg.Pool) -> None:
    await pool.execute("DELETE FROM inbound_messages")
    ages = {"fresh": "1 minute", "almost": "23 hours 59 minutes", "day": "24 hours 1 minute",
            "week": "7 days 1 minute"}
    for name, age in ages.items():
        await pool.execute(
            "INSERT INTO inbound_messages (message_id, kind, received_at, response_status, "
            "response_body) VALUES ($1, 't', now() - $2::text::interval, 202, '{}')", name, age)
    async with pool.acquire() as conn:
        assert await purge_seen(conn) == 1  # default: keep 7 days
        left = {r["message_id"] for r in await conn.fetch(ALL_IDS)}
        assert left == {"fresh", "almost", "day"}
        assert await purge_seen(conn, keep_s=0) == 1  # asked for 0 s: still keeps 24 h
        assert await purge_seen(conn, keep_s=-5) == 0
        left = {r["message_id"] for r in await conn.fetch(ALL_IDS)}
        assert left == {"fresh", "almost"}


async def test_purge_seen_deletes_in_batches(pool: asyncpg.Pool) -> None:
    await pool.execute("DELETE FROM inbound_messages")
    await pool.execute(
        "INSERT INTO inbound_messages (message_id, kind, received_at, response_status, "
        "response_body) SELECT 'old-' || g, 't', now() - interval '30 days', 202, '{}' "
        "FROM generate_series(1, 2500) g")
    async with pool.acquire() as conn:
        assert await purge_seen(conn, batch=1000) == 2500
    assert await pool.fetchval("SELECT count(*) FROM inbound_messages") == 0
