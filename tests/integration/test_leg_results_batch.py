"""Legs' results group-committed (``callback_server.store.leg_results``), on the real
PostgreSQL: the results that come together are one statement, each caller returns once it
committed, a batch waits a little for a leg persisted moments ago and never for one that
is not coming, one bad result fails only its own caller, and the values written are those
a result written alone writes."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from callback_server.store.leg_end import write_leg_result
from callback_server.store.leg_results import LegResults
from callback_server.testing import merchant
from tests.integration import callback_db
from tests.integration.test_attempts_hot_updates import add_legs

pytestmark = pytest.mark.integration

pool, clean = callback_db.fixtures([merchant("acme")])


class Counting(LegResults):
    """The statements each batch sent."""

    statements: int = 0

    async def write(self, conn, batch):  # type: ignore[no-untyped-def]
        self.statements += 1
        return await super().write(conn, batch)


async def legs(conn: asyncpg.Connection, ids: list[str]) -> dict[str, tuple[object, ...]]:
    rows = await conn.fetch("SELECT channel_id, status, cause, answered, answered_at IS NOT"
                            " NULL AS at FROM callback_attempts WHERE channel_id = ANY($1)"
                            " ORDER BY channel_id", ids)
    return {r["channel_id"]: (r["status"], r["cause"], r["answered"], r["at"]) for r in rows}


async def test_results_that_come_together_are_one_statement(clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        await add_legs(conn, 6, 1)
    results = Counting(clean)
    try:
        # six legs' results in one turn of the loop: one batch, one statement
        await asyncio.gather(*(results.record(f"ch-{i}-1", status, cause) for i, status, cause
                               in [(1, "originated", None), (2, "answered", None),
                                   (3, "ended", 16), (4, "failed", 21),
                                   (5, "originated", None), (6, "answered", None)]))
        assert (results.batches, results.messages, results.statements) == (1, 6, 1)
        async with clean.acquire() as conn:
            batched = await legs(conn, [f"ch-{i}-1" for i in range(1, 7)])
            # the same results written alone, one by one, on a fresh copy of the legs
            await conn.execute("UPDATE callback_attempts SET status = 'dialing', cause = NULL,"
                               " answered = false, answered_at = NULL")
            for i, status, cause in [(1, "originated", None), (2, "answered", None),
                                     (3, "ended", 16), (4, "failed", 21),
                                     (5, "originated", None), (6, "answered", None)]:
                await write_leg_result(conn, f"ch-{i}-1", status, cause)
            alone = await legs(conn, [f"ch-{i}-1" for i in range(1, 7)])
        assert batched == alone
        assert batched["ch-2-1"] == ("answered", None, True, True)
        assert batched["ch-3-1"] == ("ended", 16, False, False)
    finally:
        await results.close()


async def test_one_legs_two_results_keep_their_order(clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        await add_legs(conn, 1, 1)
    results = LegResults(clean)
    try:
        await asyncio.gather(results.record("ch-1-1", "answered", None),
                             results.record("ch-1-1", "ended", 16))
        async with clean.acquire() as conn:
            assert (await legs(conn, ["ch-1-1"]))["ch-1-1"] == ("ended", 16, True, True)
    finally:
        await results.close()


async def test_a_batch_waits_for_a_partner_that_is_coming_only(clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        await add_legs(conn, 3, 1)
    results = Counting(clean, partner_wait_s=0.5)
    loop = asyncio.get_running_loop()
    try:
        # nobody expected: the result goes out at once, alone
        started = loop.time()
        await results.record("ch-1-1", "originated", None)
        assert loop.time() - started < 0.25
        assert (results.batches, results.waited) == (1, 0)
        # its partner persisted: the first waits for it, and both are one statement
        results.expect("ch-3-1")
        first = asyncio.create_task(results.record("ch-2-1", "originated", None))
        await asyncio.sleep(0.02)
        assert not first.done()
        await results.record("ch-3-1", "originated", None)
        await first
        assert (results.batches, results.statements, results.waited, results.joined) == \
            (2, 2, 1, 1)
        # a partner whose originate failed is forgotten: nothing waits for it
        results.expect("ch-1-1")
        started = loop.time()
        waiting = asyncio.create_task(results.record("ch-2-1", "answered", None))
        await asyncio.sleep(0.02)
        results.forget("ch-1-1")
        await waiting
        assert loop.time() - started < 0.25
        assert results.batches == 3
    finally:
        await results.close()


async def test_a_bad_result_fails_alone(clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        await add_legs(conn, 2, 1)
    results = Counting(clean)
    try:
        outcome = await asyncio.gather(
            results.record("ch-1-1", "originated", None),
            results.record("ch-2-1", "no-such-status", None),   # the check constraint
            return_exceptions=True)
        assert outcome[0] is None
        assert isinstance(outcome[1], asyncpg.PostgresError)
        async with clean.acquire() as conn:
            assert (await legs(conn, ["ch-1-1"]))["ch-1-1"][0] == "originated"
    finally:
        await results.close()
