"""The callback worker applies the merchant's business hours again before dialling: a
queued request outside them waits for the next opening (rescheduled in PostgreSQL,
uncounted) or is dropped with reason ``outside_hours``, reported to the edge. Real
PostgreSQL, a fake Asterisk, a fixed clock."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from callback_server.config import StaticRoute
from callback_server.ivr_flow import load_named
from callback_server.routing import Routing
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.testing import FakeAri, FixedRater, merchant
from callback_server.worker import Worker, WorkerSettings
from ivr_platform.hours import TOKYO, BusinessHours, MerchantHours, SpecialDay, Window
from shared.config import Merchant, OutsideHours
from shared.phone import E164
from tests.integration import callback_db

pytestmark = pytest.mark.integration

WEEKDAYS = (Window(9 * 60, 18 * 60),)
HOURS = BusinessHours(
    weekly=(WEEKDAYS,) * 5 + ((), ()),
    special=(SpecialDay(date(2026, 12, 29), date(2027, 1, 3), (), "年末年始"),))
SUNDAY_LINE = E164("81120555666")       # this number also opens on Sundays
MERCHANT_HOURS = MerchantHours(HOURS, {SUNDAY_LINE: replace(
    HOURS, weekly=(WEEKDAYS,) * 5 + ((), (Window(10 * 60, 16 * 60),)))})
WAITS = replace(merchant("waits"), hours=MERCHANT_HOURS)
DROPS = replace(merchant("drops", "0120222333"), hours=MERCHANT_HOURS,
                outside_hours=OutsideHours.DROP)
ROUTES = (StaticRoute("carrier-a", "PJSIP/{digits}@carrier-a"),)
YEAR_END = datetime(2026, 12, 30, 10, 0, tzinfo=TOKYO)     # a closed special day
REOPENS = datetime(2027, 1, 4, 9, 0, tzinfo=TOKYO)         # the Monday after it
TUESDAY = datetime(2026, 12, 8, 10, 0, tzinfo=TOKYO)       # open
SUNDAY = datetime(2026, 12, 6, 11, 0, tzinfo=TOKYO)


pool, clean = callback_db.fixtures([WAITS, DROPS])


async def intake(pool: asyncpg.Pool, m: Merchant, dialed: E164 | None = None) -> str:
    now = datetime.now(UTC)
    req = IntakeRequest(f"edge-{uuid.uuid4().hex[:8]}", m.id, E164("819012345678"),
                        None if dialed is None else str(dialed), now, now, "early_media")
    _, body = await CallbackStore(pool, owner="edge").intake(str(uuid.uuid4()), req, m)
    return str(body["callback_id"])


@asynccontextmanager
async def running(pool: asyncpg.Pool, pg_url: str, clock: Callable[[], datetime]
                  ) -> AsyncIterator[FakeAri]:
    fake = FakeAri()
    ready = asyncio.Event()
    ready.set()
    worker = Worker(store=CallbackStore(pool, owner="w1"), db_url=pg_url,
                    merchants={"waits": WAITS, "drops": DROPS},
                    flows={"order": load_named("order")}, routes=Routing(None, ROUTES),
                    client=fake, router=fake.router, rater=FixedRater(), ari_ready=ready,
                    settings=WorkerSettings(sweep_s=0.2, drain_s=0.5), clock=clock)
    task = asyncio.create_task(worker.run())
    try:
        yield fake
    finally:
        await worker.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def row_when(pool: asyncpg.Pool, callback_id: str, done: Callable[[asyncpg.Record], bool],
                   limit_s: float = 10.0) -> asyncpg.Record:
    for _ in range(int(limit_s / 0.02)):
        row = await pool.fetchrow(
            "SELECT status, reason, attempts, next_attempt_at, now() AS db_now "
            "FROM callback_requests WHERE callback_id = $1", callback_id)
        if row is not None and done(row):
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"{callback_id} never reached the state expected: {row}")


async def test_outside_hours_a_request_waits_for_the_next_opening_then_is_dialled(
        clean: asyncpg.Pool, pg_url: str) -> None:
    callback_id = await intake(clean, WAITS)
    async with running(clean, pg_url, lambda: YEAR_END) as fake:
        row = await row_when(clean, callback_id, lambda r: r["reason"] == "outside_hours")
        await asyncio.sleep(0.5)             # several sweeps: it is not due, nothing rings
        assert not fake.named("originate")
    assert (row["status"], row["attempts"]) == ("queued", 0)   # a wait is not a round
    due_in = row["next_attempt_at"] - row["db_now"]
    assert abs(due_in - (REOPENS - YEAR_END)) < timedelta(seconds=5), due_in
    assert await clean.fetchval("SELECT count(*) FROM outbox") == 0    # nothing final
    # Durable: the next opening is in the row. When it comes (moved here to now) a worker
    # whose clock is then dials it.
    await clean.execute("UPDATE callback_requests SET next_attempt_at = now()")
    async with running(clean, pg_url, lambda: REOPENS) as fake:
        for _ in range(500):
            if fake.named("originate"):
                break
            await asyncio.sleep(0.02)
        assert fake.named("originate"), "the request was not dialled at the opening"


async def test_outside_hours_a_drop_merchants_request_ends_and_the_edge_is_told(
        clean: asyncpg.Pool, pg_url: str) -> None:
    callback_id = await intake(clean, DROPS)
    async with running(clean, pg_url, lambda: YEAR_END) as fake:
        row = await row_when(clean, callback_id, lambda r: r["status"] != "queued"
                             and r["status"] != "dialing")
    assert (row["status"], row["reason"], row["attempts"]) == ("failed", "outside_hours", 0)
    assert not fake.named("originate")
    (message,) = await clean.fetch("SELECT kind, body FROM outbox")
    payload = json.loads(message["body"])
    assert message["kind"] == "callback_status"
    assert (payload["status"], payload["reason"], payload["callback_id"]) == (
        "failed", "outside_hours", callback_id)


async def test_inside_hours_a_request_is_dialled_at_once(clean: asyncpg.Pool,
                                                         pg_url: str) -> None:
    await intake(clean, DROPS)
    async with running(clean, pg_url, lambda: TUESDAY) as fake:
        for _ in range(500):
            if fake.named("originate"):
                break
            await asyncio.sleep(0.02)
        assert fake.named("originate")


async def test_the_dialled_numbers_own_hours_decide(clean: asyncpg.Pool,
                                                    pg_url: str) -> None:
    merchants_line = await intake(clean, DROPS, E164("81120222333"))
    sunday_line = await intake(clean, DROPS, SUNDAY_LINE)
    async with running(clean, pg_url, lambda: SUNDAY) as fake:
        row = await row_when(clean, merchants_line, lambda r: r["status"] == "failed")
        for _ in range(500):
            if fake.named("originate"):
                break
            await asyncio.sleep(0.02)
    assert row["reason"] == "outside_hours"
    (originate,) = fake.named("originate")
    assert originate[1].startswith(sunday_line)
