"""What one call-back costs the callback site's PostgreSQL: its transactions and their
round trips, counted, the leg's persist and the round's finish among them.

One request is stored, claimed by the worker (with the guard, as the site runs it),
dialled through a fake Asterisk and declined by the carrier (603, cause 21: the control
plane of ``bench.load_sweep``), so its round ends ``failed`` and the edge is told. Every
statement the pool's connections send is seen (asyncpg's query logger), and a transaction
is what PostgreSQL counts as one (``pg_stat_database.xact_commit``): a ``BEGIN`` …
``COMMIT`` block, or a statement sent on its own (the pool's reset of a released
connection included). A block's round trips are its statements, its ``BEGIN`` and its
``COMMIT``: between them the session waits idle in transaction for the server's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from billing import records
from callback_server.app import migration_sets
from callback_server.config import StaticRoute
from callback_server.dialer_messages import Finish, PersistAttempt, Reason, RecordCdr
from callback_server.guard.caps import CapLimits, CapSettings
from callback_server.guard.service import Guard, RoundEnd
from callback_server.guard.settings import GuardSettings
from callback_server.ivr_flow import load_named
from callback_server.routing import Routing
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.store.leg_end import LegEnd, StoredCdr, write_cdr
from callback_server.testing import FakeAri, FixedRater, merchant
from callback_server.worker import Worker, WorkerSettings
from ivr_platform import notify_outbox
from ivr_platform.notify_config import Channel, Event, Kind, NotifySettings
from ivr_platform.notify_webhooks import WebhookSettings
from shared import ari
from shared.db import create_pool, migrate_url
from shared.money import Money
from shared.outbox import isoformat
from shared.phone import E164
from tests.integration import callback_db

pytestmark = pytest.mark.integration

ACME = merchant("acme")
ROUTES = (StaticRoute("carrier-a", "PJSIP/{digits}@carrier-a"),
          StaticRoute("carrier-b", "PJSIP/{digits}@carrier-b"))
#: one declined call-back, its intake to its round's end and the edge's outbox message
#: (30 before the pool kept its sessions, 15 before the worker read less, 11 before the
#: round's flow was kept with its first leg, 10 before the guard's round screening and
#: route choice rode on the claim and the leg's end, its CDR and the guard's round on the
#: finish)
MAX_TRANSACTIONS = 5
#: the round's finish (the job closed ``failed``): the leg's result with its CDR and the
#: CDR's message, the job closed with its ``callback_status`` message, the guard's round
#: and, with billing, the customer leg kept for the billing records: one statement
#: committed on its own (4 round trips, a block of two statements, before; 8 with
#: billing, its advisory lock, the leg's row and two deletes each a statement; 8 without
#: billing while each of those was a statement of its own)
FINISH_ROUND_TRIPS = 1
#: the leg's persist before its originate (the lease, the round's flow, the guard's caps
#: read and claimed, the leg's row): one statement on its own (6 round trips, a block of
#: four statements, while the caps were read and claimed in statements of their own)
PERSIST_ROUND_TRIPS = 1
#: the request's intake (its message id and answer, the guard's locks, facts, decision
#: and count, the request row): one statement on its own (4 round trips, a block of two
#: statements, before migration 1020)
INTAKE_ROUND_TRIPS = 1
#: every round trip of the call-back's transactions (16 before the leg's persist was one
#: statement, 11 before the finish was, 15 with billing, 8 before the intake was)
MAX_ROUND_TRIPS = 5
ASYNCPG_INTROSPECTION = ("SELECT current_setting('jit')", "SELECT set_config('jit'",
                         "WITH RECURSIVE typeinfo_tree")


@dataclass(frozen=True)
class Transaction:
    """One transaction's statements; ``block``: sent between ``BEGIN`` and ``COMMIT``."""

    statements: tuple[str, ...]
    block: bool

    @property
    def round_trips(self) -> int:
        return len(self.statements) + 2 if self.block else len(self.statements)


@dataclass
class Statements:
    """Each pool connection's statements, folded into transactions as PostgreSQL counts
    them."""

    open: dict[int, list[str]] = field(default_factory=dict)
    transactions: list[Transaction] = field(default_factory=list)
    #: each backend's logger (by its pid), added once to its connection
    loggers: dict[int, Callable[[asyncpg.connection.LoggedQuery], None]] = field(
        default_factory=dict)

    def seen(self, key: int, logged: asyncpg.connection.LoggedQuery) -> None:
        text = " ".join(logged.query.split())
        if text.startswith(ASYNCPG_INTROSPECTION):
            return      # a connection's first use of a type, not the call-back's
        if text.upper().startswith("BEGIN"):
            self.open[key] = []
        elif key in self.open:
            if text.upper() in ("COMMIT;", "COMMIT", "ROLLBACK;", "ROLLBACK"):
                self.transactions.append(Transaction(tuple(self.open.pop(key)), True))
            else:
                self.open[key].append(text)
        else:
            self.transactions.append(Transaction((text,), False))


@pytest.fixture(scope="module")
async def counted(pg_url: str) -> AsyncIterator[tuple[asyncpg.Pool, Statements]]:
    await migrate_url(pg_url, migration_sets(with_rates=False))     # billing's as the site's
    await (await callback_db.open_pool(pg_url, [ACME])).close()     # migrated, synced
    statements = Statements()
    pool = await create_pool(pg_url, min_size=20, max_size=20)    # as the site's, all open
    await logged(pool, statements)
    await callback_db.emptied(pool)
    yield pool, statements
    await pool.close()


async def logged(pool: asyncpg.Pool, statements: Statements) -> None:
    """Every connection of the pool seen by ``statements``: again after a worker ran (its
    ``shared.db.watching`` replaces the pool's connections when it stops), each backend
    once."""
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        for conn in held:
            pid = conn.get_server_pid()
            if pid not in statements.loggers:
                statements.loggers[pid] = functools.partial(statements.seen, pid)
            conn.add_query_logger(statements.loggers[pid])
    finally:
        for conn in held:
            await pool.release(conn)


@dataclass
class Running:
    """A worker running on the counted pool, its fake Asterisk, its guard and the test's
    own connection (not counted)."""

    pool: asyncpg.Pool
    fake: FakeAri
    guard: Guard
    probe: asyncpg.Connection

    async def call_back(self, caller: str,
                        before_end: Callable[[str], Awaitable[None]] | None = None) -> None:
        await one_call_back(self.pool, self.probe, self.fake, self.guard, caller, before_end)


@asynccontextmanager
async def running(pool: asyncpg.Pool, pg_url: str, statements: Statements, *,
                  billing: bool) -> AsyncIterator[Running]:
    """The tables emptied, then a worker with the guard (and ``billing``: the billing
    records' customer legs) as the site runs it, until the block ends."""
    await callback_db.emptied(pool)
    await pool.execute("TRUNCATE callback_round_flows, billing_records, "
                       "billing_customer_legs, billing_records_awaiting")
    fake = FakeAri()
    ready = asyncio.Event()
    ready.set()
    guard = Guard(pool, GuardSettings())
    store = CallbackStore(pool, owner="w1", guard=guard, customer_legs=billing)
    worker = Worker(store=store, db_url=pg_url, merchants={"acme": ACME},
                    flows={"order": load_named("order")}, routes=Routing(None, ROUTES),
                    client=fake, router=fake.router, rater=FixedRater(), ari_ready=ready,
                    settings=WorkerSettings(sweep_s=30.0, drain_s=0.5), guard=guard)
    probe = await asyncpg.connect(pg_url)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)                      # LISTEN is up, the first sweep done
        await logged(pool, statements)
        yield Running(pool, fake, guard, probe)
    finally:
        await worker.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await probe.close()


async def finishes(statements: Statements) -> list[Transaction]:
    """The finishes among the transactions seen, once the loggers have heard them all
    (asyncpg calls a query logger at the event loop's next turn)."""
    await asyncio.sleep(0)
    return [t for t in statements.transactions
            if any("finished_at = now()" in s for s in t.statements)]


@pytest.mark.parametrize("billing", [False, True], ids=["without billing", "with billing"])
async def test_one_declined_call_back_costs_at_most_n_transactions(
        counted: tuple[asyncpg.Pool, Statements], pg_url: str, billing: bool) -> None:
    pool, statements = counted
    async with running(pool, pg_url, statements, billing=billing) as run:
        probe = run.probe
        # warm: the statements prepared, their types introspected (numbers of their own:
        # a number's second unconfirmed round is locked, a finish in a transaction)
        await run.call_back(f"81901234567{int(billing)}")
        await asyncio.sleep(0.1)
        statements.transactions.clear()
        await run.call_back(f"81908765432{int(billing)}")
        assert await probe.fetchval("SELECT count(*) FROM outbox "
                                    "WHERE kind = 'callback_status'") == 2
        assert await probe.fetchval("SELECT count(*) FROM callback_round_flows") == 2
        # each leg's result and its CDR, its message with it
        legs = await probe.fetch("SELECT a.status, a.cause, c.disposition FROM "
                                 "callback_attempts a JOIN cdrs c ON c.call_id = a.channel_id")
        assert [tuple(r) for r in legs] == [("ended", 21, "declined")] * 2
        assert await probe.fetchval("SELECT count(*) FROM outbox WHERE kind = 'cdr'") == 2
        kept = await probe.fetchval("SELECT count(*) FROM billing_customer_legs c JOIN cdrs "
                                    "USING (call_id) WHERE cdrs.leg = 'customer'")
        assert kept == (2 if billing else 0)
    done = statements.transactions
    listing = "\n".join(f"{t.round_trips}: " + " | ".join(s[:70] for s in t.statements)
                         for t in done)
    print(f"{len(done)} transactions, {sum(t.round_trips for t in done)} round trips:\n"
          f"{listing}")
    assert len(done) <= MAX_TRANSACTIONS, listing
    assert sum(t.round_trips for t in done) <= MAX_ROUND_TRIPS, listing
    persist, = (t for t in done if any("INSERT INTO callback_attempts" in s
                                       for s in t.statements))
    assert persist.round_trips == PERSIST_ROUND_TRIPS, "\n".join(persist.statements)
    finish, = await finishes(statements)
    assert finish.round_trips == FINISH_ROUND_TRIPS, "\n".join(finish.statements)
    assert ("billing_customer_leg_rated" in finish.statements[0]) == billing
    intake, = (t for t in done if any("callback_intake(" in s for s in t.statements))
    assert intake.round_trips == INTAKE_ROUND_TRIPS, "\n".join(intake.statements)


async def test_a_finish_whose_customer_leg_records_wait_sends_them_in_its_transaction(
        counted: tuple[asyncpg.Pool, Statements], pg_url: str) -> None:
    """A billing record kept waiting for the declined leg (its consultation settled
    first): the finish's statement alone is undone and the finish runs as a transaction
    that sends the record with the leg, once."""
    pool, statements = counted
    async with running(pool, pg_url, statements, billing=True) as run:
        async def kept(channel_id: str) -> None:
            record = records.BillingRecord.from_json({**records.EXAMPLE,
                                                      "merchant_id": "acme"})
            await run.probe.execute(
                "INSERT INTO billing_records_awaiting (record_id, customer_call_id, record) "
                "VALUES ($1, $2, $3::jsonb)", record.record_id, channel_id,
                json.dumps(record.to_json()))
        statements.transactions.clear()
        await run.call_back("819055555555", before_end=kept)
        (written,) = await records.consultation_records(pool, "acme", "co-7f3a")
        customer = await run.probe.fetchval("SELECT call_id FROM cdrs WHERE leg = 'customer'")
        assert [(leg["call_id"], leg["role"]) for leg in written["legs"]] == [
            ("co-7f3a-r2", "advisor"), (customer, "customer")]
        assert await run.probe.fetchval("SELECT count(*) FROM billing_records_awaiting") == 0
        assert await run.probe.fetchval("SELECT count(*) FROM outbox "
                                        "WHERE kind = 'billing_record'") == 1
        assert await run.probe.fetchval("SELECT status FROM callback_requests") == "failed"
    undone, finish = await finishes(statements)
    assert not undone.block and len(undone.statements) == 1, undone
    assert finish.block and any("INSERT INTO billing_records" in s
                                for s in finish.statements), finish


async def test_a_finish_the_velocity_rules_act_on_locks_the_number_in_its_transaction(
        counted: tuple[asyncpg.Pool, Statements], pg_url: str) -> None:
    """A number's second unconfirmed round (``lock_after`` 2; its first an hour ago): the
    finish's statement alone is undone, and the finish runs as a transaction that records
    the round and locks the number."""
    pool, statements = counted
    number = E164("819066666666")
    async with running(pool, pg_url, statements, billing=True) as run:
        await pool.execute("TRUNCATE guard_rounds")
        async with pool.acquire() as conn, conn.transaction():
            await run.guard.record_round(conn, RoundEnd("cb-earlier", 1, number, "acme",
                                                        rang=True, confirmed=False))
        await pool.execute("UPDATE guard_rounds SET ended_at = now() - interval '1 hour'")
        statements.transactions.clear()
        await run.call_back(number.digits)
        assert await run.probe.fetchval(
            "SELECT locked_until > now() FROM guard_numbers WHERE number = $1", str(number))
        assert await run.probe.fetchval("SELECT count(*) FROM guard_rounds") == 2
        assert await run.probe.fetchval("SELECT count(*) FROM billing_customer_legs") == 1
    undone, second = await finishes(statements)
    assert not undone.block and len(undone.statements) == 1, undone
    assert second.block and any("UPDATE guard_numbers SET locked_until" in s
                                for s in second.statements), second


async def one_call_back(pool: asyncpg.Pool, probe: asyncpg.Connection, fake: FakeAri,
                        guard: Guard, caller: str,
                        before_end: Callable[[str], Awaitable[None]] | None = None) -> None:
    """A request stored, dialled, declined by the carrier (``before_end``: called with
    the leg's channel first); returns once its round ended and its job's task with it."""
    now = datetime.now(UTC)
    req = IntakeRequest(f"edge-{uuid.uuid4().hex[:8]}", "acme", E164(caller), None, now,
                        now, "early_media")
    dialled = len(fake.named("originate"))
    _, body = await CallbackStore(pool, owner="edge", guard=guard).intake(
        str(uuid.uuid4()), req, ACME)
    for _ in range(500):
        if len(fake.named("originate")) > dialled:
            break
        await asyncio.sleep(0.01)
    _, channel_id, _, _ = fake.named("originate")[-1]
    if before_end is not None:
        await before_end(channel_id)
    fake.router.dispatch(ari.ChannelDestroyed(ari.Channel(id=channel_id), cause=21))
    for _ in range(500):
        if await probe.fetchval("SELECT status FROM callback_requests WHERE callback_id = $1",
                                body["callback_id"]) == "failed":
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)                           # the job's task has ended


@pytest.mark.parametrize("billing", [False, True], ids=["without billing", "with billing"])
async def test_an_answered_finish_with_its_spend_is_one_round_trip(
        counted: tuple[asyncpg.Pool, Statements], billing: bool) -> None:
    """An answered, confirmed round's finish: the customer leg's result and its rated CDR
    (its message, its carrier cost added to the site's, the merchant's and the trunk's
    spend with the caps checked, with billing the customer leg kept), the job closed with
    its message and the guard's round, in one statement committed on its own: no spend
    row is locked while the session waits for the server (4 round trips before, with or
    without billing: BEGIN, the statement, the spend in a statement of its own, COMMIT,
    the spend rows locked from the third to the fourth). The spend is counted once and a
    cap it reaches trips in that statement."""
    pool, statements = counted
    await callback_db.emptied(pool)
    await pool.execute("TRUNCATE callback_round_flows, billing_records, "
                       "billing_customer_legs, billing_records_awaiting")
    cap = CapLimits(spend_daily=Decimal("1.00"))
    guard = Guard(pool, GuardSettings(caps=CapSettings(
        currency="USD", global_limits=CapLimits(), trunk_default=CapLimits(),
        merchants={"acme": cap})))
    store = CallbackStore(pool, owner="w1", guard=guard, customer_legs=billing)
    await logged(pool, statements)
    try:
        for n, cost in enumerate(("0.70", "0.40")):        # the second one crosses 1.00
            callback_id, channel_id, number = await answered_leg(store, guard, n, billing)
            statements.transactions.clear()
            assert await store.finish(
                callback_id, Finish("completed", Reason.ANSWERED, 1),
                ended=LegEnd(channel_id, "ended", 16, answered_cdr(
                    callback_id, channel_id, Money.of(cost, "USD"))),
                round_end=RoundEnd(callback_id, 1, number, "acme", rang=True,
                                   confirmed=True))
            finish, = await finishes(statements)
            assert finish.round_trips == 1, "\n".join(finish.statements)
            assert "guard_add_spend" in finish.statements[0]
            assert ("billing_customer_leg_rated" in finish.statements[0]) == billing
        spent = (await guard.status())["spend_today"]
        assert {scope: Decimal(v) for scope, v in spent.items()} == dict.fromkeys(
            ("global", "merchant:acme", "trunk:carrier-a"), Decimal("1.10"))
        trips = await pool.fetch("SELECT scope, kind, detail FROM guard_trips")
        assert [tuple(t) for t in trips] == [
            ("merchant:acme", "spend_daily", "merchant:acme: spent 1.100000 of 1.00")]
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE kind = 'cdr'") == 2
        assert await pool.fetchval("SELECT count(*) FROM billing_customer_legs") == (
            2 if billing else 0)
        # the same CDR again (a finish retried after a lost reply): nothing counted twice
        async with pool.acquire() as conn:
            assert not await write_cdr(store, conn, answered_cdr(
                callback_id, channel_id, Money.of(cost, "USD")), alone=True)
        again = (await guard.status())["spend_today"]
        assert {Decimal(v) for v in again.values()} == {Decimal("1.10")}
    finally:
        await guard.alerter.close()


async def answered_leg(store: CallbackStore, guard: Guard, n: int, billing: bool
                       ) -> tuple[str, str, E164]:
    """A request stored and claimed, its customer leg persisted through ``carrier-a`` and
    answered: its job, its channel and its number."""
    number = E164(f"8190777700{n}{int(billing)}")
    now = datetime.now(UTC)
    req = IntakeRequest(f"edge-{uuid.uuid4().hex[:8]}", "acme", number, None, now, now,
                        None)
    _, body = await store.intake(str(uuid.uuid4()), req, ACME)
    callback_id = str(body["callback_id"])
    assert [j.callback_id for j in await store.claim(10)] == [callback_id]
    channel_id = f"{callback_id}-01"
    await store.persist_leg(PersistAttempt(callback_id, 1, 1, channel_id, "customer",
                                           "carrier-a", "PJSIP/x@carrier-a"), "acme")
    await store.leg_result(channel_id, "answered", None)
    return callback_id, channel_id, number


def answered_cdr(callback_id: str, channel_id: str, cost: Money) -> StoredCdr:
    at = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    return StoredCdr(RecordCdr(call_id=channel_id, callback_id=callback_id, leg="customer",
                               destination="+819077770000", carrier_id="carrier-a",
                               started_at=at, answered_at=at,
                               ended_at=at + timedelta(minutes=5),
                               duration_s=Decimal("300"), hangup_cause=16,
                               disposition="answered"),
                     "edge-call", "acme", 300, cost, None)


async def test_a_missed_call_backs_finish_with_its_notification_is_one_round_trip(
        counted: tuple[asyncpg.Pool, Statements], pg_url: str) -> None:
    """A round that closes the job ``failed`` (its last leg declined) for a merchant whose
    channel takes ``callback_missed``: the notification, its delivery and the wake-up of
    the delivery worker are in the finish's one statement (6 round trips before: BEGIN,
    the statement, the notification's three statements, COMMIT), the same facts as the
    notification queued in Python; a finish that does not know the merchant before (none
    of its round or leg) still queues it, in a transaction."""
    pool, statements = counted
    await callback_db.emptied(pool)
    await pool.execute("TRUNCATE callback_round_flows, notifications CASCADE")
    notify = NotifySettings(channels=(Channel(
        "acme", "missed", Kind.SLACK, frozenset({Event.CALLBACK_MISSED}),
        WebhookSettings("https://hooks.example.jp/missed")),))
    guard = Guard(pool, GuardSettings())
    store = CallbackStore(pool, owner="w1", guard=guard, notify=notify)
    await logged(pool, statements)
    listener = await asyncpg.connect(pg_url)
    woken: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(notify_outbox.CHANNEL, lambda *a: woken.put_nowait(a[2]))
    try:
        callback_id, channel_id, number = await answered_leg(store, guard, 5, False)
        statements.transactions.clear()
        assert await store.finish(
            callback_id, Finish("failed", Reason.DECLINED, 1),
            ended=LegEnd(channel_id, "ended", 21, None),
            round_end=RoundEnd(callback_id, 1, number, "acme", rang=False, confirmed=False))
        finish, = await finishes(statements)
        assert finish.round_trips == 1, "\n".join(finish.statements)
        assert "INSERT INTO notifications" in finish.statements[0]
        await asyncio.wait_for(woken.get(), 5)
        other, _, _ = await answered_leg(store, guard, 6, False)
        statements.transactions.clear()
        assert await store.finish(other, Finish("failed", Reason.NO_ANSWER, 1))
        second, = await finishes(statements)
        assert second.block
        await asyncio.wait_for(woken.get(), 5)
        rows = await pool.fetch(
            "SELECT n.merchant_id, n.event, n.fact_key, n.facts, d.channel, r.received_at "
            "FROM notifications n JOIN notification_deliveries d ON d.notification_id = n.id "
            "JOIN callback_requests r ON n.fact_key = 'callback_missed:' || r.callback_id "
            "ORDER BY n.id")
        assert [(r["merchant_id"], r["event"], r["fact_key"], r["channel"]) for r in rows] \
            == [("acme", "callback_missed", f"callback_missed:{job}", "missed")
                for job in (callback_id, other)]
        assert [r["facts"] for r in rows] == [
            {"caller": str(E164(f"8190777700{n}0")), "at": isoformat(r["received_at"]),
             "reason": reason, "attempts": 1, "edge_call_id": r["facts"]["edge_call_id"]}
            for n, reason, r in zip((5, 6), ("declined", "no_answer"), rows, strict=True)]
        assert all(r["facts"]["edge_call_id"].startswith("edge-") for r in rows)
        # a finish sent again (its reply lost): the job is no longer ours, nothing queued
        assert not await store.finish(
            callback_id, Finish("failed", Reason.DECLINED, 1),
            round_end=RoundEnd(callback_id, 1, number, "acme", rang=False, confirmed=False))
        assert await pool.fetchval("SELECT count(*) FROM notifications") == 2
    finally:
        await listener.close()
        await guard.alerter.close()
