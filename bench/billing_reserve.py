"""Reserve + authorise a consultation, 200 at once, against PostgreSQL.

What a consultation pays in billing before any advisor is rung, as
:class:`~callback_server.consult_runner.ConsultRunner` pays it: admission
(:meth:`callback_server.consult_billing.ConsultBilling.admit`: the customer's account by
the called number, the merchant's policy, the facts :func:`billing.admission.decide`
decides on) and, prepaid, the meter's first slice (:meth:`ConsultBilling.reserve` with
the meter's ``first_slice_s``: :func:`billing.ledger.reserve_all` under the accounts'
locks). Both are group-committed: the asks that arrive together are one admission
statement, then one reservation transaction, per batch (the report counts the batches).
No Stripe call is on this path: a postpaid admission reads the card on file and the
charges from the database.

The account mix of one burst of N requests (N=200 by default), each a distinct
consultation: most from distinct prepaid accounts, a tenth from households of four
numbers sharing one balance (their reservations queue on the account's lock), a tenth
from postpaid accounts with a card on file (recorded in the database as a confirmed
registration would leave it), at 100 to 400 yen a minute. A burst is N asyncio tasks
started at once on a pool of the callback server's size (``[database] max_connections``,
10); each request's time runs from its start to its answer, the wait for a pooled
connection included. Its reservations are settled (0 s, untimed) before the next burst.

Baselines in the same run: the same N requests one at a time, and N concurrent bare
``SELECT 1`` round trips on the same pool (what the pool's queueing alone costs).

Target (the billing issue): p99 <= 10 ms at 200 concurrent requests. PostgreSQL:
``DATABASE_URL``'s server, else the embedded one (database ``cbgw_bench_billing``,
re-created each run).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

TARGET_P99_MS = 10.0
DATABASE = "cbgw_bench_billing"
PREPAID, POSTPAID = "bench-prepaid", "bench-postpaid"
#: the callback server's pool (``[database] max_connections``' default)
POOL_SIZE = 10
HOUSEHOLD = 4
PRICES = (100, 200, 300, 400)
DEPOSIT_YEN = 100_000
#: untimed bursts first, so that every pooled connection has run the statements
WARM_BURSTS = 3


@dataclass(frozen=True)
class Ask:
    merchant_id: str
    number: str
    price_per_minute_yen: int


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
    asks = [Ask(merchant, num, PRICES[i % len(PRICES)])
            for i, (merchant, _, nums) in enumerate(accounts) for num in nums]
    return asks


async def authorise(billing: Any, ask: Ask, consultation_id: str) -> tuple[float, int | None]:
    """One consultation's admission and, prepaid, its first slice: ms, reservation id."""
    from callback_server import consult_meter
    from shared.phone import E164

    t0 = time.perf_counter()
    plan = await billing.admit(ask.merchant_id, E164.parse(ask.number),
                               ask.price_per_minute_yen)
    reserved = None
    if plan.admission.allowed and not plan.postpaid:
        first = consult_meter.new_meter(consultation_id).first_slice_s()
        got = await billing.reserve(ask.merchant_id, plan, consultation_id, first)
        reserved = getattr(got, "id", None)
        assert reserved is not None, got
    assert plan.admission.allowed, plan
    return (time.perf_counter() - t0) * 1000, reserved


async def burst(billing: Any, asks: list[Ask], tag: str) -> tuple[float, list[float]]:
    """All requests at once: seconds for all, each request's ms; settled after (untimed)."""
    started = time.perf_counter()
    done = await asyncio.gather(*(authorise(billing, a, f"{tag}-{i}")
                                  for i, a in enumerate(asks)))
    took_s = time.perf_counter() - started
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
    at, tasks = 0.0, list[asyncio.Task[tuple[float, int | None]]]()
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


async def release(billing: Any, done: list[tuple[float, int | None]]) -> None:
    for _, reservation in done:
        if reservation is not None:
            await billing.settle(PREPAID, reservation, 0)


async def select_one(pool: asyncpg.Pool, count: int) -> tuple[float, list[float]]:
    async def one() -> float:
        t0 = time.perf_counter()
        await pool.fetchval("SELECT 1")
        return (time.perf_counter() - t0) * 1000

    started = time.perf_counter()
    took = await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - started, list(took)


async def _run(args: argparse.Namespace) -> int:
    from billing.settings import BillingSettings
    from callback_server.consult_billing import ConsultBilling
    from shared.db import create_pool

    pool = await create_pool(await database(), min_size=2, max_size=args.pool)
    try:
        asks = await seed(pool, args.requests)
        billing = ConsultBilling(pool, BillingSettings(postpaid_merchants=frozenset({POSTPAID})))
        # warm the connections: each of the pool's learns the statements' types once, and
        # the batches take them in turn (two admission and two reservation batches a burst)
        for w in range(WARM_BURSTS):
            await burst(billing, asks, f"warm-{w}")
        runs = [await burst(billing, asks, f"b{r}") for r in range(args.bursts)]
        steady = await paced(billing, asks, args.rate, args.seconds)
        batches = (billing.admitting.batches, billing.reserving.batches)
        one_at_a_time = await serial(billing, asks, "serial")
        bare = [await select_one(pool, len(asks)) for _ in range(args.bursts)]
    finally:
        await pool.close()
    print(f"group commit: {batches[0]:,} admission and {batches[1]:,} reservation batches "
          f"for the warm-up, the bursts and the paced run")
    return _report(args, asks, runs, steady, one_at_a_time, bare)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.billing_reserve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="concurrent requests")
    parser.add_argument("--bursts", type=int, default=10, help="timed bursts")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="requests a second in the paced run")
    parser.add_argument("--seconds", type=float, default=5.0, help="the paced run's length")
    parser.add_argument("--pool", type=int, default=POOL_SIZE, help="database connections")
    args = parser.parse_args(argv)
    if args.requests < 20 or args.bursts < 1 or args.pool < 1 or args.rate <= 0 \
            or args.seconds <= 0:
        parser.error("--requests: at least 20; --bursts, --pool: at least 1; --rate, "
                     "--seconds: above 0")
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
