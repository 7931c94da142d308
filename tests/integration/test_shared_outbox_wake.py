"""How a relay learns of a sendable message: in its own process without a NOTIFY (which
makes PostgreSQL commit the transactions that send one one after another), by NOTIFY
from anywhere else, and by its sweep when the process that wrote it does not deliver it.

Each relay here sleeps ``sweep_s`` = 30 s unless woken, so a delivery within a few
seconds proves a wake-up, not a sweep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from shared.db import listening, watching
from shared.link_policy import HealthSettings, LinkPolicy
from shared.outbox import (
    IN_PROCESS_SESSION,
    MAX_LINGER_S,
    NOTIFY_CHANNEL,
    SENDABLE_NOTICE,
    Outbox,
    OutboxRelay,
)
from tests.faults.linklab import (
    empty_link_pool,
    free_port,
    link_client,
    prepare_pool,
    receiver_app,
    serve,
    verifier,
)

NO_PROBES = LinkPolicy(health=HealthSettings(interval_s=0))
ASLEEP_S = 30.0
#: a wake-up, not a sweep: far under ASLEEP_S, and generous on a crowded machine
PROMPT_S = 5.0
#: a relay's linger in these tests: long beside a claim, short beside ASLEEP_S
LINGER_S = 1.0
#: the gathering window in these tests: the longest, long beside a delivery on a crowded
#: machine
GATHER_S = MAX_LINGER_S


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with empty_link_pool(pg_url, max_size=10) as p:
        yield p


@pytest.fixture
async def peer(pool: asyncpg.Pool, pki_dir: Path) -> AsyncIterator[str]:
    port = free_port()
    runner: web.AppRunner = await serve(receiver_app(pool, verifier(pki_dir)), pki_dir, port)
    yield f"https://127.0.0.1:{port}"
    await runner.cleanup()


async def _write(conn: asyncpg.Connection, n: int) -> str:
    async with conn.transaction():
        return await Outbox.enqueue(conn, kind="test", path="/v1/link/test", payload={"n": n})


async def _delivered(pool: asyncpg.Pool, mid: str) -> float:
    """Seconds until ``mid`` is delivered (at most ASLEEP_S + 5)."""
    started = time.monotonic()
    while not await pool.fetchval("SELECT delivered_at IS NOT NULL FROM outbox "
                                  "WHERE message_id = $1::uuid", mid):
        assert time.monotonic() - started < ASLEEP_S + 5, "never delivered"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _heard(wakeups: asyncio.Queue[str], wait_s: float = 0.5) -> list[str]:
    await asyncio.sleep(wait_s)
    heard = []
    while not wakeups.empty():
        heard.append(wakeups.get_nowait())
    return heard


async def _running(relay: OutboxRelay) -> asyncio.Task[None]:
    """The relay's loop, once it listens (its first claim made)."""
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.5)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_message_written_where_its_relay_runs_wakes_it_without_a_notify(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: str) -> None:
    client = link_client(pki_dir, [("r", peer)], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="here", sweep_s=ASLEEP_S)
    task = await _running(relay)
    try:
        async with listening(pg_url, NOTIFY_CHANNEL) as wakeups:
            took = []
            for n in range(3):
                async with pool.acquire() as conn:
                    mid = await _write(conn, n)
                took.append(await _delivered(pool, mid))
            assert await _heard(wakeups) == []          # no NOTIFY sent
        assert max(took) < PROMPT_S, took
        assert relay.delivered == 3
    finally:
        await _stop(task)
        await client.close()


async def test_a_message_written_elsewhere_wakes_the_relay_by_notify(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: str) -> None:
    """A CLI's connection, or another pool of the process: not the relay's pool."""
    client = link_client(pki_dir, [("r", peer)], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="there", sweep_s=ASLEEP_S)
    task = await _running(relay)
    other = await prepare_pool(pg_url, max_size=2)
    cli = await asyncpg.connect(pg_url)
    try:
        async with listening(pg_url, NOTIFY_CHANNEL) as wakeups:
            mid = await _write(cli, 1)
            assert await _delivered(pool, mid) < PROMPT_S
            async with other.acquire() as conn:
                mid2 = await _write(conn, 2)
            assert await _delivered(pool, mid2) < PROMPT_S
            assert await _heard(wakeups, 0.0) == [mid, mid2]
    finally:
        await cli.close()
        await other.close()
        await _stop(task)
        await client.close()


async def test_once_the_relay_stops_its_pool_s_messages_notify_again(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: str) -> None:
    client = link_client(pki_dir, [("r", peer)], policy=NO_PROBES)
    task = await _running(OutboxRelay(pool, pg_url, client, owner="gone", sweep_s=ASLEEP_S))
    async with pool.acquire() as conn:           # a connection marked for the relay
        await _write(conn, 1)
    await _stop(task)
    await client.close()
    async with listening(pg_url, NOTIFY_CHANNEL) as wakeups:
        for n in range(2, 12):                   # every connection of the pool, in turn
            async with pool.acquire() as conn:
                mid = await _write(conn, n)
            assert await asyncio.wait_for(wakeups.get(), 2.0) == mid


async def test_a_message_whose_writer_does_not_relay_it_waits_at_most_a_sweep(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: str) -> None:
    """Process A marks its sessions (its relay runs, or is about to) but does not deliver;
    process B's relay, with ``sweep_s`` 1 s, delivers A's message by its sweep."""
    client = link_client(pki_dir, [("r", peer)], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="b", sweep_s=1.0)
    task = await _running(relay)
    writer = await prepare_pool(pg_url, max_size=2)
    try:
        async with watching(writer, "not this one", lambda: None,
                            session=IN_PROCESS_SESSION) as watched:
            assert watched
            async with listening(pg_url, NOTIFY_CHANNEL) as wakeups:
                async with writer.acquire() as conn:
                    mid = await _write(conn, 1)
                took = await _delivered(pool, mid)
                assert await _heard(wakeups, 0.0) == []
        assert took <= 1.0 + 2.0, took               # the sweep, and a crowded machine
        assert relay.delivered == 1
    finally:
        await writer.close()
        await _stop(task)
        await client.close()


async def test_only_a_message_made_sendable_wakes_the_relay_in_its_process(
        pool: asyncpg.Pool) -> None:
    """A held message (the edge's stored request), a read or a relay's own settlement of
    the table tell the watcher nothing: each would cost the relay a claim of nothing."""
    told: list[int] = []
    async with watching(pool, SENDABLE_NOTICE, lambda: told.append(1),
                        session=IN_PROCESS_SESSION):
        async with pool.acquire() as conn, conn.transaction():
            mid = await Outbox.enqueue(conn, kind="test", path="/v1/link/test",
                                       payload={"n": 1}, held=True)
        await pool.fetchval("SELECT count(*) FROM outbox")
        await pool.execute("UPDATE outbox SET last_error = 'x' WHERE message_id = $1::uuid", mid)
        await asyncio.sleep(0.1)
        assert told == []
        async with pool.acquire() as conn:
            assert await Outbox.release(conn, mid)
            await asyncio.sleep(0.1)
            assert told == []                   # not before the connection is back
        await asyncio.sleep(0.1)
        assert told == [1]
        async with pool.acquire() as conn:
            await _write(conn, 2)
        await asyncio.sleep(0.1)
        assert told == [1, 1]


async def test_a_lingering_relay_sends_the_messages_written_meanwhile_in_one_pass(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: str) -> None:
    """``linger_s``: woken by the first message, the relay waits that long before it
    claims, so a second one written meanwhile goes in the same pass and the same batch
    request; neither goes before the linger is over."""
    client = link_client(pki_dir, [("r", peer)], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="lingers", sweep_s=ASLEEP_S,
                        batch_paths=["/v1/link/test"], linger_s=LINGER_S)
    task = await _running(relay)
    try:
        async with pool.acquire() as conn:
            first = await _write(conn, 1)
        written = time.monotonic()
        await asyncio.sleep(0.1)
        async with pool.acquire() as conn:
            second = await _write(conn, 2)
        took = await _delivered(pool, first)
        await _delivered(pool, second)
        assert time.monotonic() - written >= LINGER_S - 0.05   # not before the linger
        assert took < LINGER_S + PROMPT_S, took
        assert relay.delivered == 2
        assert relay.batches_sent == 1                      # both in one request
    finally:
        await _stop(task)
        await client.close()


async def test_a_relay_with_a_claim_gap_waits_only_for_messages_written_soon_after_a_claim(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: str) -> None:
    """``claim_gap_s``, the adaptive linger: a message written long after the relay's last
    claim goes at once; two written soon after a claim wait until ``claim_gap_s`` after it
    and go together, in one pass and one batch request."""
    client = link_client(pki_dir, [("r", peer)], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="gaps", sweep_s=ASLEEP_S,
                        batch_paths=["/v1/link/test"], claim_gap_s=LINGER_S)
    task = await _running(relay)
    try:
        async with pool.acquire() as conn:
            first = await _write(conn, 1)
        written = time.monotonic()
        assert await _delivered(pool, first) < LINGER_S        # no claim before it
        async with pool.acquire() as conn:
            second = await _write(conn, 2)
        await asyncio.sleep(0.1)
        async with pool.acquire() as conn:
            third = await _write(conn, 3)
        await _delivered(pool, second)
        await _delivered(pool, third)
        assert time.monotonic() - written >= LINGER_S - 0.05   # not before the gap
        assert relay.delivered == 3
        assert relay.batches_sent == 1                        # the two in one request
        await asyncio.sleep(LINGER_S)
        async with pool.acquire() as conn:
            fourth = await _write(conn, 4)
        assert await _delivered(pool, fourth) < LINGER_S      # long after: at once
        assert relay.batches_sent == 1
    finally:
        await _stop(task)
        await client.close()


async def test_a_relay_lingers_zero_to_one_second(pool: asyncpg.Pool, pki_dir: Path) -> None:
    client = link_client(pki_dir, [("r", "https://127.0.0.1:1")], policy=NO_PROBES)
    for bad in (-0.1, MAX_LINGER_S + 0.1):
        with pytest.raises(ValueError, match="linger_s"):
            OutboxRelay(pool, "postgresql://unused", client, owner="x", linger_s=bad)
        with pytest.raises(ValueError, match="claim_gap_s"):
            OutboxRelay(pool, "postgresql://unused", client, owner="x", claim_gap_s=bad)
        with pytest.raises(ValueError, match="gather_s"):
            OutboxRelay(pool, "postgresql://unused", client, owner="x", gather_s=bad)


async def test_a_relay_gathers_two_to_batch_messages(pool: asyncpg.Pool, pki_dir: Path) -> None:
    """``gather_messages``: 2 to ``batch_messages`` (what one signed request carries), and
    no gathering where nothing is batched."""
    client = link_client(pki_dir, [("r", "https://127.0.0.1:1")], policy=NO_PROBES)
    for bad in (0, 1, 33):
        with pytest.raises(ValueError, match="gather_messages must be 2 to batch_messages"):
            OutboxRelay(pool, "postgresql://unused", client, owner="x", batch_messages=32,
                        gather_s=0.1, gather_messages=bad)
    with pytest.raises(ValueError, match="gather_s needs batch_messages of 2 or more"):
        OutboxRelay(pool, "postgresql://unused", client, owner="x", batch_messages=1,
                    gather_s=0.1)
    assert OutboxRelay(pool, "postgresql://unused", client, owner="x", batch_messages=5,
                       gather_s=0.1).gather_messages == 5
    assert OutboxRelay(pool, "postgresql://unused", client, owner="x",
                       batch_messages=1).gather_s == 0


async def _release_leased(pool: asyncpg.Pool, relay: OutboxRelay,
                          mids: list[str]) -> list[asyncpg.Record]:
    """What the edge's release does with its relay running: release the held messages and
    lease them to the relay in one statement, then hand them over."""
    lease = relay.lease()
    assert lease is not None
    rows: list[asyncpg.Record] = await pool.fetch(
        f"UPDATE outbox SET {Outbox.RELEASE_SET}, "
        f"{Outbox.LEASE_SET.format(owner=2, seconds=3)} "
        f"WHERE message_id = ANY($1::uuid[]) AND held RETURNING {Outbox.LEASED_COLUMNS}",
        mids, *lease)
    relay.take_leased(rows)
    return rows


async def test_messages_released_and_leased_at_once_go_without_a_claim_or_a_wake(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: str) -> None:
    """``OutboxRelay.lease`` / ``take_leased``: a statement that makes messages sendable
    leases them to the running relay, which delivers them without a claim of its own; the
    release wakes no relay (no NOTICE, no NOTIFY: shared migration 0007), and those taken
    together go in one pass and one batch request. Not running, the relay lends no lease."""
    client = link_client(pki_dir, [("r", peer)], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="leased", sweep_s=ASLEEP_S,
                        batch_paths=["/v1/link/test"])
    assert relay.lease() is None
    claims = 0
    claim = relay._claim

    async def counted() -> list[asyncpg.Record]:
        nonlocal claims
        claims += 1
        return await claim()

    relay._claim = counted  # type: ignore[method-assign]
    task = await _running(relay)
    try:
        assert relay.lease() == ("leased", relay.lease_s)
        mids = []
        async with pool.acquire() as conn, conn.transaction():
            for n in (1, 2):
                mids.append(await Outbox.enqueue(conn, kind="test", path="/v1/link/test",
                                                 payload={"n": n}, held=True))
        claims_before = claims
        async with listening(pg_url, NOTIFY_CHANNEL) as wakeups:
            rows = await _release_leased(pool, relay, mids)
            assert sorted(str(r["message_id"]) for r in rows) == sorted(mids)
            for mid in mids:
                assert await _delivered(pool, mid) < PROMPT_S
            assert await _heard(wakeups) == []              # no NOTIFY
        # one claim: the one that wrote their delivered marks (SETTLE_WITHIN_S after);
        # a claim woken by their release would have been a second
        assert claims == claims_before + 1
        assert relay.delivered == 2 and relay.batches_sent == 1
        assert [r["attempts"] for r in rows] == [1, 1]
        assert await _release_leased(pool, relay, mids) == []  # released once only
    finally:
        await _stop(task)
        await client.close()
    assert relay.lease() is None
    after = await pool.fetch("SELECT attempts, lease_owner, delivered_at IS NOT NULL AS d "
                             "FROM outbox WHERE message_id = ANY($1::uuid[])", mids)
    assert [(r["attempts"], r["lease_owner"], r["d"]) for r in after] == [(1, None, True)] * 2


async def _held(pool: asyncpg.Pool, n: int) -> str:
    async with pool.acquire() as conn, conn.transaction():
        return await Outbox.enqueue(conn, kind="test", path="/v1/link/test",
                                    payload={"n": n}, held=True)


async def _undelivered(pool: asyncpg.Pool, mids: list[str]) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL "
                                   "AND message_id = ANY($1::uuid[])", mids))


async def test_leased_messages_gather_for_one_request_only_while_they_come_often(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, peer: str) -> None:
    """``gather_s`` / ``gather_messages``: the first message taken goes at once (no gap
    known yet); once they come at least twice a window, the next waits for others, and
    those that join it go in one pass and one batch request as soon as there are
    ``gather_messages`` of them; with none joining it goes alone by the window's end;
    after a long quiet one goes at once again."""
    client = link_client(pki_dir, [("r", peer)], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="gathers", sweep_s=ASLEEP_S,
                        batch_paths=["/v1/link/test"], gather_s=GATHER_S, gather_messages=3)
    task = await _running(relay)
    try:
        mids = [await _held(pool, n) for n in range(6)]
        await _release_leased(pool, relay, mids[:1])
        await _release_leased(pool, relay, mids[1:2])          # a statement later: waits
        assert await _delivered(pool, mids[0]) < GATHER_S / 2  # no gap known: at once
        assert relay.batches_sent == 0
        await _release_leased(pool, relay, mids[2:3])          # joins; two of three: waits
        await asyncio.sleep(0.2)
        assert await _undelivered(pool, mids[1:3]) == 2
        third_at = time.monotonic()
        await _release_leased(pool, relay, mids[3:4])          # the third: all go at once
        assert await _delivered(pool, mids[1]) < GATHER_S / 2
        for mid in mids[2:4]:
            await _delivered(pool, mid)
        assert time.monotonic() - third_at < GATHER_S / 2
        assert relay.delivered == 4 and relay.batches_sent == 1
        await _release_leased(pool, relay, mids[4:5])          # none joins it
        waited = await _delivered(pool, mids[4])
        assert GATHER_S - 0.3 <= waited < PROMPT_S, waited      # the window is up: alone
        assert relay.delivered == 5 and relay.batches_sent == 1  # alone
        await asyncio.sleep(2 * GATHER_S + 1)
        await _release_leased(pool, relay, mids[5:])           # after a long quiet
        assert await _delivered(pool, mids[5]) < GATHER_S / 2  # at once
        assert relay.delivered == 6 and relay.batches_sent == 1
    finally:
        await _stop(task)
        await client.close()


async def test_a_gathering_pass_goes_once_the_next_is_not_expected_in_its_window(
        pool: asyncpg.Pool, pki_dir: Path) -> None:
    """After a message joins it, a gathering pass goes at once when the next is not
    expected before the window's end (the last taken plus the smoothed gap between
    takings is later), instead of waiting out the window; one already holding
    ``gather_messages`` does not wait at all."""
    client = link_client(pki_dir, [("r", "https://127.0.0.1:1")], policy=NO_PROBES)
    relay = OutboxRelay(pool, "postgresql://unused", client, owner="x",
                        batch_paths=["/v1/link/test"], gather_s=GATHER_S, gather_messages=4)
    try:
        relay._note_taken()
        await asyncio.sleep(0.3)
        relay._note_taken()                     # a gap of 0.3 s
        relay._leased = [None]  # type: ignore[list-item]
        started = time.monotonic()
        gathering = asyncio.create_task(relay._gather(started + GATHER_S))
        await asyncio.sleep(0.3)
        assert not gathering.done()             # the next expected at 0.3 s: waits
        relay._note_taken()                     # one joins at 0.3 s: the next at 0.6 s
        relay._leased.append(None)  # type: ignore[arg-type]
        assert relay._gathering is not None
        relay._gathering.set()
        await asyncio.sleep(0.2)
        assert not gathering.done()             # 0.6 s is within the window: waits
        await asyncio.sleep(0.2)
        relay._note_taken()                     # one joins at 0.7 s: the next at 1.05 s
        relay._leased.append(None)  # type: ignore[arg-type]
        relay._gathering.set()
        await asyncio.wait_for(gathering, 0.15)  # beyond the window: goes at once
        assert time.monotonic() - started < GATHER_S - 0.05
        relay._leased = [None] * 4  # type: ignore[list-item]
        started = time.monotonic()
        await relay._gather(started + GATHER_S)
        assert time.monotonic() - started < 0.1
    finally:
        await client.close()


async def test_a_message_released_and_leased_at_once_tells_the_watcher_nothing(
        pool: asyncpg.Pool) -> None:
    """Its relay delivers it without a claim: a NOTICE would cost that relay a claim of
    nothing. A lease that has run out (a relay gone) wakes the watcher as before."""
    told: list[int] = []
    async with watching(pool, SENDABLE_NOTICE, lambda: told.append(1),
                        session=IN_PROCESS_SESSION):
        async with pool.acquire() as conn, conn.transaction():
            leased = await Outbox.enqueue(conn, kind="test", path="/v1/link/test",
                                          payload={"n": 1}, held=True)
            lapsed = await Outbox.enqueue(conn, kind="test", path="/v1/link/test",
                                          payload={"n": 2}, held=True)
        release = (f"UPDATE outbox SET {Outbox.RELEASE_SET}, "
                   f"{Outbox.LEASE_SET.format(owner=2, seconds=3)} "
                   "WHERE message_id = $1::uuid AND held")
        await pool.execute(release, leased, "r", 30)
        await asyncio.sleep(0.2)
        assert told == []
        await pool.execute(release, lapsed, "r", 0)
        await asyncio.sleep(0.2)
        assert told == [1]


async def test_only_a_row_that_may_wake_a_relay_calls_the_wake_function(
        pool: asyncpg.Pool) -> None:
    """The triggers' WHEN clauses skip the rows that wake no relay: a held message (the
    edge's stored request) and one released and leased at once (handed to its relay) call
    ``outbox_notify()`` not at all; a message written sendable, one released without a
    lease and one whose lease has run out call it once each."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL track_functions = 'pl'")

        async def calls() -> int:
            return int(await conn.fetchval(
                "SELECT coalesce(pg_stat_get_xact_function_calls('outbox_notify'::regproc), 0)"))

        release = (f"UPDATE outbox SET {Outbox.RELEASE_SET}, "
                   f"{Outbox.LEASE_SET.format(owner=2, seconds=3)} "
                   "WHERE message_id = $1::uuid AND held")
        held = [await Outbox.enqueue(conn, kind="test", path="/v1/link/test",
                                     payload={"n": n}, held=True) for n in range(3)]
        await conn.execute(release, held[0], "r", 30)
        assert await calls() == 0
        await _write(conn, 4)
        assert await calls() == 1
        assert await Outbox.release(conn, held[1])
        assert await calls() == 2
        await conn.execute(release, held[2], "r", 0)
        assert await calls() == 3
