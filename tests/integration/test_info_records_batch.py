"""The IVRs' request info group-committed (``callback_server.store.info_records``), on the
real PostgreSQL: the submits that come together are one statement, each caller returns once
it committed, the rows and messages are those a submit written alone writes, a repeat of a
fact writes nothing twice, and one bad submit fails only its own caller."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from callback_server.ivr import Submit
from callback_server.store import CallbackStore
from callback_server.store.info_records import InfoRecords
from tests.integration.test_ivr_request_info_statement import CALLER, EMPTIED, a_call_back
from tests.integration.test_ivr_request_info_statement import pool as pool  # the fixture

pytestmark = pytest.mark.integration

AT = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)


class Counting(InfoRecords):
    """The statements each batch sent."""

    statements: int = 0

    async def write(self, conn, batch):  # type: ignore[no-untyped-def]
        self.statements += 1
        return await super().write(conn, batch)


def order(n: int) -> Submit:
    return Submit("order", (("item_code", str(1000 + n)), ("quantity", str(n))))


async def submit(store: CallbackStore, callback_id: str, n: int, seq: int = 1) -> str:
    return await store.record_info(order(n), callback_id=callback_id, edge_call_id=f"e-{n}",
                                   merchant_id="acme", caller=CALLER, collected_at=AT, seq=seq)


async def written(pool: asyncpg.Pool) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    info = await pool.fetch("SELECT callback_id, merchant_id, category, fields, collected_at,"
                            " message_id FROM request_info ORDER BY message_id")
    out = await pool.fetch("SELECT message_id::text, kind, path, body, merchant_id, held"
                           " FROM outbox WHERE kind = 'request_info' ORDER BY message_id")
    return [tuple(r) for r in info], [tuple(r) for r in out]


async def calls_back(pool: asyncpg.Pool, *numbers: str) -> tuple[CallbackStore, list[str]]:
    """An emptied database, a store, a call-back for each number and no outbox message."""
    await pool.execute(EMPTIED)
    store = CallbackStore(pool, owner="w1")
    calls = [await a_call_back(pool, store, number) for number in numbers]
    await pool.execute("TRUNCATE outbox")
    return store, calls


async def test_submits_that_come_together_are_one_statement_as_written_alone(
        pool: asyncpg.Pool) -> None:
    store, calls = await calls_back(pool, *(str(200 + n) for n in range(4)))
    store.info_records = records = Counting(pool)
    try:
        ids = await asyncio.gather(*(submit(store, cid, n) for n, cid in enumerate(calls)))
        assert (records.batches, records.messages, records.statements) == (1, 4, 1)
    finally:
        await records.close()
    batched = await written(pool)
    assert sorted(r[5] for r in batched[0]) == sorted(ids)
    assert len(batched[1]) == 4
    # the same submits written alone (one statement each), on an emptied copy
    await pool.execute("TRUNCATE request_info, outbox")
    alone = CallbackStore(pool, owner="w1")
    for n, cid in enumerate(calls):
        await submit(alone, cid, n)
    assert await written(pool) == batched


async def test_a_repeat_of_a_fact_writes_nothing_twice(pool: asyncpg.Pool) -> None:
    store, (callback_id,) = await calls_back(pool, "300")
    store.info_records = records = InfoRecords(pool)
    try:
        # a repeat still queued joins the first; one after its commit inserts nothing
        first, again = await asyncio.gather(submit(store, callback_id, 1),
                                            submit(store, callback_id, 1))
        assert first == again and records.repeats == 1
        assert await submit(store, callback_id, 1) == first
        assert await submit(store, callback_id, 1, seq=2) != first     # a second fact
    finally:
        await records.close()
    info, out = await written(pool)
    assert (len(info), len(out)) == (2, 2)


async def test_a_bad_submit_fails_alone(pool: asyncpg.Pool) -> None:
    store, (callback_id,) = await calls_back(pool, "400")
    store.info_records = records = Counting(pool)
    try:
        outcome = await asyncio.gather(submit(store, callback_id, 1),
                                       submit(store, "no-such-call-back", 2),  # its FK
                                       return_exceptions=True)
    finally:
        await records.close()
    assert isinstance(outcome[0], str)
    assert isinstance(outcome[1], asyncpg.ForeignKeyViolationError)
    info, out = await written(pool)
    assert [r[0] for r in info] == [callback_id] and len(out) == 1
    assert records.statements == 3      # the batch, then each alone
