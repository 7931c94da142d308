"""Overload at the edge against a real PostgreSQL: a database too slow to store the
call-back request in time (its table locked by another connection) never loses or
strands the caller. The call goes on to the operator on the toll-free line, as a call
kept direct does, and the request that commits late is withdrawn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from edge_server.flow_messages import FlowTimings, MerchantSettings
from edge_server.stasis import PRESENTATION_VAR, CallSession, MerchantDirectory, StasisDeps
from edge_server.store import CallStore, edge_migrations
from edge_server.testing import FakeAri, FakeDecider, merchant
from shared import ari
from shared.db import create_pool, migrate_url
from shared.phone import E164
from tests import prom

pytestmark = pytest.mark.integration

DIALED = E164("81120123456")
CHANNEL = "1700000099.1"
#: the store's guard is short; the late commit is waited for as long as in production
TIMINGS = FlowTimings(decide_s=2.0, store_s=0.5, late_store_s=30.0)


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, edge_migrations())
    pool = await create_pool(pg_url)
    await CallStore(pool).sync_merchants([merchant("acme", "0120123456")])
    await pool.execute("DELETE FROM outbox WHERE message_id IN (SELECT message_id "
                       "FROM edge_calls WHERE channel_id = $1)", CHANNEL)
    await pool.execute("DELETE FROM edge_calls WHERE channel_id = $1", CHANNEL)
    yield pool
    await pool.close()


async def test_a_store_slower_than_its_guard_keeps_the_call_on_the_toll_free_line(
        pool: asyncpg.Pool) -> None:
    fake = FakeAri({PRESENTATION_VAR: "allowed_not_screened"})
    deps = StasisDeps(ari=fake, store=CallStore(pool), decider=FakeDecider(),
                      merchants=MerchantDirectory({DIALED: MerchantSettings("acme")}),
                      timings=TIMINGS, resync_grace_s=0.0)
    kept = ("acme", "direct", "store_timeout")
    before = prom.sample("cbgw_edge_calls_total", merchant=kept[0], outcome=kept[1],
                         reason=kept[2])
    locker = await pool.acquire()
    lock = locker.transaction()
    await lock.start()
    try:
        await locker.execute("LOCK TABLE edge_calls IN ACCESS EXCLUSIVE MODE")
        event = ari.StasisStart(ari.Channel(id=CHANNEL, caller_number="09012345678",
                                            exten="0120123456", state="Ring"),
                                args=("inbound",))
        session = asyncio.create_task(CallSession(deps, event, asyncio.Queue()).run())
        deadline = asyncio.get_running_loop().time() + 30
        while ("continue", CHANNEL, "direct,operator,1") not in fake.calls:
            assert asyncio.get_running_loop().time() < deadline, fake.calls
            await asyncio.sleep(0.05)
        assert not {"hangup", "play", "answer"} & set(fake.names())
    finally:
        await lock.rollback()                     # the database catches up
        await pool.release(locker)
    await asyncio.wait_for(session, 30)
    row = await pool.fetchrow("SELECT state, outcome, message_id FROM edge_calls "
                              "WHERE channel_id = $1", CHANNEL)
    assert row is not None and (row["state"], row["outcome"]) == ("cancelled", "store_timeout")
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE message_id = $1",
                               row["message_id"]) == 0   # nobody is called back
    assert prom.sample("cbgw_edge_calls_total", merchant=kept[0], outcome=kept[1],
                       reason=kept[2]) - before == 1
