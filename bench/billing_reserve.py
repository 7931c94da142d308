"""Reserve + authorise a consultation, 200 at once, against PostgreSQL.

What a consultation pays in billing before any advisor is rung, as
:class:`~callback_server.consult_runner.ConsultRunner` pays it: admission
(:meth:`callback_server.consult_billing.ConsultBilling.admit`: the customer's account by
the called number, the merchant's policy, the facts :func:`billing.admission.decide`
decides on) and, prepaid, the meter's first slice (:meth:`ConsultBilling.reserve` with
the meter's ``first_slice_s``). Both are group-committed: the asks that arrive together
are one statement a batch, which, as the runner asks (admission naming the consultation),
also holds the admitted prepaid asks' first slices (:func:`billing.admission.
admit_and_hold_sql`: the accounts locked, then read once and held under the locks), so
``reserve`` answers from the plan; a reservation the admission did not make is one
:func:`billing.ledger.reserve_all` statement a batch (the report counts the batches).
No Stripe call is on this path: a postpaid admission reads the card on file and the
charges from the database.

The account mix of one burst of N requests (N=200 by default), each a distinct
consultation: most from distinct prepaid accounts, a tenth from households of four
numbers sharing one balance (their reservations queue on the account's lock), a tenth
from postpaid accounts with a card on file (recorded in the database as a confirmed
registration would leave it), at 100 to 400 yen a minute. A burst is N asyncio tasks
started at once on a pool of the callback server's size (``[database] max_connections``,
10); each request's time runs from its start to its answer, the wait for a pooled
connection included. Before the next burst (untimed) its reservations are settled (0 s)
and its postpaid consultations charged and paid (:func:`release`).

Baselines in the same run: the same N requests one at a time, and N concurrent bare
``SELECT 1`` round trips on the same pool (what the pool's queueing alone costs).

``--breakdown``: where a request's ms go, from stamps on each request and each batch
(the batchers' ``write`` wrapped with a connection whose round trips are timed): waiting
for its admission batch to start, the admission statement, deciding the batch in Python,
waking up once the batch answered; the same for the reservation batch with
``reserve_all``'s round trip (one statement: lock, read, decide, write the holds, commit)
and its Python.

The requests and ConsultBilling run on uvloop, as the callback server's ``serve`` runs
them (``--asyncio``: on asyncio's own loop, as this bench ran before 2026-12-06 06:30 UTC),
with the heap settled as ``serve`` settles it once started (:func:`shared.site.settle_heap`:
what the process holds frozen, the collector's thresholds raised; before 2026-12-06 21:00
UTC the bench ran on Python's default thresholds, and a full collection of the whole heap,
20-60 ms on this machine, could land in a timed burst). Each timed burst's slowest request
is printed, and the garbage collections that ran during the timed bursts: with 10 bursts
the p99 is about the slowest burst. Beside each burst's slowest request, how long the
bench's process and the database's backends serving it waited for a CPU during that burst
(runnable but not running: ``/proc/<pid>/schedstat``, read just before and after its
requests; on this two-core machine that wait, not the work, is what sets a slow burst
apart from a fast one), and what PostgreSQL did beside the timed bursts (WAL written and
segments switched, checkpoints, autovacuum and autoanalyze runs on the bench's database).

Target (the billing issue): p99 <= 10 ms at 200 concurrent requests. PostgreSQL:
``DATABASE_URL``'s server, else the embedded one (database ``cbgw_bench_billing``,
re-created each run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import stripe

TARGET_P99_MS = 10.0
DATABASE = "cbgw_bench_billing"
PREPAID, POSTPAID = "bench-prepaid", "bench-postpaid"
#: the callback server's pool (``[database] max_connections``' default)
POOL_SIZE = 10
HOUSEHOLD = 4
PRICES = (100, 200, 300, 400)
DEPOSIT_YEN = 100_000
#: untimed bursts first, so that every pooled connection has run the statements
#: (``--warm``: more, so that each has run them past PostgreSQL's first five executions of
#: a prepared statement or a plpgsql function's statement, each planned for its
#: parameters, as on a server that has been up a while). Each burst also leaves every
#: account one more consultation, settled or paid: ``--warm 100`` times the bursts on
#: accounts with a history of 100, where each index probe of the call costs more than on
#: the fresh database (bench/README.md, "one pass and one batch", "a postpaid customer's
#: history")
WARM_BURSTS = 3


@dataclass(frozen=True)
class Ask:
    """One request: as the consult runner has it when it asks, the called number already
    parsed (``e164``: the call's destination) and its meter's first slice."""

    merchant_id: str
    number: str
    price_per_minute_yen: int
    e164: Any = None
    first_slice_s: int | None = None


async def database() -> str:
    """A fresh database with the callback site's billing and advisors migrations."""
    import advisors
    import billing
    import shared
    from advisors import record_store
    from billing import records
    from shared.db import fresh_database, migrate_url, package_migrations, resolve_url

    server = await asyncio.to_thread(resolve_url, None, "postgres")
    url = await fresh_database(server, DATABASE)
    await migrate_url(url, [package_migrations("link", shared.__file__),
                            package_migrations("advisors", advisors.__file__),
                            record_store.MIGRATIONS,
                            package_migrations("billing", billing.__file__),
                            records.MIGRATIONS])
    return url


async def seed(pool: asyncpg.Pool, count: int) -> list[Ask]:
    """``count`` requests' customers: distinct prepaid accounts, households sharing one
    balance, postpaid accounts with a card on file; every prepaid account funded."""
    from billing.ledger import Ledger
    from callback_server import consult_meter
    from shared.phone import E164

    households = max(1, count // (10 * HOUSEHOLD))
    postpaid = max(1, count // 10)
    distinct = count - households * HOUSEHOLD - postpaid
    accounts: list[tuple[str, str, list[str]]] = []     # merchant, account, its numbers
    n = 0

    def numbers(k: int) -> list[str]:
        nonlocal n
        n += k
        return [f"+8190{i:08d}" for i in range(n - k, n)]

    accounts += [(PREPAID, f"solo-{i}", numbers(1)) for i in range(distinct)]
    accounts += [(PREPAID, f"home-{i}", numbers(HOUSEHOLD)) for i in range(households)]
    accounts += [(POSTPAID, f"card-{i}", numbers(1)) for i in range(postpaid)]
    async with pool.acquire() as conn, conn.transaction():
        for merchant, account, nums in accounts:
            cid = await conn.fetchval("INSERT INTO customers (merchant_id, account) "
                                      "VALUES ($1, $2) RETURNING id", merchant, account)
            await conn.executemany("INSERT INTO customer_numbers (merchant_id, number, "
                                   "customer_id) VALUES ($1, $2, $3)",
                                   [(merchant, num, cid) for num in nums])
            if merchant == POSTPAID:
                acc = await conn.fetchval("INSERT INTO billing_accounts (merchant_id, "
                                          "account) VALUES ($1, $2) RETURNING id",
                                          merchant, account)
                reg = await conn.fetchval(
                    """INSERT INTO billing_card_registrations (merchant_id, account_id,
                           customer, setup_intent, client_secret, link_sha256, requested_by)
                       VALUES ($1, $2, $3, $4, $5, sha256($6::bytea), 'bench') RETURNING id""",
                    merchant, acc, f"cus_{account}", f"seti_{account}", f"secret_{account}",
                    account.encode())
                await conn.execute("INSERT INTO billing_cards (registration_id, "
                                   "payment_method) VALUES ($1, $2)", reg, f"pm_{account}")
    ledger = Ledger(pool)
    for merchant, account, _ in accounts:
        if merchant == PREPAID:
            await ledger.deposit(merchant, account, DEPOSIT_YEN, "bench", "seed")
    first = consult_meter.new_meter("").first_slice_s()
    asks = [Ask(merchant, num, PRICES[i % len(PRICES)], E164.parse(num), first)
            for i, (merchant, _, nums) in enumerate(accounts) for num in nums]
    return asks


@dataclass
class _Batch:
    """One batch as the profiler saw it: when its write started and ended, its round
    trips (name, start, end) in order, the keys it served."""

    started: float
    ended: float = 0.0
    trips: list[tuple[str, float, float]] = field(default_factory=list)


class _TimedConnection:
    """The batch's connection, each round trip stamped (named by its statement)."""

    def __init__(self, conn: Any, batch: _Batch, names: dict[str, str]) -> None:
        self._conn, self._batch, self._names = conn, batch, names

    async def _timed(self, name: str, call: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await call
        finally:
            self._batch.trips.append((name, t0, time.perf_counter()))

    def _name(self, sql: str) -> str:
        return self._names.get(sql, "other statement")

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self._timed(self._name(sql), self._conn.fetch(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._timed(self._name(sql), self._conn.fetchval(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._timed(self._name(sql), self._conn.fetchrow(sql, *args))

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._timed(self._name(sql), self._conn.execute(sql, *args))

    def transaction(self) -> _TimedTransaction:
        return _TimedTransaction(self, self._conn.transaction())

    def is_in_transaction(self) -> bool:
        return bool(self._conn.is_in_transaction())

    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())


class _TimedTransaction:
    def __init__(self, conn: _TimedConnection, txn: Any) -> None:
        self._conn, self._txn = conn, txn

    async def __aenter__(self) -> None:
        await self._conn._timed("BEGIN", self._txn.__aenter__())

    async def __aexit__(self, *exc: Any) -> None:
        await self._conn._timed("COMMIT" if exc[0] is None else "ROLLBACK",
                                self._txn.__aexit__(*exc))


@dataclass
class Profile:
    """Stamps of every request (by number for admission, by consultation for the
    reservation) and of the batch that served it."""

    requests: dict[str, dict[str, float]] = field(default_factory=dict)
    admitted_in: dict[str, _Batch] = field(default_factory=dict)
    reserved_in: dict[str, _Batch] = field(default_factory=dict)
    parts: dict[str, list[float]] = field(default_factory=dict)
    #: when each admission ask was queued in the batcher, and each admission future set
    enqueued: list[float] = field(default_factory=list)
    settled: list[float] = field(default_factory=list)
    #: the last burst collected, as lines: its batches and its slowest request, in ms
    #: from the burst's first request
    timeline: list[str] = field(default_factory=list)
    on: bool = False

    def wrap(self, billing: Any) -> None:
        """Time the batchers' writes (their connection's round trips), while :attr:`on`."""
        from billing import ledger
        from callback_server import consult_billing
        names = {"COMMIT": "COMMIT", consult_billing._ADMIT: "admission statement",
                 consult_billing._ADMIT_AND_HOLD: "admission and the first holds (one call)",
                 ledger._RESERVE: "lock, read, decide and write the holds"}
        for batcher, served, key in ((billing.admitting, self.admitted_in,
                                      lambda item: item.account),  # the number asked
                                     (billing.reserving, self.reserved_in,
                                      lambda item: item.consultation_id)):
            batcher.write = self._timed_write(batcher.write, served, key, names)
        admitting = billing.admitting
        enqueue, settle = admitting._enqueue, admitting._settle

        def enqueued(key: str, item: Any) -> Any:
            if self.on:
                self.enqueued.append(time.perf_counter())
            return enqueue(key, item)

        def settled(pending: Any, answer: Any) -> None:
            settle(pending, answer)
            if self.on:
                self.settled.append(time.perf_counter())

        admitting._enqueue, admitting._settle = enqueued, settled

    def _timed_write(self, write: Any, served: dict[str, _Batch], key: Callable[[Any], str],
                     names: dict[str, str]) -> Any:
        async def timed(conn: Any, batch: Any) -> Any:
            if not self.on:
                return await write(conn, batch)
            b = _Batch(time.perf_counter())
            for _, item in batch:
                served[key(item)] = b
            try:
                return await write(_TimedConnection(conn, b, names), batch)
            finally:
                b.ended = time.perf_counter()
        return timed

    def stamp(self, request: str, what: str) -> None:
        if self.on:
            self.requests.setdefault(request, {})[what] = time.perf_counter()

    def collect(self) -> None:
        """Add the burst just run to :attr:`parts` (each part of the requests' time, in
        order: what, each request's ms) and forget its stamps (the next burst's
        requests have the same numbers)."""
        def add(name: str, s: float) -> None:
            self.parts.setdefault(name, []).append(s * 1000)

        self._timeline()
        for request, st in self.requests.items():
            number, consultation = request.split("|", 1)
            add("total", st["answered"] - st["start"])
            a = self.admitted_in[number]
            add("admission: wait for the batch to start", a.started - st["start"])
            self._trips(add, "admission", a)
            add("admission: wake up after the batch (futures, tasks)", st["admitted"] - a.ended)
            if "reserve" not in st:
                continue
            add("between admission and reservation (caller)", st["reserve"] - st["admitted"])
            r = self.reserved_in.get(consultation)
            if r is None:   # held with the admission: answered from the plan
                add("reservation: answered from the plan", st["answered"] - st["reserve"])
                continue
            add("reservation: wait for the batch to start", r.started - st["reserve"])
            self._trips(add, "reservation", r)
            add("reservation: wake up after the batch (futures, tasks)",
                st["answered"] - r.ended)
        self.requests.clear()
        self.admitted_in.clear()
        self.reserved_in.clear()
        self.enqueued.clear()
        self.settled.clear()

    def _timeline(self) -> None:
        """The burst as it ran: each batch formed, its round trips sent and answered, its
        Python done; and the slowest request's start, its batch and its answer."""
        if not self.requests:
            return
        t0 = min(st["start"] for st in self.requests.values())

        def ms(t: float) -> str:
            return f"{(t - t0) * 1000:6.2f}"

        lines = [f"asks queued in the batcher: the first {ms(min(self.enqueued))}, the last "
                 f"{ms(max(self.enqueued))}"] if self.enqueued else []
        batches = {id(b): b for b in (*self.admitted_in.values(), *self.reserved_in.values())}
        for i, b in enumerate(sorted(batches.values(), key=lambda b: b.started), 1):
            size = sum(x is b for x in (*self.admitted_in.values(),
                                        *self.reserved_in.values()))
            trips = "; ".join(f"{name} sent {ms(s)} answered {ms(e)}"
                              for name, s, e in b.trips)
            lines.append(f"batch {i} ({size} asks): formed {ms(b.started)}; {trips}; "
                         f"Python done {ms(b.ended)}")
        if self.settled:
            stamps = self.requests.values()
            lines.append(f"the last admission future set {ms(max(self.settled))}; the last "
                         f"request resumed {ms(max(s['admitted'] for s in stamps))}, the "
                         f"last answered {ms(max(s['answered'] for s in stamps))}")
        slow, st = max(self.requests.items(), key=lambda kv: kv[1]["answered"] - kv[1]["start"])
        b = self.admitted_in[slow.split("|", 1)[0]]
        lines.append(f"slowest request: started {ms(st['start'])}, its batch formed "
                     f"{ms(b.started)}, answered {ms(b.trips[-1][2] if b.trips else b.ended)},"
                     f" Python done {ms(b.ended)}, the request resumed {ms(st['admitted'])}, "
                     f"answered {ms(st['answered'])}")
        self.timeline = lines

    @staticmethod
    def _trips(add: Callable[[str, float], None], stage: str, b: _Batch) -> None:
        at = b.started
        for name, t0, t1 in b.trips:
            add(f"{stage}: Python before {name}", t0 - at)
            add(f"{stage}: {name}", t1 - t0)
            at = t1
        add(f"{stage}: Python after the last round trip", b.ended - at)


_NO_PROFILE = Profile()


@dataclass(frozen=True)
class Postpaid:
    """A postpaid consultation admitted: what its charge is recorded with once it ends."""

    account: str
    consultation_id: str
    terms: Any


#: what a request leaves to settle: a prepaid reservation's id, a postpaid consultation
Done = tuple[float, "int | Postpaid"]


async def authorise(billing: Any, ask: Ask, consultation_id: str,
                    profile: Profile = _NO_PROFILE) -> Done:
    """One consultation's admission and, prepaid, its first slice: ms, and the reservation
    (postpaid: the consultation to charge).
    Timed from its own start to its own answer; what the runner has before it asks (the
    called number parsed, its meter's first slice: ``ask``) is made before, untimed, and
    the profile's stamps (``profile``) are taken only in the profiled bursts."""
    t0 = time.perf_counter()
    if profile.on:
        request = f"{ask.number}|{consultation_id}"
        profile.requests[request] = {"start": t0}
    plan = await billing.admit(ask.merchant_id, ask.e164, ask.price_per_minute_yen, None,
                               consultation_id)
    if profile.on:
        profile.stamp(request, "admitted")
    reserved = None
    if plan.admission.allowed and not plan.postpaid:
        if profile.on:
            profile.stamp(request, "reserve")
        got = await billing.reserve(ask.merchant_id, plan, consultation_id, ask.first_slice_s)
        reserved = getattr(got, "id", None)
        assert isinstance(reserved, int), got
    took = time.perf_counter() - t0
    if profile.on:
        profile.requests[request]["answered"] = t0 + took
    assert plan.admission.allowed, plan
    return took * 1000, (Postpaid(plan.account, consultation_id, plan.terms)
                         if reserved is None else reserved)


async def burst(billing: Any, asks: list[Ask], tag: str, profile: Profile = _NO_PROFILE,
                waits: _CpuWaits | None = None) -> tuple[float, list[float]]:
    """All requests at once: seconds for all, each request's ms; settled after (untimed;
    the CPU waits, ``waits``, read just before and after the requests)."""
    if waits is not None:
        waits.before()
    started = time.perf_counter()
    done = await asyncio.gather(*(authorise(billing, a, f"{tag}-{i}", profile)
                                  for i, a in enumerate(asks)))
    took_s = time.perf_counter() - started
    if waits is not None:
        waits.after()
    await release(billing, done)
    return took_s, [ms for ms, _ in done]


async def paced(billing: Any, asks: list[Ask], rate: float, seconds: float
                ) -> tuple[float, list[float]]:
    """The callers asking at random (Poisson) times, ``rate`` a second in all, for
    ``seconds`` (open loop: a slow answer does not hold the next request back): seconds
    for all, each request's ms; settled after (untimed)."""
    rng = random.Random(20261205)
    loop = asyncio.get_running_loop()
    started = loop.time()
    at, tasks = 0.0, list[asyncio.Task[Done]]()
    while (at := at + rng.expovariate(rate)) < seconds:
        await asyncio.sleep(max(0.0, started + at - loop.time()))
        i = len(tasks)
        tasks.append(asyncio.create_task(authorise(billing, asks[i % len(asks)], f"p-{i}")))
    done = await asyncio.gather(*tasks)
    took_s = loop.time() - started
    await release(billing, done)
    return took_s, [ms for ms, _ in done]


async def serial(billing: Any, asks: list[Ask], tag: str) -> tuple[float, list[float]]:
    started = time.perf_counter()
    done = [await authorise(billing, a, f"{tag}-{i}") for i, a in enumerate(asks)]
    took_s = time.perf_counter() - started
    await release(billing, done)
    return took_s, [ms for ms, _ in done]


async def release(billing: Any, done: list[Done]) -> None:
    """Each consultation ended as the server ends it (untimed): a prepaid reservation
    settled (0 s); a postpaid consultation of a minute charged to the card and paid (its
    charge and attempt recorded by :meth:`billing.postpaid.Postpaid.record`, the outcome
    as Stripe's success leaves it; no Stripe call). So each burst leaves every account one
    more consultation of history, prepaid or postpaid."""
    from billing.postpaid import Postpaid as Charging

    charging = Charging(billing.pool, stripe.StripeClient("sk_test_bench"))
    for _, left in done:
        if isinstance(left, Postpaid):
            recorded = await charging.record(POSTPAID, left.account, left.consultation_id,
                                             60, left.terms, by="bench")
            assert recorded is not None
            await billing.pool.execute(
                "INSERT INTO billing_postpaid_outcomes (attempt_id, outcome, "
                "payment_intent) VALUES ($1, 'succeeded', $2)",
                recorded[1], f"pi_bench_{recorded[0].id}")
        else:
            await billing.settle(PREPAID, left, 0)


async def select_one(pool: asyncpg.Pool, count: int) -> tuple[float, list[float]]:
    async def one() -> float:
        t0 = time.perf_counter()
        await pool.fetchval("SELECT 1")
        return (time.perf_counter() - t0) * 1000

    started = time.perf_counter()
    took = await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - started, list(took)


class _Collections:
    """The garbage collections that run inside the ``with``: how many of each generation
    and the longest, in ms."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.counts[generation] += 1
        self.longest[generation] = max(self.longest[generation],
                                       (time.perf_counter() - self._started) * 1000)

    def __enter__(self) -> _Collections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def __str__(self) -> str:
        return "; ".join(f"generation {g} {n} (longest {ms:.2f} ms)"
                         for g, (n, ms) in enumerate(zip(self.counts, self.longest, strict=True)))


def _cpu_ns(pid: int | str) -> tuple[int, int]:
    """Nanoseconds ``pid`` (a process: each of its threads) has run on a CPU and waited
    for one while runnable (``/proc/<pid>/task/*/schedstat``); (0, 0) where there is no
    such process (a server on another host, a backend gone)."""
    ran = waited = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
        except OSError:
            continue
        ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return ran, waited


class _CpuWaits:
    """Each timed burst's wait for a CPU: the bench's own process (the requests, the
    batchers' Python) and the backends of the bench's database (the batches' statements;
    those open before the timed bursts: the batches take the same connections each burst),
    in ms, from their schedstat read just before and just after the burst (no round trip
    added between the bursts)."""

    #: the bench's database's backends, and the autovacuum workers at work (any database)
    _BACKENDS = ("SELECT pid, backend_type = 'autovacuum worker' AS autovacuum"
                 " FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                 " OR (datname = current_database() AND backend_type = 'client backend')")

    def __init__(self) -> None:
        #: (the process's wait, the backends' wait, the backends' run, the process's run)
        #: of each burst, ms
        self.bursts: list[tuple[float, float, float, float]] = []
        #: each burst's start, wall clock (as PostgreSQL's timestamps are)
        self.started: list[float] = []
        self.autovacuum_workers = 0
        self._pids: list[int] = []
        self._before: tuple[int, int, int, int] = (0, 0, 0, 0)

    async def find_backends(self, pool: asyncpg.Pool) -> None:
        rows = await pool.fetch(self._BACKENDS)
        self._pids = [r["pid"] for r in rows if not r["autovacuum"]]
        self.autovacuum_workers = sum(r["autovacuum"] for r in rows)

    def _read(self) -> tuple[int, int, int, int]:
        ran, own = _cpu_ns(os.getpid())
        backends = [_cpu_ns(pid) for pid in self._pids]
        return own, sum(w for _, w in backends), sum(r for r, _ in backends), ran

    def before(self) -> None:
        self._before = self._read()
        self.started.append(time.time())

    def after(self) -> None:
        now = self._read()
        self.bursts.append(tuple((b - a) / 1e6 for a, b in zip(self._before, now,
                                                               strict=True)))  # type: ignore[arg-type]


def _cpu_line(bursts: list[tuple[float, float, float, float]]) -> str:
    """The work a timed burst costs: the database's backends' and the bench's process's
    time on a CPU a burst (ms; each burst, then the median of each and of their sum)."""
    if not bursts:
        return "each timed burst's CPU: no timed bursts"

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2

    backends = [b for _, _, b, _ in bursts]
    own = [p for _, _, _, p in bursts]
    both = [b + p for b, p in zip(backends, own, strict=True)]
    each = ", ".join(f"{b:.1f} + {p:.1f}" for b, p in zip(backends, own, strict=True))
    return (f"each timed burst's CPU (ms on a CPU): the database's backends + the bench's "
            f"process:\n  {each}\n  median a burst: backends {median(backends):.1f}, "
            f"process {median(own):.1f}, both {median(both):.1f}")


#: what PostgreSQL did beside the timed bursts: WAL written, checkpoints, autovacuum and
#: autoanalyze runs on the bench's database (the counts as the statistics have them)
_SERVER_WORK = """
    SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn AS wal,
           (SELECT checkpoint_lsn - '0/0'::pg_lsn FROM pg_control_checkpoint()) AS checkpoint,
           (SELECT coalesce(sum(autovacuum_count), 0) FROM pg_stat_user_tables) AS autovacuums,
           (SELECT coalesce(sum(autoanalyze_count), 0) FROM pg_stat_user_tables) AS autoanalyzes"""
_WAL_SEGMENT = 16 * 1024 * 1024


#: the autovacuum and autoanalyze runs of the bench's tables that ended since $1 (epoch s)
_AUTOVACUUMS = """
    SELECT relname, 'autovacuum' AS what, extract(epoch FROM last_autovacuum)::float8 AS at
      FROM pg_stat_user_tables WHERE last_autovacuum >= to_timestamp($1)
    UNION ALL
    SELECT relname, 'autoanalyze', extract(epoch FROM last_autoanalyze)::float8
      FROM pg_stat_user_tables WHERE last_autoanalyze >= to_timestamp($1)
    ORDER BY at"""


async def _autovacuums(pool: asyncpg.Pool, started: list[float]) -> str:
    """Which timed burst each autovacuum or autoanalyze of the bench's tables ended in
    (from a burst's start to the next's: its settling included), as the statistics have
    them (the last run of each table only)."""
    if not started:
        return ""
    ended = []
    for r in await pool.fetch(_AUTOVACUUMS, started[0]):
        burst = sum(t <= r["at"] for t in started) - 1
        ended.append(f"{r['what']} {r['relname']} ended in burst {burst}")
    return "; ".join(ended) or "none ended during the timed bursts"


async def _server_work(pool: asyncpg.Pool) -> dict[str, int] | None:
    """:data:`_SERVER_WORK` now; None where the server does not let the bench read it."""
    try:
        return {k: int(v) for k, v in (await pool.fetchrow(_SERVER_WORK)).items()}
    except asyncpg.PostgresError:   # pg_control_checkpoint: superusers only by default
        return None


def _server_work_line(first: dict[str, int] | None, last: dict[str, int] | None,
                      workers: int) -> str:
    """What PostgreSQL did between ``first`` and ``last`` (:func:`_server_work`), and the
    autovacuum workers seen at work before the first timed burst."""
    if first is None or last is None:
        return "PostgreSQL beside the timed bursts: not readable (pg_control_checkpoint)"
    segments = last["wal"] // _WAL_SEGMENT - first["wal"] // _WAL_SEGMENT
    return (f"PostgreSQL beside the timed bursts: {(last['wal'] - first['wal']) / 1024:,.0f} "
            f"kB of WAL (the server's, every database), {segments} segment switches; checkpoints: "
            f"{'one or more' if last['checkpoint'] != first['checkpoint'] else 'none'}; "
            f"autovacuum runs {last['autovacuums'] - first['autovacuums']}, autoanalyze runs "
            f"{last['autoanalyzes'] - first['autoanalyzes']} on the bench's database; "
            f"autovacuum workers at work (any database) before the first: {workers}")


async def _run(args: argparse.Namespace) -> int:
    from bench._advisors import summary
    from billing.settings import BillingSettings
    from callback_server.consult_billing import ConsultBilling, warm_connection
    from shared.db import create_pool
    from shared.site import settle_heap

    # the callback server's pool: its size, asyncpg's statement cache, each new connection
    # warmed as the server's are (--cold-connections: not, as this bench ran before)
    pool = await create_pool(await database(), min_size=2, max_size=args.pool,
                             warm=None if args.cold_connections else warm_connection)
    try:
        asks = await seed(pool, args.requests)
        billing = ConsultBilling(pool, BillingSettings(postpaid_merchants=frozenset({POSTPAID})),
                                 **({"max_batch": args.max_batch} if args.max_batch else {}),
                                 **({"max_in_flight": args.in_flight} if args.in_flight else {}))
        if not args.default_gc:
            settle_heap()   # as the callback server's serve, once started
        # warm the connections: each of the pool's learns the statements' types once, and
        # the batches take them in turn (two admission and two reservation batches a burst)
        # the first is what a server just started answers (its connections new)
        warming = [await burst(billing, asks, f"warm-{w}") for w in range(args.warm)]
        waits = _CpuWaits()
        await waits.find_backends(pool)
        first_work = await _server_work(pool)
        with _Collections() as collections:
            runs = [await burst(billing, asks, f"b{r}", waits=waits) for r in range(args.bursts)]
        last_work = await _server_work(pool)
        autovacuums = await _autovacuums(pool, waits.started)
        profile = Profile()
        if args.breakdown:  # profiled bursts of their own: the timed figures stay unprofiled
            profile.wrap(billing)
            profile.on = True
            for r in range(args.bursts):
                await burst(billing, asks, f"profiled-{r}", profile)
                profile.collect()
            profile.on = False
        steady = await paced(billing, asks, args.rate, args.seconds)
        batches = (billing.admitting.batches, billing.reserving.batches)
        one_at_a_time = await serial(billing, asks, "serial")
        bare = [await select_one(pool, len(asks)) for _ in range(args.bursts)]
    finally:
        await pool.close()
    print(f"group commit: {batches[0]:,} admission and {batches[1]:,} reservation batches "
          f"for the warm-up, the bursts and the paced run")
    if warming:
        print(f"the first burst on the pool just opened (untimed in the figures below; its "
              f"connections {'not ' if args.cold_connections else ''}warmed):\n  "
              f"{summary(warming[0][1])}")
    code = _report(args, asks, runs, steady, one_at_a_time, bare)
    print(f"each timed burst's slowest request (ms): "
          f"{', '.join(f'{max(took):.1f}' for _, took in runs)}; garbage collections "
          f"during the timed bursts: {collections}")
    print("each timed burst's wait for a CPU (ms, runnable but not running): the bench's "
          "process + the database's backends (their time on a CPU):\n  " + ", ".join(
              f"{own:.1f} + {backends:.1f} ({ran:.1f})" for own, backends, ran, _ in waits.bursts))
    print(_cpu_line(waits.bursts))
    print(_server_work_line(first_work, last_work, waits.autovacuum_workers))
    print(f"the bench's tables' autovacuum and autoanalyze runs (bursts from 0): {autovacuums}")
    if args.breakdown:
        _report_breakdown(args, asks, profile)
    return code


def _mix(asks: list[Ask]) -> str:
    postpaid = sum(a.merchant_id == POSTPAID for a in asks)
    households = max(1, len(asks) // (10 * HOUSEHOLD))
    shared = households * HOUSEHOLD
    return (f"{len(asks) - postpaid - shared} prepaid accounts of their own, {shared} "
            f"numbers of {households} households sharing a balance ({HOUSEHOLD} each), "
            f"{postpaid} postpaid with a card on file")


def _report(args: argparse.Namespace, asks: list[Ask], runs: list[tuple[float, list[float]]],
            steady: tuple[float, list[float]], one_at_a_time: tuple[float, list[float]],
            bare: list[tuple[float, list[float]]]) -> int:
    from bench._advisors import percentile, summary

    every = [ms for _, took in runs for ms in took]
    took_s = sum(s for s, _ in runs)
    p99 = percentile(sorted(every), 0.99)
    met = p99 <= TARGET_P99_MS
    print(f"requests: {_mix(asks)}; pool of {args.pool} connections")
    print(f"{args.bursts} bursts of {len(asks)} at once (admit + reserve the first slice), "
          f"{len(every):,} requests:\n  {summary(every)}   "
          f"{len(every) / took_s:,.0f} requests/s   "
          f"target p99 <= {TARGET_P99_MS} ms {'PASS' if met else 'MISS'}")
    p_took, p_ms = steady
    p_p99 = percentile(sorted(p_ms), 0.99)
    print(f"the same {len(asks)} callers asking {args.rate:,.0f} times a second in all "
          f"(Poisson arrivals, {args.seconds:.0f} s, {len(p_ms):,} requests):\n  "
          f"{summary(p_ms)}   p99 {'<=' if p_p99 <= TARGET_P99_MS else '>'} "
          f"{TARGET_P99_MS} ms")
    s_took, s_ms = one_at_a_time
    print(f"baseline, the same {len(asks)} one at a time:\n  {summary(s_ms)}   "
          f"{len(s_ms) / s_took:,.0f} requests/s")
    b_every = [ms for _, took in bare for ms in took]
    b_took = sum(s for s, _ in bare)
    print(f"baseline, {len(asks)} bare SELECT 1 at once on the same pool, {args.bursts} "
          f"bursts:\n  {summary(b_every)}   {len(b_every) / b_took:,.0f} round trips/s")
    print(f"target: p99 <= {TARGET_P99_MS} ms at {len(asks)} concurrent requests: "
          f"{'met' if met else 'NOT met'}")
    return 0 if met else 1


def _report_breakdown(args: argparse.Namespace, asks: list[Ask], profile: Profile) -> None:
    from bench._advisors import percentile

    print(f"where a request's ms go ({args.bursts} more bursts of {len(asks)} at once, "
          f"profiled; mean / p50 / p99 over the requests that have the part, n):")
    for name, ms in profile.parts.items():
        ordered = sorted(ms)
        print(f"  {name:<58} {sum(ms) / len(ms):7.3f} {percentile(ordered, 0.5):7.3f} "
              f"{percentile(ordered, 0.99):7.3f}  {len(ms):>5,}")
    print("the last profiled burst's timeline (ms from its first request's start):")
    for line in profile.timeline:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.billing_reserve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="concurrent requests")
    parser.add_argument("--bursts", type=int, default=10, help="timed bursts")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="requests a second in the paced run")
    parser.add_argument("--seconds", type=float, default=5.0, help="the paced run's length")
    parser.add_argument("--pool", type=int, default=POOL_SIZE, help="database connections")
    parser.add_argument("--max-batch", type=int, default=0,
                        help="ConsultBilling's max_batch (0: its default)")
    parser.add_argument("--in-flight", type=int, default=0,
                        help="ConsultBilling's max_in_flight (0: its default)")
    parser.add_argument("--warm", type=int, default=WARM_BURSTS,
                        help="untimed bursts first (each leaves every account one more "
                             "settled consultation: 100 for accounts with history)")
    parser.add_argument("--cold-connections", action="store_true",
                        help="open the pool's connections without the callback server's "
                             "warm-up (callback_server.consult_billing.warm_connection), as "
                             "this bench did before 2026-12-07")
    parser.add_argument("--default-gc", action="store_true",
                        help="leave Python's garbage collector as it starts (as this bench "
                             "ran before 2026-12-06 21:00 UTC) instead of settling the heap "
                             "as the callback server's serve does")
    parser.add_argument("--breakdown", action="store_true",
                        help="then profile as many bursts more: where a request's ms go")
    parser.add_argument("--asyncio", action="store_true",
                        help="run on asyncio's own event loop instead of uvloop (the "
                             "callback server's ``serve`` runs on uvloop)")
    args = parser.parse_args(argv)
    if args.requests < 20 or args.bursts < 1 or args.pool < 1 or args.rate <= 0 \
            or args.seconds <= 0 or args.warm < 0:
        parser.error("--requests: at least 20; --bursts, --pool: at least 1; --rate, "
                     "--seconds: above 0; --warm: at least 0")
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    if args.asyncio:
        print("event loop: asyncio's own (--asyncio)")
        return asyncio.run(_run(args))
    import uvloop

    print("event loop: uvloop, as the callback server's serve runs")
    return uvloop.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
