"""Benchmark: the edge's relay drains a backlog of call-back requests into the callback
site's real intake, over a link with the round-trip time between Tokyo and the US.

    .venv/bin/python -m bench.relay_drain [--messages 16000] [--delay-ms 60] [--compare 1]
        [--passes 1,16]

What runs, each in its own process, on this machine's cores:

* **the edge's relay**: :func:`edge_server.app.edge_relay` over the edge's outbox in
  its own database, with the edge's link client
  (:func:`shared.site.link_client`: mutual TLS, Ed25519, route health probes), all from
  ``deploy/edge.example.toml``; on uvloop as ``serve`` runs it. Claims of 64 messages,
  32 call-back requests per signed batch request, up to ``passes_in_flight`` claims'
  deliveries under way at once (``[peer] passes_in_flight``, default 16).
* **the link**: :mod:`tests.faults.proxy` adding ``--delay-ms`` each way (default 60:
  120 ms round trip). It stands in for the WAN; its CPU is reported apart, as a real
  WAN costs this machine nothing.
* **the callback site**: 2 intake processes, composed and served as ``callback_server
  serve --role intake`` does (``bench.link_intake``'s servers): verify, guard
  screening, durable group commit, answers.
* PostgreSQL (embedded, or ``DATABASE_URL``) holds both sites' databases.

The backlog (``--messages`` call-back requests, each a new caller, as the edge writes
them) is in the edge's outbox before the clock starts, as after a partition. The clock
runs from the relay's start to its last message settled. Reported: messages per second
over the whole drain and over its middle (10 % to 90 % delivered), batch requests, CPU
per message of the relay, the callback servers, PostgreSQL and the proxy, and the
checks: every message delivered and answered 202 once (attempts = messages), every one
stored once at the callback site.

Baseline in the same invocation: ``passes_in_flight = 1``, the relay before its window
of claims in flight (2026-12-02), against the default 16 (``--passes`` picks others);
``--compare N`` alternates N rounds of them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.link_intake import (
    _REPO,
    _pki,
    _postgres_cpu_us,
    _prepare_db,
    _server_main,
)
from shared.link_policy import DEFAULT_PASSES_IN_FLIGHT

CALLER_BASE = 10_000_000
EDGE_DATABASE = "cbgw_bench_edge"


def _edge_config(pki_dir: Path) -> Path:
    path = pki_dir / "edge.toml"
    path.write_text((_REPO / "deploy" / "edge.example.toml").read_text()
                    .replace("../var/pki", str(pki_dir)))
    return path


async def _prepare_edge(edge_url: str, count: int) -> None:
    """The edge's outbox holding ``count`` due call-back requests, nothing else."""
    import asyncpg

    from edge_server.store import CALLBACK_KIND, CALLBACK_PATH
    from shared.db import MigrationSet, migrate_url
    from shared.outbox import encode

    await migrate_url(edge_url, [MigrationSet("link", _REPO / "shared" / "migrations")])
    conn = await asyncpg.connect(edge_url)
    try:
        await conn.execute("TRUNCATE outbox")
        records = []
        for i in range(count):
            call = f"edge-{uuid.uuid4().hex}"
            payload = {"edge_call_id": call, "merchant_id": "acme",
                       "caller": f"+8190{CALLER_BASE + i}", "dialed": "+81120123456",
                       "received_at": "2026-12-02T01:02:03.456Z",
                       "hungup_at": "2026-12-02T01:02:09.120Z", "announce_mode": "early_media"}
            records.append((uuid.uuid4(), CALLBACK_KIND, CALLBACK_PATH, encode(payload), "acme",
                            False))
        await conn.copy_records_to_table(
            "outbox", records=records,
            columns=["message_id", "kind", "path", "body", "merchant_id", "held"])
        await conn.execute("VACUUM ANALYZE outbox")
    finally:
        await conn.close()


def _relay_main(pki_dir: str, edge_url: str, proxy_port: int, passes: int, count: int,
                out: Any) -> None:
    import uvloop

    out.put(uvloop.run(_relay(Path(pki_dir), edge_url, proxy_port, passes, count)))


async def _relay(pki_dir: Path, edge_url: str, proxy_port: int, passes: int,
                 count: int) -> dict[str, Any]:
    """Drain the backlog with the edge's relay; the timeline and the relay's CPU."""
    from edge_server.app import edge_relay
    from edge_server.config import EdgeSettings
    from shared.db import create_pool
    from shared.site import link_client

    settings = EdgeSettings.load(_edge_config(pki_dir), environ={
        "EDGE__DATABASE__URL": edge_url,
        "EDGE__PEER__ROUTES": f'[{{name = "internet", url = "https://127.0.0.1:{proxy_port}"}}]'})
    db = settings.database
    pool = await create_pool(edge_url, min_size=db.min_connections, max_size=db.max_connections)
    client = link_client(settings.signing, settings.tls, settings.peer)
    await client.start()
    relay = edge_relay(pool, edge_url, client, settings)
    relay.passes_in_flight = passes
    timeline: list[tuple[float, int]] = []
    cpu0, started = time.process_time(), time.perf_counter()
    task = asyncio.create_task(relay.run())
    try:
        while relay.delivered < count:
            if task.done():
                task.result()  # raises what stopped the relay
                raise RuntimeError("the relay stopped before the backlog was drained")
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"not drained in 900 s: {relay.delivered} of {count}")
            await asyncio.sleep(0.02)
            timeline.append((time.perf_counter() - started, relay.delivered))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered,"
        " count(*) FILTER (WHERE response_status = 202) AS answered_202,"
        " count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead, sum(attempts) AS attempts"
        " FROM outbox")
    await pool.close()
    assert row is not None
    return {"elapsed": elapsed, "relay_cpu_s": cpu, "timeline": timeline,
            "batches": relay.batches_sent, **{k: int(row[k] or 0) for k in row.keys()}}


def _proc_cpu_us(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()
    return int((int(fields[11]) + int(fields[12])) * 1e6 / os.sysconf("SC_CLK_TCK"))


def _start_proxy(target_port: int, delay_ms: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.proxy", "--listen", "127.0.0.1:0",
         "--target", f"127.0.0.1:{target_port}", "--delay-ms", str(delay_ms),
         "--name", "wan", "--log-level", "WARNING"],
        cwd=_REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "listening 127.0.0.1:PORT"
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError(f"the delay proxy did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def _at(timeline: list[tuple[float, int]], share: float, count: int) -> float:
    """When ``share`` of the ``count`` messages had been delivered."""
    return next(t for t, n in timeline if n >= share * count)


def _run(args: argparse.Namespace, callback_url: str, edge_url: str, pki_dir: Path,
         passes: int) -> dict[str, Any]:
    asyncio.run(_prepare_db(callback_url, quiet=True))
    asyncio.run(_prepare_edge(edge_url, args.messages))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    servers, stats = [], []
    proxy = None
    try:
        for _ in range(2):
            ready = ctx.Event()
            counters = ctx.Array("q", 4, lock=False)
            proc = ctx.Process(target=_server_main, args=(
                str(pki_dir), callback_url, port, True, 16, "callback-batch",
                {"max_in_flight": 2, "linger_s": 0.0}, counters, ready), daemon=True)
            proc.start()
            if not ready.wait(60):
                raise RuntimeError("a callback server did not start")
            servers.append(proc)
            stats.append(counters)
        proxy, proxy_port = _start_proxy(port, args.delay_ms)
        out = ctx.Queue()
        relay = ctx.Process(target=_relay_main, args=(str(pki_dir), edge_url, proxy_port,
                                                      passes, args.messages, out))
        before = (sum(int(c[3]) for c in stats), _postgres_cpu_us(), _proc_cpu_us(proxy.pid))
        relay.start()
        result: dict[str, Any] = out.get(timeout=1000)
        after = (sum(int(c[3]) for c in stats), _postgres_cpu_us(), _proc_cpu_us(proxy.pid))
        relay.join(30)
        time.sleep(0.3)  # the servers' last counters
        handled = sum(int(c[1]) for c in stats)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        for proc in servers:
            proc.terminate()
            proc.join(10)
    stored = asyncio.run(_count_stored(callback_url))
    n = args.messages
    timeline = result.pop("timeline")
    t10, t90 = _at(timeline, 0.1, n), _at(timeline, 0.9, n)
    return {**result, "passes": passes, "messages": n, "stored": stored, "handled": handled,
            "rate": n / result["elapsed"], "middle_rate": 0.8 * n / max(1e-9, t90 - t10),
            "relay_us": result["relay_cpu_s"] * 1e6 / n,
            "server_us": (after[0] - before[0]) / n, "postgres_us": (after[1] - before[1]) / n,
            "proxy_us": (after[2] - before[2]) / n}


async def _count_stored(db_url: str) -> int:
    """Call-back requests queued at the callback site, each with its message id."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        n: int = await conn.fetchval(
            "SELECT count(DISTINCT b.edge_call_id) FROM callback_requests b"
            " JOIN inbound_messages m USING (message_id) WHERE b.status = 'queued'")
        return n
    finally:
        await conn.close()


def _problems(r: dict[str, Any]) -> list[str]:
    n = r["messages"]
    found = []
    if r["delivered"] != n or r["answered_202"] != n or r["dead"]:
        found.append(f"edge outbox: {r['delivered']} delivered, {r['answered_202']} answered "
                     f"202, {r['dead']} dead of {n}")
    if r["attempts"] != n:
        found.append(f"{r['attempts']} attempts for {n} messages (retries)")
    if r["stored"] != n:
        found.append(f"callback site stored {r['stored']} of {n}")
    return found


def _report(r: dict[str, Any]) -> None:
    problems = _problems(r)
    print(f"  passes_in_flight={r['passes']}: {r['messages']:,} call-back requests in "
          f"{r['elapsed']:.1f} s = {r['rate']:,.0f}/s (10-90 %: {r['middle_rate']:,.0f}/s); "
          f"{r['batches']:,} batch requests; CPU/message: relay {r['relay_us']:.0f} µs, "
          f"callback servers {r['server_us']:.0f} µs, PostgreSQL {r['postgres_us']:.0f} µs "
          f"(both sites), delay proxy {r['proxy_us']:.0f} µs; "
          + ("every message delivered, answered 202 and stored once" if not problems
             else "PROBLEMS: " + "; ".join(problems)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_drain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=16_000,
                        help="call-back requests in the edge's backlog")
    parser.add_argument("--delay-ms", type=float, default=60.0,
                        help="one-way delay of the link (60: 120 ms round trip)")
    parser.add_argument("--compare", type=int, default=1, metavar="ROUNDS",
                        help="alternate the --passes settings, ROUNDS of each")
    parser.add_argument("--passes", default=f"1,{DEFAULT_PASSES_IN_FLIGHT}", metavar="P,P...",
                        help="passes_in_flight settings to compare (default: 1, the relay "
                             f"before its window, and {DEFAULT_PASSES_IN_FLIGHT}, its default)")
    args = parser.parse_args(argv)
    try:
        settings = [int(p) for p in args.passes.split(",")]
    except ValueError:
        parser.error(f"--passes: comma-separated integers, not {args.passes!r}")
    if not settings or min(settings) < 1:
        parser.error("--passes: each at least 1")
    if args.messages < 100:
        parser.error("--messages: at least 100")
    from bench._machine import speed_line
    from shared.db import resolve_url

    callback_url = resolve_url(None, "cbgw_bench")
    edge_url = resolve_url(None, EDGE_DATABASE)
    asyncio.run(_prepare_db(callback_url))
    print(speed_line())
    print(f"edge relay -> delay proxy ({args.delay_ms:g} ms each way) -> 2 callback intake "
          f"processes; backlog {args.messages:,} call-back requests; cores={os.cpu_count()}",
          flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="cbgw-bench-relay-") as tmp:
        pki_dir = Path(tmp)
        _pki(pki_dir)
        for passes in settings * max(1, args.compare):
            r = _run(args, callback_url, edge_url, pki_dir, passes)
            _report(r)
            runs.append(r)
    failed = False
    for passes in dict.fromkeys(settings):
        mine = [r for r in runs if r["passes"] == passes]
        print(f"passes_in_flight={passes}: median {statistics.median(r['rate'] for r in mine):,.0f}"
              f" call-back requests/s end to end (10-90 %: "
              f"{statistics.median(r['middle_rate'] for r in mine):,.0f}/s) over "
              f"{len(mine)} run(s)")
        failed = failed or any(_problems(r) for r in mine)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
