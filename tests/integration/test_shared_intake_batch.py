"""Group-committed intake (shared.intake_batch) against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared.db import MigrationSet, create_pool, migrate_url
from shared.intake_batch import IntakeBatcher, IntakeFailed
from shared.link import accept_once

pytestmark = pytest.mark.integration

LINK = MigrationSet("link", Path(__file__).resolve().parents[2] / "shared" / "migrations")
STORE = "INSERT INTO intake_rows (message_id, body) SELECT message_id, payload FROM fresh"
QUEUED = (202, {"status": "queued"})


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [LINK])
    p = await create_pool(pg_url, min_size=2, max_size=8)
    # A CHECK lets a test make one message of a batch fail on its own.
    await p.execute("CREATE TABLE intake_rows (message_id text PRIMARY KEY, body bytea NOT NULL"
                    " CHECK (body <> 'poison'))")
    yield p
    await p.close()


async def _batcher(pool: asyncpg.Pool, **kw: Any) -> IntakeBatcher:
    return IntakeBatcher(pool, "test", STORE, **kw)


async def _seen(pool: asyncpg.Pool, mid: str) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM inbound_messages WHERE message_id = $1",
                                 mid)
    return n


async def _stored(pool: asyncpg.Pool, prefix: str) -> dict[str, bytes]:
    rows = await pool.fetch("SELECT message_id, body FROM intake_rows WHERE message_id LIKE $1",
                            prefix + "%")
    return {r["message_id"]: bytes(r["body"]) for r in rows}


async def test_concurrent_messages_are_committed_in_few_batches(pool: asyncpg.Pool) -> None:
    batcher = await _batcher(pool, max_batch=64, max_in_flight=2)
    try:
        answers = await asyncio.gather(*(batcher.submit(f"a-{i}", b"x%d" % i, QUEUED)
                                         for i in range(300)))
    finally:
        await batcher.close()
    assert answers == [QUEUED] * 300
    stored = await _stored(pool, "a-")
    assert stored == {f"a-{i}": b"x%d" % i for i in range(300)}
    seen = await pool.fetchval("SELECT count(*) FROM inbound_messages WHERE message_id LIKE 'a-%'"
                               " AND kind = 'test' AND response_status = 202"
                               " AND response_body = '{\"status\": \"queued\"}'::jsonb")
    assert seen == 300
    assert batcher.messages == 300
    assert batcher.batches < 300 // 4  # they really were grouped


async def test_repeat_in_the_same_batch_gets_the_first_answer(pool: asyncpg.Pool) -> None:
    batcher = await _batcher(pool)
    try:
        first, second = await asyncio.gather(
            batcher.submit("b-1", b"first", QUEUED),
            batcher.submit("b-1", b"second", (202, {"status": "other"})))
    finally:
        await batcher.close()
    assert first == second == QUEUED
    assert await _stored(pool, "b-") == {"b-1": b"first"}


async def test_repeat_in_a_later_batch_gets_the_first_answer(pool: asyncpg.Pool) -> None:
    batcher = await _batcher(pool)
    try:
        assert await batcher.submit("c-1", b"first", QUEUED) == QUEUED
        again = await asyncio.gather(batcher.submit("c-1", b"again", (200, {"x": 1})),
                                     batcher.submit("c-2", b"new", QUEUED))
    finally:
        await batcher.close()
    assert again == [QUEUED, QUEUED]
    assert await _stored(pool, "c-") == {"c-1": b"first", "c-2": b"new"}


async def test_id_first_seen_by_accept_once_keeps_its_answer(pool: asyncpg.Pool) -> None:
    async def handler(conn: asyncpg.Connection) -> tuple[int, dict[str, Any]]:
        await conn.execute("INSERT INTO intake_rows VALUES ('d-1', 'single')")
        return 202, {"status": "queued", "path": "single"}

    async with pool.acquire() as conn, conn.transaction():
        await accept_once(conn, "d-1", "test", handler)
    batcher = await _batcher(pool)
    try:
        answer = await batcher.submit("d-1", b"batched", QUEUED)
    finally:
        await batcher.close()
    assert answer == (202, {"status": "queued", "path": "single"})
    assert await _stored(pool, "d-") == {"d-1": b"single"}


async def test_concurrent_repeats_from_two_processes_serialise(pool: asyncpg.Pool) -> None:
    """Two batchers (two server processes, or both links) get one id at once."""
    one, two = await _batcher(pool), await _batcher(pool)
    try:
        # Hold the payload table so both statements are in flight together.
        async with pool.acquire() as blocker, blocker.transaction():
            await blocker.execute("LOCK TABLE intake_rows IN EXCLUSIVE MODE")
            tasks = [asyncio.create_task(one.submit("e-1", b"one", (202, {"by": "one"}))),
                     asyncio.create_task(two.submit("e-1", b"two", (202, {"by": "two"})))]
            await asyncio.sleep(0.3)
            assert not any(t.done() for t in tasks)  # nothing answered before the commit
        answers = await asyncio.gather(*tasks)
    finally:
        await one.close()
        await two.close()
    assert answers[0] == answers[1]
    winner = answers[0][1]["by"]
    assert await _stored(pool, "e-") == {"e-1": winner.encode()}
    assert await _seen(pool, "e-1") == 1


async def test_no_answer_before_the_commit(pool: asyncpg.Pool) -> None:
    batcher = await _batcher(pool)
    try:
        async with pool.acquire() as blocker, blocker.transaction():
            await blocker.execute("LOCK TABLE intake_rows IN EXCLUSIVE MODE")
            task = asyncio.create_task(batcher.submit("f-1", b"x", QUEUED))
            await asyncio.sleep(0.3)
            assert not task.done()
            assert await _stored(pool, "f-") == {}
        assert await task == QUEUED
        assert await _stored(pool, "f-") == {"f-1": b"x"}
    finally:
        await batcher.close()


async def test_a_bad_message_fails_alone_and_is_not_recorded(pool: asyncpg.Pool) -> None:
    batcher = await _batcher(pool, max_in_flight=1)
    try:
        results = await asyncio.gather(
            *(batcher.submit(f"g-{i}", b"poison" if i == 3 else b"ok", QUEUED)
              for i in range(8)), return_exceptions=True)
    finally:
        await batcher.close()
    failed = [i for i, r in enumerate(results) if isinstance(r, IntakeFailed)]
    assert failed == [3]
    assert all(r == QUEUED for i, r in enumerate(results) if i != 3)
    assert set(await _stored(pool, "g-")) == {f"g-{i}" for i in range(8) if i != 3}
    # the refused message id is not remembered: the sender's retry is a first delivery
    assert await _seen(pool, "g-3") == 0
    assert batcher.fallbacks >= 1


class _Choosy(IntakeBatcher):
    """A writer with a bug that one message triggers (an exception, not an SQL error)."""

    async def write(self, conn: asyncpg.Connection, batch: Any) -> Any:
        if any(payload.payload == b"bug" for _, payload in batch):
            raise ValueError("cannot handle this one")
        return await super().write(conn, batch)


async def test_a_message_that_trips_a_bug_fails_alone(pool: asyncpg.Pool) -> None:
    batcher = _Choosy(pool, "test", STORE, max_in_flight=1)
    try:
        results = await asyncio.gather(
            *(batcher.submit(f"k-{i}", b"bug" if i == 5 else b"ok", QUEUED) for i in range(8)),
            return_exceptions=True)
        again = await asyncio.gather(batcher.submit("k-5", b"bug", QUEUED),
                                     batcher.submit("k-9", b"ok", QUEUED),
                                     return_exceptions=True)
    finally:
        await batcher.close()
    assert [i for i, r in enumerate(results) if isinstance(r, IntakeFailed)] == [5]
    assert isinstance(again[0], IntakeFailed) and again[1] == QUEUED  # it never blocks others
    assert set(await _stored(pool, "k-")) == {f"k-{i}" for i in (0, 1, 2, 3, 4, 6, 7, 9)}
    assert await _seen(pool, "k-5") == 0


class _DeadPool:
    def acquire(self) -> Any:
        raise ConnectionRefusedError("database is down")


async def test_unreachable_database_fails_every_waiting_message() -> None:
    batcher = IntakeBatcher(_DeadPool(), "test", STORE)  # type: ignore[arg-type]
    try:
        results = await asyncio.gather(*(batcher.submit(f"h-{i}", b"x", QUEUED)
                                         for i in range(5)), return_exceptions=True)
    finally:
        await batcher.close()
    assert all(isinstance(r, IntakeFailed) and r.status == 503 for r in results)


async def test_a_cancelled_caller_does_not_cancel_the_write(pool: asyncpg.Pool) -> None:
    batcher = await _batcher(pool)
    try:
        async with pool.acquire() as blocker, blocker.transaction():
            await blocker.execute("LOCK TABLE intake_rows IN EXCLUSIVE MODE")
            task = asyncio.create_task(batcher.submit("i-1", b"x", QUEUED))
            await asyncio.sleep(0.1)
            task.cancel()
        # the same id again waits for (and gets) the first delivery's answer
        assert await batcher.submit("i-1", b"y", (500, {})) == QUEUED
    finally:
        await batcher.close()
    assert await _stored(pool, "i-") == {"i-1": b"x"}


def test_store_sql_must_read_fresh() -> None:
    with pytest.raises(ValueError, match="fresh"):
        IntakeBatcher(None, "test", "INSERT INTO t SELECT 1")  # type: ignore[arg-type]


async def test_over_the_signed_link_end_to_end(pool: asyncpg.Pool, pki_dir: Path) -> None:
    """mTLS + signature_middleware + batcher: 202 after the commit, repeats get the first
    answer, a bad signature never reaches the database."""
    import socket

    from aiohttp import web

    from shared import pki
    from shared.config import LinkRoute
    from shared.http import error_middleware
    from shared.link import (
        VERIFIER_KEY,
        LinkClient,
        LinkRejected,
        message_id,
        raw_body,
        signature_middleware,
    )
    from shared.signing import Signer, SigningKey, Verifier, load_public_key

    batcher = await _batcher(pool)
    app = web.Application(middlewares=[error_middleware, signature_middleware])
    app[VERIFIER_KEY] = Verifier({"edge-sign-1": load_public_key(pki_dir / "edge-sign-1.pub")})

    async def handle(request: web.Request) -> web.Response:
        status, body = await batcher.submit(message_id(request), raw_body(request), QUEUED)
        return web.json_response(body, status=status)

    app.router.add_post("/v1/link/intake", handle)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = pki.server_context(pki_dir / "callback.pem", pki_dir / "callback.key",
                             pki_dir / "ca.pem")
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    url = f"https://127.0.0.1:{port}"
    client_ctx = pki.client_context(pki_dir / "ca.pem", pki_dir / "edge.pem",
                                    pki_dir / "edge.key")
    link = LinkClient([LinkRoute("r0", url)],
                      Signer([SigningKey.load(pki_dir / "edge-sign-1.key")]), client_ctx)
    stranger = LinkClient([LinkRoute("r0", url)],
                          Signer([SigningKey.generate("edge-sign-1")]), client_ctx)
    try:
        ids = [f"j-{i}" for i in range(40)]
        firsts = await asyncio.gather(*(link.post("/v1/link/intake", b'{"n": %d}' % i, mid)
                                        for i, mid in enumerate(ids)))
        assert {(d.status, str(d.body)) for d in firsts} == {(202, str(QUEUED[1]))}
        again = await asyncio.gather(*(link.post("/v1/link/intake", b'{"n": -1}', mid)
                                       for mid in ids[:5]))
        assert [(d.status, d.body) for d in again] == [QUEUED] * 5
        with pytest.raises(LinkRejected) as refused:
            await stranger.post("/v1/link/intake", b'{"n": 0}', "j-forged")
        assert refused.value.status == 401
    finally:
        await link.close()
        await stranger.close()
        await runner.cleanup()
        await batcher.close()
    stored = await _stored(pool, "j-")
    assert stored == {mid: b'{"n": %d}' % i for i, mid in enumerate(ids)}
    assert await _seen(pool, "j-forged") == 0
