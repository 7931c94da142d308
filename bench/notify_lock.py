"""Benchmark: what a NOTIFY costs a committing transaction, against the same transaction
without one.

    .venv/bin/python -m bench notify_lock [--concurrency 16] [--seconds 5] [--rounds 2]

PostgreSQL takes one lock for the whole cluster when a transaction that issued NOTIFY
commits (``pg_locks`` locktype ``object``, database 0, class 1262, AccessExclusive: from
``PreCommit_Notify`` to the end of the commit), so such transactions commit one after
another, each through its own WAL flush, where transactions without a NOTIFY share their
flushes (group commit). Here ``--concurrency`` connections each commit, as fast as they
can for ``--seconds``, the transaction the sites write a sendable link message in:
``BEGIN``, the outbox insert as :meth:`shared.outbox.Outbox.enqueue` does it, ``COMMIT``.
Three ways, alternated ``--rounds`` times in one run:

* **held** (the baseline): the message written held, so the outbox trigger sends no
  NOTIFY; the same row, the same indexes, the same WAL.
* **notify**: the message written sendable by a session of a process without a relay
  (a CLI's): the trigger NOTIFYs ``outbox``, as every sendable message did before
  migration ``link/0004``.
* **in-process**: the message written sendable by a session of a process whose own relay
  runs (:func:`shared.db.watching`; ``cbgw.outbox_wake = 'in-process'``): since
  ``link/0004`` no NOTIFY (since ``link/0005`` a NOTICE to the session instead), the
  relay woken in the process after the commit.

Per way: transactions a second, the transaction's time (``BEGIN`` to ``COMMIT``
returned) p50 / p99, and the sessions waiting on the NOTIFY lock (``pg_stat_activity``
``Lock/object``, sampled every 20 ms), mean and most. PostgreSQL is ``DATABASE_URL``'s
server, else the embedded one (database ``cbgw_bench_notify``, made afresh).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg

DATABASE = "cbgw_bench_notify"
WAYS = ("held", "notify", "in-process")
#: what a process whose relay runs sets on its sessions (shared.db.watching)
IN_PROCESS = {"cbgw.outbox_wake": "in-process"}


async def _database() -> str:
    import shared
    from shared.db import fresh_database, migrate_url, package_migrations, resolve_url

    server = await asyncio.to_thread(resolve_url, None, "postgres")
    url = await fresh_database(server, DATABASE)
    await migrate_url(url, [package_migrations("link", shared.__file__)])
    return url


async def _commits(conn: asyncpg.Connection, held: bool, until: float,
                   took: list[float]) -> None:
    from shared.outbox import Outbox

    while time.monotonic() < until:
        started = time.perf_counter()
        async with conn.transaction():
            await Outbox.enqueue(conn, kind="bench", path="/v1/bench",
                                 payload={"n": len(took)}, merchant_id="acme", held=held)
        took.append(time.perf_counter() - started)


async def _sample_waits(url: str, until: float) -> list[int]:
    conn = await asyncpg.connect(url)
    waits: list[int] = []
    try:
        while time.monotonic() < until:
            waits.append(await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND wait_event = 'object'"))
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return waits


async def _way(url: str, way: str, concurrency: int, seconds: float) -> str:
    settings = IN_PROCESS if way == "in-process" else {}
    conns = [await asyncpg.connect(url, server_settings=settings) for _ in range(concurrency)]
    try:
        await conns[0].execute("TRUNCATE outbox")
        took: list[float] = []
        until = time.monotonic() + seconds
        started = time.monotonic()
        waits, *_ = await asyncio.gather(
            _sample_waits(url, until),
            *(_commits(c, way == "held", until, took) for c in conns))
        elapsed = time.monotonic() - started
    finally:
        for c in conns:
            await c.close()
    took.sort()
    p50 = took[len(took) // 2] * 1000
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))] * 1000
    return (f"{way:>10}: {len(took) / elapsed:7.0f} transactions/s, p50 {p50:6.2f} ms, "
            f"p99 {p99:6.2f} ms; waiting on the NOTIFY lock: mean "
            f"{statistics.fmean(waits or [0]):.1f}, most {max(waits or [0])} of {concurrency}")


async def _run(args: argparse.Namespace) -> int:
    url = await _database()
    print(f"{args.concurrency} connections, {args.seconds:g} s a way, {args.rounds} rounds; "
          "each transaction: BEGIN, the outbox insert, COMMIT", flush=True)
    for n in range(args.rounds):
        order = WAYS if n % 2 == 0 else tuple(reversed(WAYS))
        for way in order:
            print(await _way(url, way, args.concurrency, args.seconds), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench notify_lock", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16, help="committing connections")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per way and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three ways")
    return asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
