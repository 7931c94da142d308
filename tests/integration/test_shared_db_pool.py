"""The servers' database pool (``shared.db.create_pool``) against real PostgreSQL: a
connection goes back to the pool without a reset round trip (and, with nothing to roll
back, without a turn of the event loop), an open transaction is still rolled back on
release, each acquire's wait is reported, and the connections held are counted and timed
by who holds them."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import (
    HoldTimes,
    create_pool,
    holding,
    pool_hold_times,
    pool_holders,
    pool_waiting,
    serve_first,
)
from shared.metrics_http import count_pool_holds
from tests import prom

pytestmark = pytest.mark.integration


async def test_a_released_connection_sends_no_reset_query(pg_url: str) -> None:
    """The last statement the backend ran is the caller's, not asyncpg's default reset
    (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;``)."""
    for on_acquire in (None, lambda _s: None):        # both kinds of pool
        pool = await create_pool(pg_url, min_size=1, max_size=1, on_acquire=on_acquire)
        watcher = await asyncpg.connect(pg_url)
        try:
            async with pool.acquire() as conn:
                pid = await conn.fetchval("SELECT pg_backend_pid() AS released_here")
            async with pool.acquire() as conn:     # the one connection, back from the pool
                assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            last = await watcher.fetchval(
                "SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
            assert last == "SELECT pg_backend_pid()"
        finally:
            await watcher.close()
            await pool.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(pg_url: str) -> None:
    pool = await create_pool(pg_url, min_size=1, max_size=1)
    try:
        await pool.execute("CREATE TABLE IF NOT EXISTS pool_probe (n integer)")
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_probe") == 0
    finally:
        await pool.close()


async def test_each_acquire_reports_how_long_it_waited(pg_url: str) -> None:
    waits: list[float] = []
    pool = await create_pool(pg_url, min_size=1, max_size=1, on_acquire=waits.append)
    try:
        async with pool.acquire():
            second = asyncio.create_task(pool.fetchval("SELECT 1"))
            await asyncio.sleep(0.3)                 # the second waits for the one connection
        assert await second == 1
    finally:
        await pool.close()
    assert len(waits) == 2
    assert waits[0] < 0.3 <= waits[1]


async def test_the_connections_held_are_counted_by_who_holds_them(pg_url: str) -> None:
    """``holding(label)`` names who the current task's (and its children's) connections
    are for; released ones go back to 0, the pool's own ``fetch`` counts too."""
    pool = await create_pool(pg_url, min_size=1, max_size=3)
    release = asyncio.Event()

    async def hold() -> None:
        async with pool.acquire():
            await release.wait()

    try:
        with holding("relay"):
            relay = [asyncio.create_task(hold()) for _ in range(2)]
        link = asyncio.create_task(hold())
        await asyncio.sleep(0.3)
        assert pool_holders(pool) == {"relay": 2, "unlabelled": 1}
        release.set()
        await asyncio.gather(*relay, link)
        assert pool_holders(pool) == {"relay": 0, "unlabelled": 0}
        with holding("sweeper"):
            async with pool.acquire():
                assert pool_holders(pool)["sweeper"] == 1
            assert await pool.fetchval("SELECT 1") == 1
        assert pool_holders(pool) == {"relay": 0, "unlabelled": 0, "sweeper": 0}
    finally:
        await pool.close()


async def test_each_holders_connections_are_timed_from_acquire_until_back(pg_url: str) -> None:
    """Per ``holding`` label: the holds given back and their seconds, acquire until back in
    the pool (a connection held across a sleep counts the sleep); one held now is not
    counted yet."""
    pool = await create_pool(pg_url, min_size=1, max_size=2)
    try:
        with holding("ivr"):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                await asyncio.sleep(0.2)            # held across a wait that is not the DB's
            assert await pool.fetchval("SELECT 1") == 1
        async with pool.acquire():
            assert "unlabelled" not in pool_hold_times(pool)
        ivr, unlabelled = pool_hold_times(pool)["ivr"], pool_hold_times(pool)["unlabelled"]
        assert ivr.holds == 2 and 0.2 <= ivr.held_s < 2.0
        assert 0 <= ivr.releasing_s <= ivr.held_s
        assert unlabelled.holds == 1 and unlabelled.held_s < 0.2
    finally:
        await pool.close()



async def test_the_metrics_count_what_each_holder_gave_back_since_the_last_tick(
        pg_url: str) -> None:
    """``cbgw_db_pool_holds`` and ``cbgw_db_pool_held_seconds`` grow by what was given
    back between two of the sampler's ticks, and by nothing when nothing was."""
    pool = await create_pool(pg_url, min_size=1, max_size=1)
    holds, held = "cbgw_db_pool_holds_total", "cbgw_db_pool_held_seconds_total"
    before = prom.sample(holds, holder="probe"), prom.sample(held, holder="probe", part="all")
    seen: dict[str, HoldTimes] = {}
    try:
        with holding("probe"):
            for _ in range(3):
                async with pool.acquire():
                    await asyncio.sleep(0.05)
        count_pool_holds(pool, seen)
        count_pool_holds(pool, seen)        # nothing given back since: nothing counted again
    finally:
        await pool.close()
    assert prom.sample(holds, holder="probe") - before[0] == 3
    assert 0.15 <= prom.sample(held, holder="probe", part="all") - before[1] < 1.0
    assert prom.sample(held, holder="probe", part="releasing") \
        <= prom.sample(held, holder="probe", part="all")


async def test_a_connection_goes_back_without_a_turn_of_the_event_loop(pg_url: str) -> None:
    """With nothing to roll back, the release neither waits for the loop (asyncpg's own
    ``asyncio.shield`` task took three turns, holding the connection meanwhile) nor
    skips what asyncpg does; an expired connection still goes the long way, closed."""
    pool = await create_pool(pg_url, min_size=1, max_size=1)
    loop = asyncio.get_running_loop()
    try:
        conn = await pool.acquire()
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        turned: list[int] = []
        loop.call_soon(turned.append, 1)
        await pool.release(conn)
        assert turned == [] and pool.get_idle_size() == 1
        with pytest.raises(asyncpg.InterfaceError):     # the proxy is cut off, as asyncpg does
            await conn.fetchval("SELECT 1")
        async with pool.acquire() as again:
            assert await again.fetchval("SELECT pg_backend_pid()") == pid
            await pool.expire_connections()
        async with pool.acquire() as fresh:         # the expired one was closed, not kept
            assert await fresh.fetchval("SELECT pg_backend_pid()") != pid
    finally:
        await pool.close()


async def test_warm_runs_once_on_each_new_connection_before_it_is_handed_out(
        pg_url: str) -> None:
    """``warm`` runs after the connection's set-up (json decoded already), on the
    ``min_size`` connections as the pool opens and on one opened on demand before its
    first holder has it; an acquire of a connection already warmed does not run it."""
    warmed: list[tuple[int, object]] = []

    async def warm(conn: asyncpg.Connection) -> None:
        warmed.append((await conn.fetchval("SELECT pg_backend_pid()"),
                       await conn.fetchval("SELECT '{\"a\": 1}'::jsonb")))

    pool = await create_pool(pg_url, min_size=2, max_size=3, warm=warm)
    try:
        assert len(warmed) == 2 and all(value == {"a": 1} for _, value in warmed)
        async with pool.acquire() as one, pool.acquire() as two, pool.acquire() as three:
            pids = {await c.fetchval("SELECT pg_backend_pid()") for c in (one, two, three)}
        assert len(warmed) == 3 and {pid for pid, _ in warmed} == pids
        async with pool.acquire():
            pass
        assert len(warmed) == 3
    finally:
        await pool.close()


async def test_a_running_calls_write_gets_the_next_connection_before_the_dial(
        pg_url: str) -> None:
    """``serve_first``: with the pool's one connection held, a running call's write
    (``leg_result``) queued after two dials' acquires is served first; the dials then in
    their order; each acquire's reported wait includes its time in the queue."""
    waits: list[float] = []
    pool = await create_pool(pg_url, min_size=1, max_size=1, on_acquire=waits.append)
    serve_first(pool, frozenset({"leg_result"}))
    served: list[str] = []

    async def write(label: str, name: str) -> None:
        with holding(label):
            await pool.fetchval("SELECT 1")
        served.append(name)

    try:
        async with pool.acquire():
            tasks = []
            for label, name in (("persist", "dial 1"), ("claim", "dial 2"),
                                ("leg_result", "answered")):
                tasks.append(asyncio.create_task(write(label, name)))
                await asyncio.sleep(0.05)
            assert pool_waiting(pool) == (1, 2)      # the metrics' cbgw_db_pool_waiting
        await asyncio.gather(*tasks)
        assert pool_waiting(pool) == (0, 0)
    finally:
        await pool.close()
    assert served == ["answered", "dial 1", "dial 2"]
    assert len(waits) == 4 and min(waits[1:]) >= 0.05


async def test_an_acquire_that_times_out_in_the_queue_leaves_no_slot_behind(
        pg_url: str) -> None:
    pool = await create_pool(pg_url, min_size=1, max_size=1)
    serve_first(pool, frozenset({"leg_result"}))
    try:
        async with pool.acquire():
            with holding("leg_result"), pytest.raises(TimeoutError):
                await pool.acquire(timeout=0.1)
        assert await asyncio.wait_for(pool.fetchval("SELECT 1"), 2) == 1
        assert pool.gate.waiting() == (0, 0) and pool.gate.free == 1
    finally:
        await pool.close()
