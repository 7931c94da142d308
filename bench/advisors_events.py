"""A presence change to its subscribers: from the commit to each SSE client's receipt.

Three processes and PostgreSQL on the same cores:

* the site: one aiohttp process with the advisors routes (``advisors.http.install``, as
  the callback site mounts them: its ``EventHub`` LISTENing on ``advisor_events``,
  ``GET /v1/advisors/events``), on uvloop with ``serve``'s options, plain HTTP;
* the subscribers: one process holding N concurrent ``GET /v1/advisors/events`` streams
  (aiohttp client, one connection each, the merchant's bearer token), noting when each
  event's ``id:`` line arrives on each stream;
* the driver (this process): presence changes applied through ``Presences.apply`` at a
  steady rate (break / working, to advisors not in a consultation) of a merchant with
  1,000 advisors in 50 groups (``bench._advisors``), each change timed when its commit
  returns.

A delivery's latency is its receipt minus its commit (``CLOCK_MONOTONIC``, one clock for
every process); PostgreSQL sends the NOTIFY and the commit's reply at once, so a receipt
may come a fraction of a millisecond before the driver sees its commit (a negative
latency). The subscribers' process competes with the site for the same cores (in use,
subscribers are elsewhere), and each process prints its CPU time and the time it was
runnable but waiting for a CPU (``/proc/PID/schedstat``). The baseline, in the same run
and on the same server: 1 subscriber, then the 1,000. Every subscriber must get every
change (a missing one is counted and fails the run). Target: p99 <= 1 s with 1,000
subscribers.

Each process needs a file descriptor per connection: when the soft limit is below what
the run needs, the benchmark raises it (to at most the hard limit) and says so.
PostgreSQL: ``DATABASE_URL``'s server, else the embedded one (database
``cbgw_bench_advisors``, re-created each run).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import resource
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

TARGET_P99_S = 1.0
MERCHANT = "bench-big"
TOKEN = "bench-advisors-events-token"


def _now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def raise_fd_limit(needed: int) -> str | None:
    """Raise this process's soft limit on open files to ``needed`` (at most the hard
    limit) when it is lower; what was done, or None."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return f"raised the soft limit on open files from {soft} to {wanted} (hard {hard})"


# --- the site (its own process) --------------------------------------------------------------


def _server_main(url: str, port: int, fds: int, ready: Any) -> None:
    import uvloop

    raise_fd_limit(fds)
    uvloop.install()
    asyncio.run(_serve(url, port, ready))


async def _serve(url: str, port: int, ready: Any) -> None:
    """The advisors routes as the callback site mounts them, served as ``serve`` serves."""
    import asyncpg
    from aiohttp import web

    from advisors.http import SERVICES_KEY, install
    from shared.db import create_pool
    from shared.http import TOKENS_KEY, MerchantTokens, error_middleware, token_digest
    from shared.link import serve_options
    from shared.site import settle_heap_on_startup

    pool_key = web.AppKey("bench_pool", asyncpg.Pool)
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([(MERCHANT, token_digest(TOKEN).decode())])

    async def database(app: web.Application) -> Any:
        app[pool_key] = await create_pool(url)
        yield
        await app[pool_key].close()

    app.cleanup_ctx.append(database)
    install(app, lambda a: (url, a[pool_key]), operators={})
    settle_heap_on_startup(app)
    runner = web.AppRunner(app, access_log=None, **serve_options())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.wait_for(app[SERVICES_KEY].hub.listening.wait(), 30)
    ready.set()
    await asyncio.Event().wait()  # until terminated


# --- the subscribers (their own process) -------------------------------------------------------


def _client_main(port: int, subscribers: int, fds: int, connected: Any, stop: Any,
                 out: Any) -> None:
    import uvloop

    raise_fd_limit(fds)
    uvloop.install()
    out.put(asyncio.run(_subscribe(port, subscribers, connected, stop)))


async def _subscribe(port: int, subscribers: int, connected: Any, stop: Any
                     ) -> dict[str, Any]:
    """``subscribers`` event streams; per stream, each event id and when it arrived."""
    import aiohttp

    received: list[list[tuple[int, float]]] = [[] for _ in range(subscribers)]
    opened = 0
    all_open = asyncio.Event()
    connecting = asyncio.Semaphore(100)
    url = f"http://127.0.0.1:{port}/v1/advisors/events"
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)

    async def stream(session: aiohttp.ClientSession, mine: list[tuple[int, float]]) -> None:
        nonlocal opened
        async with connecting:
            resp = await session.get(url, headers=headers)
            assert resp.status == 200, resp.status
            await resp.content.readline()  # the stream's opening comment
        opened += 1
        if opened == subscribers:
            all_open.set()
        async with resp:
            async for line in resp.content:
                if line.startswith(b"id: "):
                    mine.append((int(line[4:]), _now()))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        tasks = [asyncio.create_task(stream(session, mine)) for mine in received]
        started = _now()
        await asyncio.wait_for(all_open.wait(), 120)
        connect_s = _now() - started
        connected.set()
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"received": received, "connect_s": connect_s}


# --- the driver ---------------------------------------------------------------------------


@dataclass
class Phase:
    subscribers: int
    #: per change: (its commit's return, how long apply took), by event id
    commits: dict[int, tuple[float, float]]
    received: list[list[tuple[int, float]]]
    connect_s: float
    #: seconds on a CPU and seconds runnable but waiting for one, of the site's and the
    #: subscribers' event loops, from the first change to the end of the settling time
    site: tuple[float, float]
    clients: tuple[float, float]
    wall_s: float


def _schedstat(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of the process's main
    thread; zeros where ``/proc`` has no schedstat."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run_ns, wait_ns, _ = f.read().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


def _delta(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


async def _changes(url: str, advisors: list[int], count: int, rate: float, first_at: datetime
                   ) -> dict[datetime, tuple[float, float]]:
    """``count`` presence changes through ``Presences.apply`` at ``rate`` a second, each
    to the next of ``advisors`` (break, then working again); per change its ``at``, when
    its commit returned and how long the call took."""
    from advisors import presence as pm
    from advisors.live import Presences
    from advisors.model import Desk, Via
    from shared.db import create_pool

    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        live = Presences(pool)
        desks = {r["advisor_id"]: Desk(r["desk"]) for r in await pool.fetch(
            "SELECT advisor_id, desk FROM advisor_presence WHERE advisor_id = ANY($1::bigint[])",
            advisors)}
        done: dict[datetime, tuple[float, float]] = {}
        started = _now()
        for i in range(count):
            due = started + i / rate
            await asyncio.sleep(max(0.0, due - _now()))
            advisor = advisors[i % len(advisors)]
            at = first_at + timedelta(milliseconds=i + 1)
            event = (pm.SetBreak(at, Via.API, "bench") if desks[advisor] is not Desk.BREAK
                     else pm.SetWorking(at, Via.API))
            t0 = _now()
            presence, _ = await live.apply(MERCHANT, advisor, event)
            committed = _now()
            desks[advisor] = presence.desk
            done[at] = (committed, committed - t0)
        return done
    finally:
        await pool.close()


async def _event_ids(url: str, at: dict[datetime, tuple[float, float]]
                     ) -> dict[int, tuple[float, float]]:
    """The driver's changes by their event row's id."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, at FROM advisor_events WHERE merchant_id = $1 "
                                "AND at = ANY($2::timestamptz[])", MERCHANT, list(at))
    finally:
        await conn.close()
    return {r["id"]: at[r["at"]] for r in rows}


def _phase(args: argparse.Namespace, url: str, port: int, advisors: list[int],
           subscribers: int, first_at: datetime, site_pid: int) -> Phase:
    ctx = mp.get_context("spawn")
    connected, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    client = ctx.Process(target=_client_main, args=(port, subscribers, subscribers + 100,
                                                    connected, stop, out), daemon=True)
    client.start()
    try:
        if not connected.wait(180):
            raise RuntimeError(f"{subscribers} subscribers did not connect within 180 s")
        assert client.pid is not None
        site0, clients0, wall0 = _schedstat(site_pid), _schedstat(client.pid), _now()
        at = asyncio.run(_changes(url, advisors, args.changes, args.rate, first_at))
        time.sleep(args.settle)
        site1, clients1, wall1 = _schedstat(site_pid), _schedstat(client.pid), _now()
        stop.set()
        result = out.get(timeout=120)
    finally:
        client.join(30)
        if client.is_alive():
            client.terminate()
    commits = asyncio.run(_event_ids(url, at))
    return Phase(subscribers, commits, result["received"], result["connect_s"],
                 _delta(site0, site1), _delta(clients0, clients1), wall1 - wall0)


def _report(p: Phase, changes: int) -> tuple[float, int]:
    """Print a phase's figures; (p99 in seconds, deliveries missing)."""
    from bench._advisors import percentile, summary

    latencies, last_by_change = [], {}
    for mine in p.received:
        for event_id, at in mine:
            if event_id in p.commits:
                lat = at - p.commits[event_id][0]
                latencies.append(lat * 1000)
                last_by_change[event_id] = max(last_by_change.get(event_id, lat), lat)
    expected = len(p.commits) * p.subscribers
    missing = expected - len(latencies) + (changes - len(p.commits)) * p.subscribers
    ordered = sorted(latencies)
    print(f"  {p.subscribers:>5,} subscriber(s): {len(latencies):,} deliveries of "
          f"{len(p.commits)} changes, {missing} missing; connected in {p.connect_s:.1f} s")
    print(f"      commit -> receipt                 {summary(ordered)}")
    print(f"      commit -> the last subscriber     "
          f"{summary([v * 1000 for v in last_by_change.values()])}")
    print(f"      Presences.apply (the change)      "
          f"{summary([d * 1000 for _, d in p.commits.values()])}")
    for name, (run, wait) in (("site", p.site), ("subscribers", p.clients)):
        print(f"      {name + ' process':<21} on a CPU {run / p.wall_s:4.0%} of the time "
              f"({run * 1000 / max(1, len(p.commits)):5.1f} ms a change), runnable but "
              f"waiting for a CPU {wait / p.wall_s:4.0%}")
    return (percentile(ordered, 0.99) / 1000 if ordered else float("inf")), missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _prepare() -> tuple[str, list[int], str]:
    from bench._advisors import database, seed
    from shared.db import create_pool

    url = await database()
    pool = await create_pool(url)
    try:
        merchant = await seed(pool, MERCHANT, 1000, 50, lines=600, now=datetime.now(UTC),
                              rng=random.Random(20261205))
    finally:
        await pool.close()
    free = [a for s in ("working", "break", "standby", "offline")
            for a in merchant.states.get(s, ())]
    return url, sorted(free), merchant.describe()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.advisors_events", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=200, help="presence changes a phase")
    parser.add_argument("--rate", type=float, default=10.0, help="changes a second")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait for deliveries after the last change")
    parser.add_argument("--compare", type=int, default=1,
                        help="rounds of (1 subscriber, then --subscribers)")
    args = parser.parse_args(argv)
    if args.subscribers < 1 or args.changes < 10 or args.rate <= 0:
        parser.error("--subscribers: at least 1; --changes: at least 10; --rate: above 0")
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    raised = raise_fd_limit(args.subscribers + 100)
    if raised:
        print(f"file descriptors: {raised}; the site's and the subscribers' processes "
              f"raise theirs the same way")
    url, advisors, described = asyncio.run(_prepare())
    print(f"seeded {described}\n{args.changes} changes a phase at {args.rate:g}/s through "
          f"Presences.apply (break / working, {len(advisors)} advisors not in a "
          f"consultation); one site process, one subscribers' process", flush=True)
    ctx = mp.get_context("spawn")
    ready, port = ctx.Event(), _free_port()
    server = ctx.Process(target=_server_main, args=(url, port, args.subscribers + 200, ready),
                         daemon=True)
    server.start()
    worst_p99, missing = 0.0, 0
    try:
        if not ready.wait(60):
            raise RuntimeError("the site did not start within 60 s")
        first_at = datetime.now(UTC)
        for count in (1, args.subscribers) * args.compare:
            first_at += timedelta(minutes=1)
            assert server.pid is not None
            phase = _phase(args, url, port, advisors, count, first_at, server.pid)
            p99, lost = _report(phase, args.changes)
            missing += lost
            if count == args.subscribers:
                worst_p99 = max(worst_p99, p99)
    finally:
        server.terminate()
        server.join(10)
    met = worst_p99 <= TARGET_P99_S and missing == 0
    print(f"target: commit -> subscriber p99 <= {TARGET_P99_S:g} s with {args.subscribers:,} "
          f"subscribers, every change delivered: {'met' if met else 'NOT met'} "
          f"(p99 {worst_p99 * 1000:.1f} ms, {missing} missing)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
