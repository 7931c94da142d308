"""Caps against real PostgreSQL: a reached cap refuses the next leg at once and alerts
(webhook + e-mail through a local SMTP server); only an operator reset re-enables it.
Also the global anomaly brake's alert, and the operator CLI."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email import message_from_bytes
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.smtp import Envelope, Session

from callback_server.config import StaticRoute
from callback_server.dialer_messages import Finish, PersistAttempt, Reason, RecordCdr, Route
from callback_server.guard import caps
from callback_server.guard.__main__ import main as guard_cli
from callback_server.guard.alerts import AlertSettings
from callback_server.guard.caps import CapLimits, CapSettings
from callback_server.guard.reasons import GuardRefused
from callback_server.guard.service import Admission, ClaimFacts, Guard, RoundEnd
from callback_server.guard.settings import GuardSettings
from callback_server.guard.testing import FakeClock
from callback_server.ivr_flow import load_named
from callback_server.legrecord import LegRecords
from callback_server.reconcile import LegSettler
from callback_server.routing import Routing
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.store.leg_end import LegEnd, StoredCdr
from callback_server.testing import FakeAri, FixedRater, merchant
from callback_server.worker import RouteSource, Worker
from shared import ari
from shared.config import CarrierQuality
from shared.db import create_pool
from shared.money import Money
from shared.phone import E164
from tests import prom
from tests.harness.smtp import smtp_server
from tests.integration import callback_db
from tests.integration.test_callback_worker import wait_for

pytestmark = pytest.mark.integration

ACME = merchant("acme")
T0 = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


async def round_ended(guard: Guard, **end: Any) -> None:
    """A round's end recorded in a transaction of its own (a job's finish carries it in its
    own statement)."""
    async with guard.pool.acquire() as conn, conn.transaction():
        await guard.record_round(conn, RoundEnd(**end))


async def admitted_in(conn: asyncpg.Connection, guard: Guard, carrier_id: str,
                      callback_id: str, merchant_id: str) -> Admission:
    """A leg's admission alone, in the caller's open transaction on ``conn`` (the statement
    that stores a leg carries it with the leg's row): the slots it takes stay held until
    that transaction ends."""
    admission = guard.leg_admission(carrier_id, merchant_id, 1)
    row = await conn.fetchrow(f"WITH held AS (SELECT 1), {admission.ctes} "
                              "SELECT * FROM admitted", *admission.args)
    return await guard.admitted(admission, row, callback_id, merchant_id)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        yield inbox, port


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer hook-token"
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app)
    await server.start_server()
    yield received, str(server.make_url("/hook"))
    await server.close()


@pytest.fixture
async def closing() -> AsyncIterator[list[Guard]]:
    """Guards made by a test; their alert senders (HTTP sessions) are closed after it."""
    made: list[Guard] = []
    yield made
    for guard in made:
        await guard.alerter.close()


pool, clean = callback_db.fixtures([ACME])


def settings(smtp_port: int, hook_url: str) -> GuardSettings:
    return GuardSettings(
        caps=CapSettings(currency="USD", global_limits=CapLimits(channels=10, cps=100,
                                                                 spend_daily=Decimal("1.00")),
                         trunk_default=CapLimits(channels=1, cps=100, spend_daily=None)),
        alerts=AlertSettings(webhook_url=hook_url, webhook_token="hook-token",
                             smtp_host="127.0.0.1", smtp_port=smtp_port,
                             mail_to=("noc@example.net",)))


async def claimed_job(store: CallbackStore, n: int, number: str) -> str:
    req = IntakeRequest(f"cap-{n}", "acme", E164(number), None, T0, T0, None)
    answer = (await store.intake(str(uuid.uuid4()), req, ACME))[1]
    assert answer["status"] == "queued", answer
    jobs = await store.claim(10)
    assert [j.callback_id for j in jobs] == [answer["callback_id"]]
    return str(answer["callback_id"])


async def claimed_again(store: CallbackStore, callback_id: str) -> ClaimFacts:
    """The job given back and claimed again: what its claim read for the guard."""
    await store.release(callback_id, 0, "test")
    jobs = await store.claim(10)
    assert [j.callback_id for j in jobs] == [callback_id]
    assert jobs[0].guard is not None
    return jobs[0].guard


def routes_via(carrier: str) -> Routing:
    return Routing(None, (StaticRoute(carrier, f"PJSIP/{{digits}}@{carrier}"),))


def guarded_worker(store: CallbackStore, pg_url: str, guard: Guard,
                   routes: RouteSource) -> tuple[Worker, FakeAri]:
    """A worker of ``store`` screening with ``guard``, on a fake Asterisk."""
    fake = FakeAri()
    ready = asyncio.Event()
    ready.set()
    return Worker(store=store, db_url=pg_url, merchants={"acme": ACME},
                  flows={"order": load_named("order")}, routes=routes, client=fake,
                  router=fake.router, rater=FixedRater(), ari_ready=ready,
                  guard=guard), fake


async def a_round_dials_nothing(pool: asyncpg.Pool, w: Worker, fake: FakeAri,
                                 callback_id: str, reason: str) -> None:
    """The worker claims the job and dials nothing: it is queued again uncounted."""
    assert await w.claim_and_start() == 1
    await asyncio.wait(list(w._tasks.values()), timeout=5)
    assert fake.named("originate") == []
    row = await pool.fetchrow("SELECT status, reason, attempts FROM callback_requests "
                              "WHERE callback_id = $1", callback_id)
    assert dict(row) == {"status": "queued", "reason": reason, "attempts": 0}


def leg(callback_id: str, carrier: str) -> PersistAttempt:
    return PersistAttempt(callback_id, 1, 1, f"{callback_id}-01", "customer", carrier,
                          f"PJSIP/x@{carrier}")


def cdr(callback_id: str, carrier: str) -> RecordCdr:
    return RecordCdr(call_id=f"{callback_id}-01", callback_id=callback_id, leg="customer",
                     destination="+819012345678", carrier_id=carrier, started_at=T0,
                     answered_at=T0, ended_at=T0 + timedelta(minutes=5),
                     duration_s=Decimal("300"), hangup_cause=16, disposition="answered")


async def test_channel_cap_refuses_at_once_and_alerts(
        clean: asyncpg.Pool, smtp: tuple[Inbox, int],
        webhook: tuple[list[dict[str, Any]], str], closing: list[Guard]) -> None:
    inbox, port = smtp
    hooks, url = webhook
    guard = Guard(clean, settings(port, url))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    first = await claimed_job(store, 1, "819011110001")
    await store.persist_leg(leg(first, "carrier-a"), "acme")       # 1 of 1 channel
    second = await claimed_job(store, 2, "819011110002")
    started = time.perf_counter()
    with pytest.raises(GuardRefused) as refused:
        await store.persist_leg(leg(second, "carrier-a"), "acme")
    assert time.perf_counter() - started < 5.0     # at once: no retry or backoff first
    assert refused.value.verdict.reason == "cap_trunk_channels"
    assert refused.value.retry_in_s == 30
    assert await clean.fetchval("SELECT count(*) FROM callback_attempts "
                                "WHERE callback_id = $1", second) == 0
    await store.persist_leg(leg(second, "carrier-b"), "acme")      # another trunk is free
    await guard.alerter.drain()
    assert [h["kind"] for h in hooks] == ["cap_reached"]
    assert inbox.messages and "cap_reached" in inbox.messages[-1]["Subject"]
    row = await clean.fetchrow("SELECT stage, reason FROM guard_refusals")
    assert dict(row) == {"stage": "dial", "reason": "cap_trunk_channels"}
    # a throttle, not a trip: the channel frees up, the trunk is usable again
    await store.leg_result(f"{first}-01", "ended", 16)
    third = await claimed_job(store, 3, "819011110003")
    await store.persist_leg(leg(third, "carrier-a"), "acme")


async def test_spend_cap_trips_and_only_an_operator_reset_reenables(
        clean: asyncpg.Pool, smtp: tuple[Inbox, int],
        webhook: tuple[list[dict[str, Any]], str], pg_url: str,
        closing: list[Guard]) -> None:
    inbox, port = smtp
    hooks, url = webhook
    guard = Guard(clean, settings(port, url))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    before = len(inbox.messages)
    a = await claimed_job(store, 10, "819022220001")
    await store.persist_leg(leg(a, "carrier-a"), "acme")
    await store.record_cdr(cdr(a, "carrier-a"), edge_call_id="cap-10", merchant_id="acme",
                           billed_s=300, carrier_cost=Money.of("0.70", "USD"), direct_cost=None)
    await store.leg_result(f"{a}-01", "ended", 16)
    b = await claimed_job(store, 11, "819022220002")
    await store.persist_leg(leg(b, "carrier-b"), "acme")           # 0.70 of 1.00: fine
    started = time.perf_counter()
    await store.record_cdr(cdr(b, "carrier-b"), edge_call_id="cap-11", merchant_id="acme",
                           billed_s=300, carrier_cost=Money.of("0.35", "USD"), direct_cost=None)
    c = await claimed_job(store, 12, "819022220003")
    with pytest.raises(GuardRefused) as refused:                    # 1.05: tripped
        await store.persist_leg(leg(c, "carrier-b"), "acme")
    assert time.perf_counter() - started < 5.0     # at once: no retry or backoff first
    assert refused.value.verdict.reason == "cap_spend_daily"
    await guard.alerter.drain()
    assert "cap_tripped" in [h["kind"] for h in hooks]
    assert any("cap_tripped" in m["Subject"] for m in inbox.messages[before:])
    assert await clean.fetchval("SELECT count(*) FROM guard_alerts "
                                "WHERE kind = 'cap_tripped'") == 1

    # The worker leaves jobs queued (uncounted) while every trunk is capped.
    await store.release(c, 0, "test")
    w, fake = guarded_worker(store, pg_url, guard, routes_via("carrier-b"))
    await a_round_dials_nothing(clean, w, fake, c, "cap_spend_daily")

    # Still refused on any trunk until an operator resets the cap.
    await clean.execute("UPDATE callback_requests SET next_attempt_at = now() "
                        "WHERE callback_id = $1", c)
    assert [j.callback_id for j in await store.claim(10)] == [c]
    with pytest.raises(GuardRefused):
        await store.persist_leg(leg(c, "carrier-a"), "acme")
    assert await guard.reset_caps("global", "spend_daily", "noc") == 1
    await store.persist_leg(leg(c, "carrier-a"), "acme")           # re-enabled


async def test_brake_alerts_when_new_numbers_stay_unconfirmed(
        clean: asyncpg.Pool, smtp: tuple[Inbox, int],
        webhook: tuple[list[dict[str, Any]], str], closing: list[Guard]) -> None:
    _, port = smtp
    hooks, url = webhook
    clock = FakeClock(T0)
    s = replace(settings(port, url), brake=replace(GuardSettings().brake, threshold=3))
    guard = Guard(clean, s, clock=clock)
    closing.append(guard)
    for i in range(4):
        await round_ended(guard, callback_id=f"cb-b{i}", attempt_no=1,
                          number=E164(f"81903333000{i}"), merchant_id="acme",
                          rang=True, confirmed=False)
        clock.advance(10)
    await guard.alerter.drain()
    assert [h["kind"] for h in hooks] == ["brake_engaged"]
    store = CallbackStore(clean, owner="w", guard=guard)
    req = IntakeRequest("brake-1", "acme", E164("819044440000"), None, T0, T0, None)
    answer = (await store.intake(str(uuid.uuid4()), req, ACME))[1]
    assert answer["reason"] == "brake_new_numbers"
    await clean.execute("INSERT INTO guard_lists (number, list, created_at) "
                        "VALUES ('+819044440001', 'allow', now())")
    req = IntakeRequest("brake-2", "acme", E164("819044440001"), None, T0, T0, None)
    assert (await store.intake(str(uuid.uuid4()), req, ACME))[1]["status"] == "queued"
    clock.advance(600)                                              # the window slides past
    req = IntakeRequest("brake-3", "acme", E164("819044440000"), None, T0, T0, None)
    assert (await store.intake(str(uuid.uuid4()), req, ACME))[1]["status"] == "queued"


async def test_an_alert_raised_by_two_processes_goes_out_once_per_repeat_window(
        clean: asyncpg.Pool, smtp: tuple[Inbox, int],
        webhook: tuple[list[dict[str, Any]], str], closing: list[Guard]) -> None:
    """Two server processes (a full one and an intake process, or two hosts) on one
    database each see the brake engage: one webhook and one mail, until the window
    has passed; the other process counts it as sent elsewhere."""
    inbox, port = smtp
    hooks, url = webhook
    clock = FakeClock(T0)
    s = replace(settings(port, url), brake=replace(GuardSettings().brake, threshold=3))
    one, two = Guard(clean, s, clock=clock), Guard(clean, s, clock=clock)
    closing.extend([one, two])
    mails = len(inbox.messages)  # the SMTP server serves the whole module
    sent_before = {how: prom.sample("cbgw_guard_alerts_total", kind="brake_engaged", sent=how)
                   for how in ("yes", "elsewhere")}

    async def engage(prefix: str) -> None:
        for i in range(4):
            for guard in (one, two):  # each process sees the rounds of the other
                await round_ended(guard, callback_id=f"cb-{prefix}{i}-{id(guard)}",
                                  attempt_no=1, number=E164(f"81903333{prefix}{i}"),
                                  merchant_id="acme", rang=True, confirmed=False)
            clock.advance(10)
        await asyncio.gather(one.alerter.drain(), two.alerter.drain())

    await engage("10")
    assert [h["kind"] for h in hooks] == ["brake_engaged"]
    assert len(inbox.messages) == mails + 1
    sent = {how: prom.sample("cbgw_guard_alerts_total", kind="brake_engaged", sent=how)
            - before for how, before in sent_before.items()}
    assert sent == {"yes": 1, "elsewhere": 1}  # each raised it; one sent it, one found it sent
    assert await clean.fetchval("SELECT count(*) FROM guard_alerts") == 1
    clock.advance(s.alerts.repeat_s)     # a new window: it goes out again, once
    await engage("20")
    assert [h["kind"] for h in hooks] == ["brake_engaged"] * 2
    assert len(inbox.messages) == mails + 2


def test_operator_cli_manages_lists_and_caps(pg_url: str, pki_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "deploy/callback.example.toml").read_text().replace("../var/pki",
                                                                       str(pki_dir))
    config = tmp_path / "callback.toml"
    config.write_text(text)
    monkeypatch.setenv("CALLBACK__DATABASE__URL", pg_url)
    base = ["--config", str(config)]

    def run(*args: str) -> Any:
        assert guard_cli([*base, *args]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("lists", "add", "block", "+819055550000", "--reason", "cli test",
               "--by", "noc")["ok"]
    assert [e["number"] for e in run("lists", "show", "block")["entries"]] == ["+819055550000"]
    assert run("lists", "remove", "block", "819055550000")["ok"]
    assert run("caps", "reset", "--by", "noc")["reset"] == 0
    assert "trips" in run("status")
    assert isinstance(run("refusals", "--limit", "5")["refusals"], list)


def slot_guard(pool: asyncpg.Pool, trunk: CapLimits, site: CapLimits | None = None) -> Guard:
    """A guard with only channel and CPS caps (no alert destinations)."""
    return Guard(pool, GuardSettings(caps=CapSettings(
        global_limits=site or CapLimits(), trunk_default=trunk)))


LIVE_ON_A = """SELECT (SELECT count(*) FROM callback_attempts WHERE leg = 'customer'
                         AND carrier_id = 'carrier-a'
                         AND status IN ('dialing', 'originated', 'answered')) AS legs,
                      (SELECT sum(live) FROM guard_live WHERE scope = 'trunk:carrier-a')
                          AS slots"""


async def race(store: CallbackStore, legs: list[tuple[str, str]], live: str
               ) -> list[tuple[int, int]]:
    """Each (job, carrier) leg retries until admitted, rings, is answered and ends;
    meanwhile ``live`` (legs, slots) is sampled: the samples."""
    async def call(callback_id: str, carrier: str) -> None:
        while True:
            try:
                await store.persist_leg(leg(callback_id, carrier), "acme")
                break
            except GuardRefused:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.03)
        await store.leg_result(f"{callback_id}-01", "answered", None)
        await asyncio.sleep(0.03)
        await store.leg_result(f"{callback_id}-01", "ended", 16)

    calls = [asyncio.create_task(call(cb, carrier)) for cb, carrier in legs]
    samples: list[tuple[int, int]] = []
    while not all(c.done() for c in calls):
        row = await store.pool.fetchrow(live)
        samples.append((int(row["legs"]), int(row["slots"] or 0)))
        await asyncio.sleep(0.002)
    await asyncio.gather(*calls)
    return samples


async def test_concurrent_legs_never_exceed_the_channel_cap_and_all_get_through(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    """Many legs race for 3 channels of one trunk: at every sample at most 3 are live
    (the counter always equals the live legs), and every leg is admitted as slots free."""
    cap = 3
    guard = slot_guard(clean, CapLimits(channels=cap))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    jobs = [await claimed_job(store, 100 + i, f"81905555{i:04d}") for i in range(24)]
    samples = await race(store, [(cb, "carrier-a") for cb in jobs], LIVE_ON_A)
    assert all(legs <= cap for legs, _ in samples), max(samples)
    assert all(legs == slots for legs, slots in samples), samples
    assert max(legs for legs, _ in samples) == cap         # the cap was used to the full
    assert await clean.fetchval("SELECT count(*) FROM callback_attempts") == len(jobs)
    assert dict(await clean.fetchrow(LIVE_ON_A)) == {"legs": 0, "slots": 0}


async def test_a_leg_being_admitted_on_one_trunk_does_not_hold_up_another_trunk(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    guard = slot_guard(clean, CapLimits(channels=5, cps=50))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    first = await claimed_job(store, 120, "819066660001")
    second = await claimed_job(store, 121, "819066660002")
    async with clean.acquire() as conn, conn.transaction():   # a leg's transaction, open
        admitted = await admitted_in(conn, guard, "carrier-a", first, "acme")
        assert (admitted.scopes, admitted.refused) == (("trunk:carrier-a",), None)
        await asyncio.wait_for(store.persist_leg(leg(second, "carrier-b"), "acme"), 10)


LIVE_LEGS = """SELECT (SELECT count(*) FROM callback_attempts WHERE leg = 'customer'
                         AND status IN ('dialing', 'originated', 'answered')) AS legs,
                      (SELECT sum(live) FROM guard_live WHERE scope = 'global') AS slots"""


async def test_concurrent_legs_of_many_trunks_never_exceed_the_site_channel_cap(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    """Legs on six trunks race for the site's 5 channels (split over counter shards):
    at every sample at most 5 are live and the shards add up to the live legs."""
    cap = 5
    guard = slot_guard(clean, CapLimits(), site=CapLimits(channels=cap))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    jobs = [await claimed_job(store, 200 + i, f"81903030{i:04d}") for i in range(30)]
    samples = await race(store, [(cb, f"carrier-{n % 6}") for n, cb in enumerate(jobs)],
                         LIVE_LEGS)
    assert all(legs <= cap for legs, _ in samples), max(samples)
    assert all(legs == slots for legs, slots in samples), samples
    assert max(legs for legs, _ in samples) == cap
    assert await clean.fetchval("SELECT count(*) FROM callback_attempts") == len(jobs)
    assert dict(await clean.fetchrow(LIVE_LEGS)) == {"legs": 0, "slots": 0}
    assert await clean.fetchval("SELECT max(shard) FROM guard_live") == cap - 1


async def test_legs_under_the_site_cap_do_not_wait_for_each_other(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    """Legs of other trunks and merchants are admitted under the site's channel and CPS
    caps while earlier legs' transactions are still open (each holds one shard)."""
    guard = Guard(clean, GuardSettings(caps=CapSettings(
        global_limits=CapLimits(channels=50, cps=50), trunk_default=CapLimits())))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    jobs = [await claimed_job(store, 220 + i, f"81904040000{i}") for i in range(5)]
    await store.persist_leg(leg(jobs.pop(), "carrier-z"), "acme")  # creates the shard rows
    async with clean.acquire() as a, a.transaction(), clean.acquire() as b, b.transaction():
        first = await admitted_in(a, guard, "carrier-a", jobs[0], "acme")
        second = await asyncio.wait_for(
            admitted_in(b, guard, "carrier-b", jobs[1], "other"), 10)
        assert first.scopes == second.scopes == ("global",)
        assert first.shards != second.shards
        for n, callback_id in enumerate(jobs[2:]):
            await asyncio.wait_for(
                store.persist_leg(leg(callback_id, f"carrier-{n}"), "acme"), 10)
        assert await clean.fetchval("SELECT count(*) FROM callback_attempts") == 3
        assert await clean.fetchval("SELECT sum(live) FROM guard_live") == 3


async def test_uncapped_scopes_take_no_lock_and_no_counter(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    guard = slot_guard(clean, CapLimits())
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    first = await claimed_job(store, 130, "819077770001")
    async with clean.acquire() as conn, conn.transaction():
        assert await admitted_in(conn, guard, "carrier-a", first, "acme") == Admission((), None)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        assert await clean.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1 AND "
                                    "locktype = 'advisory'", pid) == 0
    await store.persist_leg(leg(first, "carrier-a"), "acme")
    assert await clean.fetchval("SELECT count(*) FROM guard_live") == 0
    assert await clean.fetchval("SELECT count(*) FROM guard_cps") == 0
    assert await clean.fetchval("SELECT cap_scopes FROM callback_attempts") == []


async def test_a_leg_settled_after_a_crash_gives_its_slot_back(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    """The worker died with its leg up: the slot stays taken until reconcile settles
    the leg (from Asterisk's record, here none), then the next leg gets it."""
    guard = slot_guard(clean, CapLimits(channels=1), site=CapLimits(channels=10))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    crashed = await claimed_job(store, 140, "819088880001")
    await store.persist_leg(leg(crashed, "carrier-a"), "acme")
    await store.leg_result(f"{crashed}-01", "answered", None)
    waiting = await claimed_job(store, 141, "819088880002")
    with pytest.raises(GuardRefused):
        await store.persist_leg(leg(waiting, "carrier-a"), "acme")
    assert await clean.fetchval("SELECT cap_scopes FROM callback_attempts") == [
        "global", "trunk:carrier-a"]
    stranded = await store.leg(f"{crashed}-01")
    assert stranded is not None
    settler = LegSettler(store, FixedRater(), LegRecords(FakeAri()),  # type: ignore[arg-type]
                         {"acme": ACME})
    await settler.settle(stranded, None)
    assert await clean.fetchval("SELECT sum(live) FROM guard_live") == 0
    await store.persist_leg(leg(waiting, "carrier-a"), "acme")


async def test_cps_cap_is_a_sliding_second_per_scope(clean: asyncpg.Pool,
                                                     closing: list[Guard]) -> None:
    guard = slot_guard(clean, CapLimits(cps=2))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    a, b = [await claimed_job(store, 150 + i, f"81909999000{i}") for i in range(2)]
    # two legs admitted "just now", one in each of the cap's two shards (stamped ahead, so
    # the test does not race the clock, and so far ahead that pacing would wait too long)
    await clean.execute("INSERT INTO guard_cps (scope, shard, recent) SELECT "
                        "'trunk:carrier-a', j, ARRAY[clock_timestamp() + interval '1 minute']"
                        " FROM generate_series(0, 1) j")
    with pytest.raises(GuardRefused) as refused:
        await store.persist_leg(leg(a, "carrier-a"), "acme")
    assert refused.value.verdict.reason == "cap_trunk_cps"
    assert "2 calls in the last second" in refused.value.verdict.detail
    await store.persist_leg(leg(a, "carrier-b"), "acme")        # another trunk's second
    await clean.execute("UPDATE guard_cps SET recent = ARRAY[clock_timestamp() - interval "
                        "'2 seconds'] WHERE scope = 'trunk:carrier-a'")
    await store.persist_leg(leg(b, "carrier-a"), "acme")        # the window slid past
    assert await clean.fetchval("SELECT sum(cardinality(recent)) FROM guard_cps "
                                "WHERE scope = 'trunk:carrier-a'") == 2   # one pruned


async def test_a_merchant_channel_cap_counts_its_legs_on_every_trunk(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    guard = Guard(clean, GuardSettings(caps=CapSettings(
        global_limits=CapLimits(), trunk_default=CapLimits(),
        merchants={"acme": CapLimits(channels=2)})))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    first, second, third = [await claimed_job(store, 160 + i, f"81901010000{i}")
                            for i in range(3)]
    await store.persist_leg(leg(first, "carrier-a"), "acme")
    await store.persist_leg(leg(second, "carrier-b"), "acme")
    with pytest.raises(GuardRefused) as refused:
        await store.persist_leg(leg(third, "carrier-c"), "acme")
    assert refused.value.verdict.reason == "cap_merchant_channels"
    assert refused.value.verdict.detail == "merchant:acme: 2 of 2 channels"
    keep, capped = await guard.usable_routes([StaticRoute("carrier-c", "PJSIP/x")], third,
                                             "acme", await claimed_again(store, third))
    assert keep == [] and capped is not None and capped.reason == "cap_merchant_channels"
    assert await clean.fetchval("SELECT array_agg(DISTINCT scope) FROM guard_live") == [
        "merchant:acme"]                                  # uncapped scopes: no counters
    await store.leg_result(f"{first}-01", "failed", 17)
    await store.persist_leg(leg(third, "carrier-c"), "acme")


async def test_a_merchant_spend_cap_trips_on_its_cdrs(clean: asyncpg.Pool,
                                                      closing: list[Guard]) -> None:
    guard = Guard(clean, GuardSettings(caps=CapSettings(
        currency="USD", global_limits=CapLimits(), trunk_default=CapLimits(),
        merchants={"acme": CapLimits(spend_daily=Decimal("0.50"))})))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    spent, refused_job = [await claimed_job(store, 170 + i, f"81902020000{i}")
                          for i in range(2)]
    await store.persist_leg(leg(spent, "carrier-a"), "acme")
    await store.record_cdr(cdr(spent, "carrier-a"), edge_call_id="cap-170", merchant_id="acme",
                           billed_s=300, carrier_cost=Money.of("0.70", "USD"), direct_cost=None)
    with pytest.raises(GuardRefused) as refused:
        await store.persist_leg(leg(refused_job, "carrier-b"), "acme")
    assert refused.value.verdict.reason == "cap_merchant_spend_daily"
    trips = await clean.fetch("SELECT scope, kind FROM guard_trips WHERE reset_at IS NULL")
    assert [tuple(t) for t in trips] == [("merchant:acme", "spend_daily")]
    assert await guard.reset_caps("merchant:acme", "spend_daily", "noc") == 1
    await store.persist_leg(leg(refused_job, "carrier-b"), "acme")


@pytest.mark.parametrize("leg_kind", ["transfer", "advisor"])
async def test_a_transfer_or_advisor_leg_takes_a_channel_of_its_carrier_like_the_customers(
        clean: asyncpg.Pool, smtp: tuple[Inbox, int],
        webhook: tuple[list[dict[str, Any]], str], closing: list[Guard], leg_kind: str) -> None:
    """A flow's transfer leg and an advisor's PSTN leg (their phone, a click-to-call's or
    a consult transfer's) count in their carrier's, the merchant's and the site's caps
    like a customer leg; an advisor's softphone through the edge trunk takes none."""
    _, port = smtp
    guard = Guard(clean, settings(port, webhook[1]))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    job = await claimed_job(store, 30, "819033330001")
    await store.persist_leg(leg(job, "carrier-a"), "acme")         # 1 of 1 channel
    other = PersistAttempt(job, 1, 2, f"{job}-02", leg_kind, "carrier-a",
                           "PJSIP/+81312345678@carrier-a", "+81312345678")
    with pytest.raises(GuardRefused) as refused:
        await store.persist_leg(other, "acme")
    assert refused.value.verdict.reason == "cap_trunk_channels"
    await store.persist_leg(replace(other, carrier_id="carrier-b"), "acme")
    sip = PersistAttempt(job, 1, 3, f"{job}-03", "advisor", "edge-trunk",
                         "PJSIP/acme.adv@edge-trunk")
    await store.persist_leg(sip, "acme")
    rows = await clean.fetch("SELECT channel_id, cap_scopes FROM callback_attempts "
                             "ORDER BY channel_id")
    assert [(r["channel_id"], r["cap_scopes"]) for r in rows] == [
        (f"{job}-01", ["global", "trunk:carrier-a"]),
        (f"{job}-02", ["global", "trunk:carrier-b"]), (f"{job}-03", [])]
    status = await guard.status()
    assert status["channels"] == {"trunk:carrier-a": 1, "trunk:carrier-b": 1, "global": 2}


@pytest.mark.parametrize(("leg_kind", "number", "reason"), [
    ("advisor", "+81990123456", "destination_premium"),     # a consult transfer's number
    ("advisor", "+88213012345", "destination_foreign"),     # an advisor's "phone" abroad
    ("transfer", "+819055551234", "number_blocked"),        # a flow's transfer
])
async def test_a_leg_to_a_number_the_guard_refuses_is_never_dialled_and_alerts(
        clean: asyncpg.Pool, smtp: tuple[Inbox, int],
        webhook: tuple[list[dict[str, Any]], str], closing: list[Guard],
        leg_kind: str, number: str, reason: str) -> None:
    """At its originate a leg to another number than the customer's is screened like the
    customer's (lists, policy, lock): refused, it has no row (never dialled), the refusal
    is stored with its number and the guard's alert goes out."""
    hooks, url = webhook
    guard = Guard(clean, settings(smtp[1], url))
    closing.append(guard)
    await clean.execute("INSERT INTO guard_lists (number, list, reason, created_at) "
                        "VALUES ('+819055551234', 'block', 'fraud', now())")
    store = CallbackStore(clean, owner="w", guard=guard)
    job = await claimed_job(store, 50, "819055550001")
    attempt = PersistAttempt(job, 1, 2, f"{job}-02", leg_kind, "carrier-a",
                             f"PJSIP/{number}@carrier-a", number)
    with pytest.raises(GuardRefused) as refused:
        await store.persist_leg(attempt, "acme")
    assert refused.value.verdict.reason == reason and refused.value.retry_in_s is None
    assert await clean.fetchval("SELECT count(*) FROM callback_attempts") == 0
    assert await clean.fetchval("SELECT sum(live) FROM guard_live") is None
    row = await clean.fetchrow("SELECT stage, reason, number, callback_id FROM guard_refusals")
    assert dict(row) == {"stage": "dial", "reason": reason, "number": number,
                         "callback_id": job}
    for _ in range(100):
        if hooks:
            break
        await asyncio.sleep(0.05)
    assert [(h["kind"], h["details"]["reason"]) for h in hooks] == [
        ("destination_refused", reason)]


def paced_guard(pool: asyncpg.Pool, cps: int, max_wait_s: float) -> Guard:
    """A guard whose only cap is ``cps`` legs a second per trunk, pacing up to
    ``max_wait_s``."""
    return Guard(pool, GuardSettings(caps=CapSettings(
        global_limits=CapLimits(), trunk_default=CapLimits(cps=cps),
        cps_max_wait_s=max_wait_s)))


async def test_concurrent_legs_over_a_cps_cap_are_paced_never_more_than_n_a_second(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    """Nine legs race for a trunk's 3 calls a second (three counter shards): none is
    refused, each waits for the sliding second on the same route, and the admission
    times stored on the legs never put more than 3 in any second."""
    cap, legs = 3, 9
    guard = paced_guard(clean, cap, 10.0)
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    jobs = [await claimed_job(store, 300 + i, f"81906060{i:04d}") for i in range(legs)]
    paced_before = prom.sample("cbgw_guard_paced_total", merchant="acme")
    waits_before = prom.sample("cbgw_guard_pace_wait_seconds_count", merchant="acme")
    started = time.monotonic()
    await asyncio.gather(*(store.persist_leg(leg(cb, "carrier-a"), "acme") for cb in jobs))
    assert time.monotonic() - started >= legs // cap - 1     # three windows: 2 s at least
    rows = await clean.fetch("SELECT admitted_at, carrier_id FROM callback_attempts "
                             "ORDER BY admitted_at")
    assert len(rows) == legs and {r["carrier_id"] for r in rows} == {"carrier-a"}
    times = [r["admitted_at"] for r in rows]
    assert all(later - first >= timedelta(seconds=1)
               for first, later in zip(times, times[cap:], strict=False)), times
    assert await clean.fetchval("SELECT count(*) FROM guard_refusals") == 0
    paced = prom.sample("cbgw_guard_paced_total", merchant="acme") - paced_before
    assert legs - cap <= paced < legs
    assert prom.sample("cbgw_guard_pace_wait_seconds_count", merchant="acme") \
        - waits_before == paced


async def test_a_paced_leg_waits_holding_no_connection_and_keeps_its_route(
        clean: asyncpg.Pool, pg_url: str, closing: list[Guard]) -> None:
    """A leg over a CPS cap of 1 waits for the admission in the window to leave it: its
    one-connection pool serves another query meanwhile, the route choice keeps the trunk,
    and it is admitted a second after that admission. Past the bound it is refused."""
    guard = paced_guard(clean, 1, 3.0)
    closing.append(guard)
    single = await create_pool(pg_url, min_size=1, max_size=1)
    try:
        store = CallbackStore(single, owner="w", guard=guard)
        job = await claimed_job(store, 320, "819070700001")
        # admitted "just now", stamped a second ahead: the window frees in 2 s, within 3 s
        stamp = await clean.fetchval(
            "INSERT INTO guard_cps (scope, shard, recent) VALUES ('trunk:carrier-a', 0, "
            "ARRAY[clock_timestamp() + interval '1 second']) RETURNING recent[1]")
        keep, capped = await guard.usable_routes([StaticRoute("carrier-a", "PJSIP/x")], job,
                                                 "acme", await claimed_again(store, job))
        assert (keep, capped) == ([0], None)               # paced there, not dropped
        placing = asyncio.create_task(store.persist_leg(leg(job, "carrier-a"), "acme"))
        await asyncio.sleep(0.2)
        assert await asyncio.wait_for(single.fetchval("SELECT 1"), 0.4) == 1
        assert not placing.done()
        await asyncio.wait_for(placing, 10)
        admitted = await clean.fetchval("SELECT admitted_at FROM callback_attempts")
        assert admitted - stamp >= timedelta(seconds=1)
    finally:
        await single.close()
    late = await claimed_job(store := CallbackStore(clean, owner="w", guard=guard), 321,
                             "819070700002")
    await clean.execute("UPDATE guard_cps SET recent = ARRAY[clock_timestamp() + interval "
                        "'10 seconds']")                   # frees in 11 s: past 3 s
    started = time.monotonic()
    with pytest.raises(GuardRefused) as refused:
        await store.persist_leg(leg(late, "carrier-a"), "acme")
    assert refused.value.verdict.reason == "cap_trunk_cps"
    assert time.monotonic() - started < 2                  # refused at once, not after 3 s


async def test_concurrent_cdrs_of_one_merchant_and_trunk_do_not_wait_for_each_other(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    """Two CDR transactions on the same trunk and merchant both add their cost to the
    three spend scopes before either commits (each in a shard row the other does not
    hold); committed, the spend is their sum in every scope. Two costs that cross a cap
    together, neither seeing the other's, still stop the next leg: its admission reads
    the committed sum and trips the cap."""
    cap = CapLimits(spend_daily=Decimal("2.00"))
    guard = Guard(clean, GuardSettings(caps=CapSettings(
        currency="USD", global_limits=cap, trunk_default=cap, merchants={"acme": cap})))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    async with clean.acquire() as conn, conn.transaction():      # today's first shards
        await guard.add_spend(conn, "carrier-a", "acme", Money.of("0.10", "USD"))

    async def two_at_once(first: str, second: str) -> None:
        async with clean.acquire() as a, a.transaction(), \
                clean.acquire() as b, b.transaction():
            await guard.add_spend(a, "carrier-a", "acme", Money.of(first, "USD"))
            await asyncio.wait_for(
                guard.add_spend(b, "carrier-a", "acme", Money.of(second, "USD")), 10)

    await two_at_once("0.30", "0.40")
    spent = (await guard.status())["spend_today"]
    assert {scope: Decimal(v) for scope, v in spent.items()} == dict.fromkeys(
        ("global", "merchant:acme", "trunk:carrier-a"), Decimal("0.80"))
    await two_at_once("0.60", "0.60")                             # 2.00: the cap
    assert await clean.fetchval("SELECT count(*) FROM guard_trips") == 0
    job = await claimed_job(store, 260, "819060600001")
    with pytest.raises(GuardRefused) as refused:
        await store.persist_leg(leg(job, "carrier-a"), "acme")
    assert refused.value.verdict.reason == "cap_spend_daily"
    assert await clean.fetchval("SELECT count(*) FROM guard_trips WHERE kind = "
                                "'spend_daily' AND reset_at IS NULL") == 1
    assert await guard.reset_caps(None, "spend_daily", "noc") >= 1
    assert {Decimal(v) for v in (await guard.status())["spend_today"].values()} \
        == {Decimal(0)}


class TakenMeanwhile:
    """The routes, chosen while another worker's leg takes the trunk's last channel: after
    the claim read the caps (its route choice keeps the trunk), before the leg's
    admission (which refuses it)."""

    def __init__(self, routes: Routing, take: Callable[[], Awaitable[None]]) -> None:
        self.inner = routes
        self.take: Callable[[], Awaitable[None]] | None = take

    async def routes(self, number: E164, at: datetime, max_rate: Money | None = None,
                     quality: CarrierQuality | None = None) -> tuple[Route, ...]:
        if self.take is not None:
            await self.take()
            self.take = None
        return await self.inner.routes(number, at, max_rate, quality)


async def test_a_round_refused_at_every_admission_is_no_round_and_the_real_one_is_recorded(
        clean: asyncpg.Pool, pg_url: str, closing: list[Guard]) -> None:
    """Every leg of a round refused at admission (a cap taken after the claim): the job
    is queued again uncounted, under the same attempt number, and the guard records no
    round for it (only the refusal, stage ``dial``). The round that follows once the
    channel is free rings unconfirmed: that is the round the guard holds, with its facts,
    and it counts towards the number's lock."""
    guard = slot_guard(clean, CapLimits(channels=1))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    other = await claimed_job(store, 300, "819070700001")
    req = IntakeRequest("cap-301", "acme", E164("819070700002"), None, T0, T0, None)
    job = str((await store.intake(str(uuid.uuid4()), req, ACME))[1]["callback_id"])

    async def take() -> None:
        await store.persist_leg(leg(other, "carrier-a"), "acme")

    w, fake = guarded_worker(store, pg_url, guard,
                             TakenMeanwhile(routes_via("carrier-a"), take))
    await a_round_dials_nothing(clean, w, fake, job, "cap_trunk_channels")
    assert [dict(r) for r in await clean.fetch(
        "SELECT stage, reason, callback_id FROM guard_refusals")] == [
        {"stage": "dial", "reason": "cap_trunk_channels", "callback_id": job}]
    assert await clean.fetchval("SELECT count(*) FROM guard_rounds") == 0

    await store.leg_result(f"{other}-01", "ended", 16)              # the channel frees
    await clean.execute("UPDATE callback_requests SET next_attempt_at = now() "
                        "WHERE callback_id = $1", job)
    assert await w.claim_and_start() == 1
    await wait_for(lambda: fake.named("originate"))
    assert fake.named("originate")[0][1] == f"{job}-01"            # round 1, leg 1 again
    fake.router.dispatch(ari.ChannelDestroyed(ari.Channel(id=f"{job}-01"), cause=19))
    await asyncio.wait(list(w._tasks.values()), timeout=5)
    row = await clean.fetchrow("SELECT status, reason, attempts FROM callback_requests "
                               "WHERE callback_id = $1", job)
    assert dict(row) == {"status": "queued", "reason": "no_answer", "attempts": 1}
    rounds = await clean.fetch("SELECT * FROM guard_rounds")
    assert [{k: v for k, v in r.items() if k != "ended_at"} for r in rounds] == [
        {"callback_id": job, "attempt_no": 1, "number": "+819070700002",
         "merchant_id": "acme", "known": False, "rang": True, "confirmed": False}]
    # the number's second unconfirmed round locks it (lock_after 2): the first counted
    await round_ended(guard, callback_id=job, attempt_no=2, number=E164("819070700002"),
                      merchant_id="acme", rang=True, confirmed=False)
    assert await clean.fetchval("SELECT locked_until > now() FROM guard_numbers "
                                "WHERE number = '+819070700002'")


async def test_rounds_recorded_uncounted_before_are_dropped_by_their_migration(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    """Migration 0999 drops the guard rounds recorded for rounds their job did not count
    (did not ring, the job's attempts still below the round's number); every other
    round stays, and the shadowed job's real round is then recorded."""
    store = CallbackStore(clean, owner="w")
    jobs = [await claimed_job(store, 400 + n, f"81908080000{n}") for n in range(4)]
    await clean.execute("UPDATE callback_requests SET attempts = 1 WHERE callback_id = $1",
                        jobs[1])
    rows = [(jobs[0], False),       # uncounted (attempts 0): dropped
            (jobs[1], False),       # counted, did not ring: stays
            (jobs[2], True),        # rang (its finish's lease lost, say): stays
            ("cb-no-job", False)]   # not a job's: stays
    for callback_id, rang in rows:
        await clean.execute(
            "INSERT INTO guard_rounds (callback_id, attempt_no, number, merchant_id, known,"
            " rang, confirmed, ended_at) VALUES ($1, 1, '+819080800009', 'acme', false,"
            " $2, false, now())", callback_id, rang)
    migration = REPO / "callback_server/migrations/0999_guard_uncounted_rounds.sql"
    await clean.execute(migration.read_text(encoding="utf-8"))
    assert sorted(r["callback_id"] for r in await clean.fetch(
        "SELECT callback_id FROM guard_rounds")) == sorted(cb for cb, _ in rows[1:])
    guard = Guard(clean, GuardSettings())
    closing.append(guard)
    await round_ended(guard, callback_id=jobs[0], attempt_no=1,
                      number=E164("819080800000"), merchant_id="acme", rang=True,
                      confirmed=False)
    assert await clean.fetchval("SELECT rang FROM guard_rounds WHERE callback_id = $1",
                                jobs[0])


async def test_a_finish_whose_lease_was_lost_still_records_the_guards_round(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    """The finish's statement carries the guard's round: with the job no longer ours it
    changes nothing of the job and tells the edge nothing, but the round is recorded."""
    guard = slot_guard(clean, CapLimits())
    closing.append(guard)
    job = await claimed_job(CallbackStore(clean, owner="w", guard=guard), 400,
                            "819070700040")
    stranger = CallbackStore(clean, owner="stranger", guard=guard)
    end = RoundEnd(job, 1, E164("819070700040"), "acme", rang=True, confirmed=False)
    assert not await stranger.finish(job, Finish("failed", Reason.NO_ANSWER, 1),
                                     round_end=end)
    assert not await stranger.finish(job, Finish("retry", Reason.NO_ANSWER, 1, 30),
                                     round_end=end)
    row = await clean.fetchrow("SELECT status, attempts, lease_owner FROM callback_requests "
                               "WHERE callback_id = $1", job)
    assert dict(row) == {"status": "dialing", "attempts": 0, "lease_owner": "w"}
    assert await clean.fetchval("SELECT count(*) FROM outbox") == 0
    rounds = await clean.fetch("SELECT callback_id, attempt_no, rang, confirmed "
                               "FROM guard_rounds")
    assert [tuple(r) for r in rounds] == [(job, 1, True, False)]


async def test_concurrent_answered_finishes_count_every_cost_and_the_cap_stops_the_next(
        clean: asyncpg.Pool, closing: list[Guard]) -> None:
    """Eight answered rounds of one merchant and trunk finish at once, each its statement
    committed on its own (the CDR's cost added to the spend and the caps checked in it):
    every cost is counted once in every scope, the merchant's cap (1.00 against 8 × 0.30)
    is tripped once, by a finish that saw the crossing or else by the next leg's
    admission, and once the finishes are committed no leg of that merchant is admitted
    on any trunk."""
    guard = Guard(clean, GuardSettings(caps=CapSettings(
        currency="USD", global_limits=CapLimits(), trunk_default=CapLimits(),
        merchants={"acme": CapLimits(spend_daily=Decimal("1.00"))})))
    closing.append(guard)
    store = CallbackStore(clean, owner="w", guard=guard)
    jobs = [await claimed_job(store, 400 + i, f"81904040000{i}") for i in range(8)]
    for job in jobs:
        await store.persist_leg(leg(job, "carrier-a"), "acme")
        await store.leg_result(f"{job}-01", "answered", None)

    async def finished(n: int, job: str) -> bool:
        return await store.finish(
            job, Finish("completed", Reason.ANSWERED, 1),
            ended=LegEnd(f"{job}-01", "ended", 16, StoredCdr(
                cdr(job, "carrier-a"), f"cap-{400 + n}", "acme", 300,
                Money.of("0.30", "USD"), None)),
            round_end=RoundEnd(job, 1, E164(f"81904040000{n}"), "acme", rang=True,
                               confirmed=True))

    assert await asyncio.wait_for(
        asyncio.gather(*(finished(n, job) for n, job in enumerate(jobs))), 30) == [True] * 8
    spent = (await guard.status())["spend_today"]
    assert {scope: Decimal(v) for scope, v in spent.items()} == dict.fromkeys(
        ("global", "merchant:acme", "trunk:carrier-a"), Decimal("2.40"))
    assert await clean.fetchval("SELECT count(*) FROM guard_spend WHERE scope = "
                                "'merchant:acme'") <= caps.SHARDS
    assert await clean.fetchval("SELECT count(*) FROM callback_requests "
                                "WHERE status = 'completed'") == 8
    nxt = await claimed_job(store, 420, "819040400099")
    for carrier in ("carrier-a", "carrier-b"):
        with pytest.raises(GuardRefused) as refused:
            await store.persist_leg(leg(nxt, carrier), "acme")
        assert refused.value.verdict.reason == "cap_merchant_spend_daily"
    trips = await clean.fetch("SELECT scope, kind FROM guard_trips WHERE reset_at IS NULL")
    assert [tuple(t) for t in trips] == [("merchant:acme", "spend_daily")]
    assert await clean.fetchval("SELECT count(*) FROM callback_attempts "
                                "WHERE callback_id = $1", nxt) == 0
