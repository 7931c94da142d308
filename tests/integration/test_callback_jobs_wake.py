"""How the job worker learns of a queued job: in its own process without a NOTIFY (which
makes PostgreSQL commit the transactions that send one one after another: migration
1010), by NOTIFY from any session its process did not mark (an intake-only process, a
CLI), and by its sweep for what another full server queued.

Each worker here sleeps ``sweep_s`` = 30 s unless woken, so a dial within a few seconds
proves a wake-up, not a sweep."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import pytest

import callback_server
import shared
from callback_server.intake import CallbackIntake
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.worker import IN_PROCESS_SESSION, QUEUED_NOTICE
from shared.db import create_pool, listening, migrate_url, package_migrations, watching
from shared.outbox import IN_PROCESS_SESSION as OUTBOX_SESSION
from shared.outbox import SENDABLE_NOTICE
from shared.phone import E164
from tests.integration.test_callback_worker import ACME, SLOW, make_worker

pytestmark = pytest.mark.integration

ASLEEP_S = 30.0
#: a wake-up, not a sweep: far under ASLEEP_S, and generous on a crowded machine
PROMPT_S = 5.0
JOBS = "callback_jobs"


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("callback", callback_server.__file__)])
    p = await create_pool(pg_url, max_size=6)
    await CallbackStore(p, owner="setup").sync_merchants([ACME, SLOW])
    yield p
    await p.close()


@pytest.fixture
async def clean(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute("TRUNCATE cdrs, request_info, callback_attempts, click_to_call_requests,"
                       " click_web_calls, callback_requests, outbox, inbound_messages")
    return pool


async def _store(pool: asyncpg.Pool, m: object = ACME) -> str:
    now = datetime.now(UTC)
    req = IntakeRequest(f"edge-{uuid.uuid4().hex[:12]}", m.id,  # type: ignore[attr-defined]
                        E164("819012345678"), None, now, now, "early_media")
    _, body = await CallbackStore(pool, owner="edge").intake(str(uuid.uuid4()), req, m)  # type: ignore[arg-type]
    return str(body["callback_id"])


async def _within(predicate: Callable[[], object], limit_s: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"not within {limit_s} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def _heard(notes: asyncio.Queue[str], wait_s: float) -> list[str]:
    await asyncio.sleep(wait_s)
    out = []
    while not notes.empty():
        out.append(notes.get_nowait())
    return out


@pytest.fixture
async def worker_running(clean: asyncpg.Pool, pg_url: str
                         ) -> AsyncIterator[Callable[[], list[object]]]:
    worker, fake = make_worker(clean, pg_url, "w1", sweep_s=ASLEEP_S)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)                    # LISTEN is up, the pool watched
    try:
        yield lambda: fake.named("originate")
    finally:
        await worker.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_request_stored_in_the_workers_process_wakes_it_without_a_notify(
        clean: asyncpg.Pool, pg_url: str, worker_running: Callable[[], list[object]]) -> None:
    async with listening(pg_url, JOBS) as notes:
        for n in range(1, 7):              # every connection of the pool, in turn
            callback_id = await _store(clean)
            took = await _within(lambda n=n: len(worker_running()) >= n, PROMPT_S)  # type: ignore[misc]
            assert took < PROMPT_S
            assert worker_running()[-1][1] == f"{callback_id}-01"  # type: ignore[index]
        assert await _heard(notes, 0.3) == []


async def test_a_request_stored_by_the_batcher_wakes_the_worker_though_it_keeps_its_connection(
        clean: asyncpg.Pool, pg_url: str, worker_running: Callable[[], list[object]]) -> None:
    """The site's intake (:class:`CallbackIntake`) keeps its connections between batches:
    the worker is told at each batch's commit, not when the connection goes back to the
    pool (never, while the batcher runs): found by the sweep at 50/s, where call-backs
    waited for the worker's 5 s sweep."""
    batcher = CallbackIntake(CallbackStore(clean, owner="edge"))
    try:
        async with listening(pg_url, JOBS) as notes:
            for n in range(1, 4):
                now = datetime.now(UTC)
                req = IntakeRequest(f"edge-b{n}", "acme", E164("819012345678"), None, now, now,
                                    "early_media")
                _, body = await batcher.submit(f"m-b{n}", req, ACME)
                await _within(lambda n=n: len(worker_running()) >= n, PROMPT_S)  # type: ignore[misc]
                assert worker_running()[-1][1] == f"{body['callback_id']}-01"  # type: ignore[index]
            assert await _heard(notes, 0.3) == []
        assert batcher._idle, "the batcher kept its connection"
    finally:
        await batcher.close()


async def test_a_session_not_marked_still_notifies_and_wakes_the_worker(
        clean: asyncpg.Pool, pg_url: str, worker_running: Callable[[], list[object]]) -> None:
    """An intake-only process (or a CLI) runs no worker and does not mark its sessions:
    its requests NOTIFY, and the worker's LISTEN wakes it."""
    other = await create_pool(pg_url, max_size=2)     # another process's pool, unwatched
    try:
        async with listening(pg_url, JOBS) as notes:
            callback_id = await _store(other)
            payload = await asyncio.wait_for(notes.get(), PROMPT_S)
            assert payload.split()[0] == callback_id
            await _within(lambda: len(worker_running()) == 1, PROMPT_S)
    finally:
        await other.close()


async def test_the_trigger_tells_a_marked_session_by_notice_an_unmarked_one_by_notify(
        clean: asyncpg.Pool, pg_url: str) -> None:
    """Both triggers (a stored batch's, a round queued again), on one plain connection."""
    conn = await asyncpg.connect(pg_url)
    notices: list[str] = []
    conn.add_log_listener(lambda _c, m: notices.append(m.message))
    try:
        async with listening(pg_url, JOBS) as notes:
            callback_id = await _store(clean)
            assert [p.split()[0] for p in await _heard(notes, 0.3)] == [callback_id]
            for name, value in IN_PROCESS_SESSION.items():
                await conn.execute("SELECT set_config($1, $2, false)", name, value)
            await conn.execute("UPDATE callback_requests SET next_attempt_at = now()")
            await conn.execute(
                "INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller,"
                " received_at, message_id, max_attempts, next_attempt_at)"
                " VALUES ('cb-x', 'e-x', 'acme', '+819012345678', now(), 'm-x', 1, now())")
            await asyncio.sleep(0.1)
            assert notices == [QUEUED_NOTICE, QUEUED_NOTICE]
            assert await _heard(notes, 0.3) == []
            await conn.execute("RESET ALL")
            await conn.execute("UPDATE callback_requests SET next_attempt_at = now()"
                               " WHERE callback_id = 'cb-x'")
            assert [p.split()[0] for p in await _heard(notes, 0.3)] == ["cb-x"]
            assert notices == [QUEUED_NOTICE, QUEUED_NOTICE]
    finally:
        await conn.close()


async def test_the_workers_watch_beside_the_relays_marks_connections_set_up_before_it(
        clean: asyncpg.Pool, pg_url: str) -> None:
    """The relay watches the pool first (its connections set up with its setting only);
    the worker's watch, started later, still marks every connection; when the worker
    stops and the relay runs on, the jobs NOTIFY again."""
    relay_told: list[int] = []
    async with watching(clean, SENDABLE_NOTICE, lambda: relay_told.append(1),
                        session=OUTBOX_SESSION):
        held = [await clean.acquire() for _ in range(6)]   # every connection set up
        for conn in held:
            await clean.release(conn)
        woken = asyncio.Event()
        async with listening(pg_url, JOBS) as notes:
            async with watching(clean, QUEUED_NOTICE, woken.set, session=IN_PROCESS_SESSION):
                for _ in range(6):
                    woken.clear()
                    await _store(clean)
                    await asyncio.wait_for(woken.wait(), PROMPT_S)
                assert await _heard(notes, 0.3) == []
            callback_id = await _store(clean)
            assert [p.split()[0] for p in await _heard(notes, 0.5)] == [callback_id]
        assert await clean.fetchval("SELECT current_setting('cbgw.outbox_wake', true)") \
            == "in-process"
