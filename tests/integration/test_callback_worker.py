"""The worker against real PostgreSQL with a fake Asterisk: event-driven pickup, delay,
two workers never dialling one request twice, rescue of a stalled worker's job."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

import callback_server
import shared
from callback_server.config import StaticRoute
from callback_server.dialer import RescueAction, rescue_action
from callback_server.dialer_messages import Finish, PersistAttempt, Reason
from callback_server.ivr_flow import load_named
from callback_server.routing import Routing
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.store.queue_store import LeaseLost
from callback_server.testing import FakeAri, FixedRater, merchant
from callback_server.worker import Worker, WorkerSettings
from shared import ari
from shared.db import create_pool, migrate_url, package_migrations
from shared.phone import E164
from tests import prom
from tests.harness.json_log import json_log

pytestmark = pytest.mark.integration

ACME = merchant("acme")
SLOW = merchant("slow", "0120999888", delay_s="1.5")
ROUTES = (StaticRoute("carrier-a", "PJSIP/{digits}@carrier-a"),
          StaticRoute("carrier-b", "PJSIP/{digits}@carrier-b"))


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("callback", callback_server.__file__)])
    p = await create_pool(pg_url, max_size=20)
    await CallbackStore(p, owner="setup").sync_merchants([ACME, SLOW])
    yield p
    await p.close()


@pytest.fixture
async def clean(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute("TRUNCATE cdrs, request_info, callback_attempts, click_to_call_requests,"
                       " click_web_calls, callback_requests, outbox, inbound_messages")
    return pool


@pytest.fixture
def ids() -> Iterator[str]:
    return iter(f"edge-{uuid.uuid4().hex[:8]}-{i}" for i in range(10_000))


async def intake(pool: asyncpg.Pool, edge_call_id: str, m: object = ACME) -> str:
    now = datetime.now(UTC)
    req = IntakeRequest(edge_call_id, m.id, E164("819012345678"), None, now, now,  # type: ignore[attr-defined]
                        "early_media")
    _, body = await CallbackStore(pool, owner="edge").intake(str(uuid.uuid4()), req, m)  # type: ignore[arg-type]
    return str(body["callback_id"])


def make_worker(pool: asyncpg.Pool, pg_url: str, owner: str, *, lease_s: int = 30,
                sweep_s: float = 30.0) -> tuple[Worker, FakeAri]:
    fake = FakeAri()
    ready = asyncio.Event()
    ready.set()
    worker = Worker(store=CallbackStore(pool, owner=owner, lease_s=lease_s), db_url=pg_url,
                    merchants={"acme": ACME, "slow": SLOW}, flows={"order": load_named("order")},
                    routes=Routing(None, ROUTES), client=fake, router=fake.router,
                    rater=FixedRater(), ari_ready=ready,
                    settings=WorkerSettings(sweep_s=sweep_s, heartbeat_s=lease_s / 3,
                                            drain_s=0.5))
    return worker, fake


@asynccontextmanager
async def running(pool: asyncpg.Pool, pg_url: str, owner: str, *, lease_s: int = 30,
                  sweep_s: float = 30.0) -> AsyncIterator[tuple[Worker, FakeAri]]:
    worker, fake = make_worker(pool, pg_url, owner, lease_s=lease_s, sweep_s=sweep_s)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.2)                    # LISTEN is up
    try:
        yield worker, fake
    finally:
        await worker.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_for(predicate: object, limit_s: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - started > limit_s:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_job_is_dialled_on_notify_not_by_the_sweep(clean: asyncpg.Pool, pg_url: str,
                                                         ids: Iterator[str]) -> None:
    async with running(clean, pg_url, "w1", sweep_s=30) as (_, fake):
        callback_id = await intake(clean, next(ids))
        took = await wait_for(lambda: fake.named("originate"))
        assert took < 10.0                      # the sweep is 30 s: this was the NOTIFY
        endpoint, channel_id, caller_id, _ = fake.named("originate")[0]
        assert endpoint == "PJSIP/819012345678@carrier-a"
        assert channel_id == f"{callback_id}-01" and caller_id == "+81120123456"
        fake.router.dispatch(ari.ChannelDestroyed(ari.Channel(id=channel_id), cause=17))
        await wait_for(lambda: True)
        row = None

        async def requeued() -> bool:
            nonlocal row
            row = await clean.fetchrow("SELECT status, attempts, reason FROM callback_requests")
            return row is not None and row["status"] == "queued"

        for _ in range(200):
            if await requeued():
                break
            await asyncio.sleep(0.01)
        assert row is not None and (row["status"], row["attempts"], row["reason"]) == (
            "queued", 1, "customer_busy")
        assert len(fake.named("originate")) == 1    # backoff 30 s: no second ring now


async def test_pre_callback_delay_is_a_timer(clean: asyncpg.Pool, pg_url: str,
                                             ids: Iterator[str]) -> None:
    async with running(clean, pg_url, "w1", sweep_s=30) as (_, fake):
        await intake(clean, next(ids), SLOW)
        took = await wait_for(lambda: fake.named("originate"), limit_s=5)
        assert 1.3 < took < 10.0     # the 1.5 s delay's timer, not the 30 s sweep


async def test_two_workers_never_dial_one_request_twice(clean: asyncpg.Pool, pg_url: str,
                                                        ids: Iterator[str]) -> None:
    async with running(clean, pg_url, "wa", sweep_s=0.5) as (_, fa), \
            running(clean, pg_url, "wb", sweep_s=0.5) as (_, fb):
        created = {await intake(clean, next(ids)) for _ in range(30)}
        await wait_for(lambda: len(fa.named("originate")) + len(fb.named("originate")) >= 30)
        await asyncio.sleep(0.3)
        dialled_a = {o[1].rsplit("-", 1)[0] for o in fa.named("originate")}
        dialled_b = {o[1].rsplit("-", 1)[0] for o in fb.named("originate")}
        assert not dialled_a & dialled_b
        assert dialled_a | dialled_b == created
        assert len(fa.named("originate")) + len(fb.named("originate")) == 30


async def test_a_legs_persist_renews_the_lease_only_with_half_of_it_gone(
        clean: asyncpg.Pool, ids: Iterator[str]) -> None:
    """The lease the claim just set is checked, not written again, by the leg's persist;
    with half of it or less left (a late heartbeat) it is renewed to its full length; a
    lease lost stores no leg."""
    callback_id = await intake(clean, next(ids))
    store = CallbackStore(clean, owner="w1", lease_s=30)
    await store.claim(1)

    def leg(n: int) -> PersistAttempt:
        return PersistAttempt(callback_id, 1, n, f"{callback_id}-0{n}", "customer",
                              "carrier-a", "PJSIP/x@carrier-a")

    async def lease() -> asyncpg.Record:
        row = await clean.fetchrow(
            "SELECT xmin::text AS version, lease_expires_at, "
            "extract(epoch FROM lease_expires_at - now()) AS left_s "
            "FROM callback_requests WHERE callback_id = $1", callback_id)
        assert row is not None
        return row

    claimed = await lease()
    await store.persist_leg(leg(1), "acme")
    kept = await lease()
    assert (kept["version"], kept["lease_expires_at"]) == (claimed["version"],
                                                            claimed["lease_expires_at"])
    await clean.execute("UPDATE callback_requests SET lease_expires_at = now() + "
                        "interval '14 seconds' WHERE callback_id = $1", callback_id)
    await store.persist_leg(leg(2), "acme")
    assert (await lease())["left_s"] > 25
    await clean.execute("UPDATE callback_requests SET lease_owner = 'other' "
                        "WHERE callback_id = $1", callback_id)
    with pytest.raises(LeaseLost):
        await store.persist_leg(leg(3), "acme")
    assert await clean.fetchval("SELECT array_agg(leg_seq ORDER BY leg_seq) "
                                "FROM callback_attempts") == [1, 2]


async def test_rescue_redials_a_job_that_never_dialled(clean: asyncpg.Pool, pg_url: str,
                                                       ids: Iterator[str]) -> None:
    callback_id = await intake(clean, next(ids))
    stalled = CallbackStore(clean, owner="stalled", lease_s=1)
    (job,) = await stalled.claim(1)
    await stalled.persist_leg(PersistAttempt(callback_id, 1, 1, f"{callback_id}-01", "customer",
                                             "carrier-a", "PJSIP/x@carrier-a"), "acme")
    # ... and the stalled worker died before its originate reached Asterisk.
    async with running(clean, pg_url, "rescuer", sweep_s=0.5) as (_, fake):
        took = await wait_for(lambda: fake.named("originate"), limit_s=10)
        assert took < 60
        assert fake.named("originate")[0][1] == f"{callback_id}-02"


async def test_rescue_never_redials_an_answered_call(clean: asyncpg.Pool, pg_url: str,
                                                     ids: Iterator[str]) -> None:
    callback_id = await intake(clean, next(ids))
    stalled = CallbackStore(clean, owner="stalled", lease_s=1)
    await stalled.claim(1)
    await stalled.persist_leg(PersistAttempt(callback_id, 1, 1, f"{callback_id}-01", "customer",
                                             "carrier-b", "PJSIP/x@carrier-b"), "acme")
    await stalled.leg_result(f"{callback_id}-01", "answered", None)
    async with running(clean, pg_url, "rescuer", sweep_s=0.5) as (_, fake):
        fake.channels[f"{callback_id}-01"] = "Up"      # parked in Stasis, owner gone

        async def finished() -> bool:
            return await clean.fetchval("SELECT status FROM callback_requests") == "failed"

        for _ in range(600):
            if await finished():
                break
            await asyncio.sleep(0.01)
        assert await finished()
        assert fake.named("originate") == []
        assert f"{callback_id}-01" in fake.named("hangup")
        assert await clean.fetchval("SELECT reason FROM callback_requests") == "worker_lost"
        assert await clean.fetchval("SELECT count(*) FROM outbox "
                                    "WHERE kind = 'callback_status'") == 1


@pytest.mark.parametrize(("was_answered", "expected"), [
    (True, RescueAction.COMPLETE), (False, RescueAction.COUNT_AND_RETRY)])
async def test_a_stray_leg_hung_up_on_reconnect_is_never_redialled_at_once(
        clean: asyncpg.Pool, ids: Iterator[str], was_answered: bool,
        expected: RescueAction) -> None:
    """Found by the fault run: after a worker was killed, its restarted process hung up
    the leg still parked in Stasis, and the rescue, finding no channel and no recorded
    answer, dialled the customer again. The state seen at hang-up is recorded first."""
    callback_id = await intake(clean, next(ids))
    stalled = CallbackStore(clean, owner="stalled", lease_s=1)
    await stalled.claim(1)
    leg = f"{callback_id}-01"
    await stalled.persist_leg(PersistAttempt(callback_id, 1, 1, leg, "customer",
                                             "carrier-b", "PJSIP/x@carrier-b"), "acme")
    await stalled.leg_result(leg, "originated", None)   # the answer event was never stored
    restarted = CallbackStore(clean, owner="restarted", lease_s=30)
    assert await restarted.settle_leg(leg, answered=was_answered, answered_at=None,
                                      cause=16 if was_answered else 0)
    last = await restarted.last_leg(callback_id)
    assert last is not None
    assert rescue_action(last.last, None) is expected    # the channel is gone by then


async def test_every_line_of_a_job_names_its_call_request_and_merchant(
        clean: asyncpg.Pool, pg_url: str, ids: Iterator[str]) -> None:
    """Two jobs of two merchants, claimed, dialled, busy: every line about them, from the
    worker's job task and the call runner's round, carries that job's edge call id,
    callback id and merchant, and no line carries a mix of the two."""
    with json_log("callback") as logged:
        async with running(clean, pg_url, "w1", sweep_s=30) as (_, fake):
            calls = {next(ids): m for m in (ACME, SLOW)}
            jobs = {(call, await intake(clean, call, m), m.id) for call, m in calls.items()}
            await wait_for(lambda: len(fake.named("originate")) == 2, limit_s=10)
            for _, channel_id, _, _ in fake.named("originate"):
                fake.router.dispatch(ari.ChannelDestroyed(ari.Channel(id=channel_id), cause=17))
            deadline = time.monotonic() + 30      # both rounds ended and requeued
            while await clean.fetchval("SELECT count(*) FROM callback_requests "
                                       "WHERE status = 'queued' AND attempts = 1") != 2:
                assert time.monotonic() < deadline, "the two rounds did not end in 30 s"
                await asyncio.sleep(0.01)
    # the lines naming either job by its call or its request (a line of another test's
    # job, on the session's loop, names neither and is not about them)
    ours = {call for call, _, _ in jobs} | {callback_id for _, callback_id, _ in jobs}
    about = [line for line in logged() if "call_id" in line
             and (line["call_id"] in ours or line.get("request_id") in ours)]
    assert {(line["call_id"], line["request_id"], line["merchant"]) for line in about} == jobs
    for call, callback_id, _ in jobs:
        said = [line["message"] for line in about if line["call_id"] == call]
        # one line each: the round's start with its flow and routes; the leg's CDR with
        # the round's outcome (no line of their own repeats the round)
        assert len([m for m in said if re.match(
            r"job claimed, round 1/\d+: flow \S+ \(configured file\), routes \[", m)]) == 1, said
        assert any(m.startswith("originated") for m in said), said
        ended = [m for m in said if m.startswith("CDR")]
        assert len(ended) == 1, said
        assert ended[0].endswith("; round 1: retry (customer_busy), retry in 30 s"), said
        assert not any(m.startswith("round") for m in said), said
        rounds = [m for m in said if m.startswith("job")] + [ended[0].partition("; ")[2]]
        assert not any(callback_id in m for m in rounds), "the ids are fields, not text"


async def test_a_round_is_counted_and_its_latency_observed_by_merchant(
        clean: asyncpg.Pool, pg_url: str, ids: Iterator[str]) -> None:
    """``cbgw_callback_latency_seconds``: from the caller's hang-up at the edge to the
    first originate; ``cbgw_callbacks_total``: the round's end, by outcome and reason."""
    latency = ("cbgw_callback_latency_seconds_count", "cbgw_callback_latency_seconds_sum")
    before = [prom.sample(name, merchant="acme") for name in latency]
    busy_before = prom.sample("cbgw_callbacks_total", merchant="acme", outcome="retry",
                              reason="customer_busy")
    hungup = datetime.now(UTC) - timedelta(seconds=2)
    req = IntakeRequest(next(ids), "acme", E164("819012345678"), None, hungup - timedelta(
        seconds=10), hungup, "early_media")
    await CallbackStore(clean, owner="edge").intake(str(uuid.uuid4()), req, ACME)
    async with running(clean, pg_url, "w1") as (_, fake):
        await wait_for(lambda: fake.named("originate"))
        _, channel_id, _, _ = fake.named("originate")[0]
        count, seconds = (prom.sample(name, merchant="acme") - b
                          for name, b in zip(latency, before, strict=True))
        assert count == 1 and 2.0 <= seconds < 10.0     # from hungup_at, not received_at
        fake.router.dispatch(ari.ChannelDestroyed(ari.Channel(id=channel_id), cause=17))
        await wait_for(lambda: prom.sample("cbgw_callbacks_total", merchant="acme",
                                           outcome="retry", reason="customer_busy")
                       == busy_before + 1)


async def test_heartbeat_reports_lost_leases_but_not_rounds_that_just_ended(
        clean: asyncpg.Pool, pg_url: str, ids: Iterator[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """The heartbeat lists the running jobs, then extends their leases: a job whose round
    ended in between (finished, or given back) is not a lost lease; a job another worker
    took, or whose row is gone, while it still runs, is."""
    worker, _ = make_worker(clean, pg_url, "w")
    store = worker.store
    for _ in range(4):
        await intake(clean, next(ids))
    jobs = [job.callback_id for job in await store.claim(4)]
    assert len(jobs) == 4
    running_forever = asyncio.Event()
    for callback_id in jobs:     # the jobs' tasks, still running as the heartbeat lists them
        worker._tasks[callback_id] = asyncio.create_task(running_forever.wait())
    completed, released, taken, gone = jobs
    try:
        assert await store.finish(completed, Finish("completed", Reason.ANSWERED, 1))
        await store.release(released, 5.0, "asterisk_unreachable")
        await clean.execute("UPDATE callback_requests SET lease_expires_at = now() "
                            "- interval '1 second' WHERE callback_id = $1", taken)
        other = CallbackStore(clean, owner="other")
        assert [job.callback_id for job in await other.claim(4)] == [taken]
        await clean.execute("DELETE FROM request_info WHERE callback_id = $1", gone)
        await clean.execute("DELETE FROM callback_requests WHERE callback_id = $1", gone)
        with caplog.at_level(logging.ERROR, logger="callback.worker"):
            assert await worker.heartbeat() == {taken, gone}
        logged = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
        assert sorted(logged) == sorted(f"lease on {cb} lost (another worker may rescue it)"
                                        for cb in (taken, gone))
    finally:
        running_forever.set()
        await asyncio.gather(*worker._tasks.values())


async def test_a_rescue_waiting_for_asterisk_stays_a_rescue_and_never_redials(
        clean: asyncpg.Pool, pg_url: str, ids: Iterator[str]) -> None:
    """Found by the consultation crash test: the restarted server rescued the job before
    its events websocket was up and gave it back as a plain queued job; the next claim
    took the answered, hung-up round as finished and dialled the customer again."""
    callback_id = await intake(clean, next(ids))
    stalled = CallbackStore(clean, owner="stalled", lease_s=1)
    await stalled.claim(1)
    leg = f"{callback_id}-01"
    await stalled.persist_leg(PersistAttempt(callback_id, 1, 1, leg, "customer",
                                             "carrier-b", "PJSIP/x@carrier-b"), "acme")
    await stalled.leg_result(leg, "answered", None)
    await asyncio.sleep(1.1)                              # the stalled worker's lease lapses
    worker, fake = make_worker(clean, pg_url, "restarted", sweep_s=0.2)
    worker.ari_ready.clear()                              # not connected yet
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(100):                              # claimed and given back
            if await clean.fetchval("SELECT reason FROM callback_requests") \
                    == "asterisk_unreachable":
                break
            await asyncio.sleep(0.02)
        # meanwhile its connect hung up the leg left in Stasis, from what it saw
        assert await worker.store.settle_leg(leg, answered=True, answered_at=None, cause=16)
        worker.ari_ready.set()
        for _ in range(500):
            if await clean.fetchval("SELECT status FROM callback_requests") == "completed":
                break
            await asyncio.sleep(0.02)
        assert await clean.fetchval("SELECT (status, reason)::text FROM callback_requests") \
            == "(completed,answered)"
        assert fake.named("originate") == []
    finally:
        await worker.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
