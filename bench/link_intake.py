"""Benchmark: signed intake on the link = verify + store durably + acknowledge.

    .venv/bin/python -m bench.link_intake [--seconds 10] [--connections 64] [--uvloop]
                                          [--server-procs 1] [--client-procs 1]

The server is the real stack a site uses: aiohttp with mutual TLS and
:func:`shared.link.serve_options`, :func:`shared.link.signature_middleware`
(Ed25519 verify of the raw body), then one transaction per request holding
:func:`shared.link.accept_once` (the message id row) and an INSERT of the
payload, committed with PostgreSQL's default ``synchronous_commit = on``
(durable), then ``202``. The load comes from separate processes
(``multiprocessing``, spawn): aiohttp clients holding ``--connections``
keep-alive TLS connections in total. Requests are signed before the clock
starts (signing is the sender's cost, not intake's); every one has its own
message id, so each is a real first delivery.

Prints requests/s, p50/p90/p99 latency, and the comparison with the target
(>= 5,000/s) in the same run. PostgreSQL is ``DATABASE_URL`` or the embedded
server. Everything (load generator, server, PostgreSQL) shares this machine's
cores; see bench/README.md ("Link") for figures and what limits them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

TARGET_RPS = 5000
_REPO = Path(__file__).resolve().parent.parent
PATH = "/v1/link/bench"


def _pki(directory: Path) -> None:
    from shared import pki

    pki.init(directory, ["edge", "callback"])


# --- server --------------------------------------------------------------------------------


def _server_main(pki_dir: str, db_url: str, port: int, use_uvloop: bool, pool_size: int,
                 ready: Any) -> None:
    if use_uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(_serve(Path(pki_dir), db_url, port, pool_size, ready))


async def _serve(pki_dir: Path, db_url: str, port: int, pool_size: int, ready: Any) -> None:
    from aiohttp import web

    from shared import pki
    from shared.db import create_pool
    from shared.http import error_middleware
    from shared.link import (
        VERIFIER_KEY,
        accept_once,
        message_id,
        raw_body,
        serve_options,
        signature_middleware,
    )
    from shared.signing import Verifier, load_public_key

    pool = await create_pool(db_url, min_size=pool_size, max_size=pool_size)
    app = web.Application(middlewares=[error_middleware, signature_middleware])
    app[VERIFIER_KEY] = Verifier({"edge-sign-1": load_public_key(pki_dir / "edge-sign-1.pub")})

    async def intake(request: web.Request) -> web.Response:
        mid = message_id(request)
        body = raw_body(request)

        async def store(conn: Any) -> tuple[int, dict[str, Any]]:
            await conn.execute("INSERT INTO bench_intake (message_id, body) VALUES ($1, $2)",
                               mid, body)
            return 202, {"status": "queued"}

        async with pool.acquire() as conn, conn.transaction():
            status, answer = await accept_once(conn, mid, "bench", store)
        return web.json_response(answer, status=status)

    app.router.add_post(PATH, intake)
    runner = web.AppRunner(app, access_log=None, **serve_options())
    await runner.setup()
    ctx = pki.server_context(pki_dir / "callback.pem", pki_dir / "callback.key",
                             pki_dir / "ca.pem")
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx, backlog=4096,
                      reuse_port=True).start()
    ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await pool.close()


# --- load generator (separate process) -------------------------------------------------------


def _client_main(pki_dir: str, port: int, connections: int, seconds: float, warmup: float,
                 use_uvloop: bool, out: Any) -> None:
    if use_uvloop:
        import uvloop

        uvloop.install()
    out.put(asyncio.run(_load(Path(pki_dir), port, connections, seconds, warmup)))


def _presign(pki_dir: Path, count: int) -> list[tuple[bytes, dict[str, str]]]:
    from shared.signing import Signer, SigningKey

    signer = Signer([SigningKey.load(pki_dir / "edge-sign-1.key")])
    reqs = []
    for i in range(count):
        body = json.dumps({"edge_call_id": f"edge-{uuid.uuid4().hex}", "merchant_id": "acme",
                           "caller": "+819012345678", "dialed": "+81120123456",
                           "received_at": "2026-11-22T01:02:03.456Z",
                           "announce_mode": "early_media", "seq": i},
                          separators=(",", ":")).encode()
        headers = signer.headers("POST", PATH, body)
        headers["content-type"] = "application/json"
        reqs.append((body, headers))
    return reqs


async def _load(pki_dir: Path, port: int, connections: int, seconds: float,
                warmup: float) -> dict[str, Any]:
    import aiohttp

    from shared import pki

    budget = int((seconds + warmup) * 9000) + connections  # more than this box can send
    reqs = _presign(pki_dir, budget)
    ctx = pki.client_context(pki_dir / "ca.pem", pki_dir / "edge.pem", pki_dir / "edge.key")
    url = f"https://127.0.0.1:{port}{PATH}"
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    counted = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, counted
        while True:
            now = loop.time()
            if now >= stop_at or next_index >= len(reqs):
                return
            body, headers = reqs[next_index]
            next_index += 1
            t0 = loop.time()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 202
                    key = str(resp.status)
            except aiohttp.ClientError as exc:
                ok, key = False, type(exc).__name__
            t1 = loop.time()
            if t0 >= measure_from and t1 <= stop_at:
                if ok:
                    latencies.append(t1 - t0)
                    counted += 1
                else:
                    errors[key] = errors.get(key, 0) + 1

    connector = aiohttp.TCPConnector(ssl=ctx, limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        handshakes = len(connector._conns) if hasattr(connector, "_conns") else -1
    return {"ok": counted, "errors": errors, "seconds": seconds,
            "latencies": latencies, "presigned": len(reqs), "used": next_index,
            "pooled": handshakes}


# --- orchestration --------------------------------------------------------------------------


async def _prepare_db(db_url: str) -> None:
    import asyncpg

    from shared.db import MigrationSet, migrate_url

    await migrate_url(db_url, [MigrationSet("link", _REPO / "shared" / "migrations")])
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_intake (message_id text PRIMARY "
                           "KEY, body bytea NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        await conn.execute("TRUNCATE bench_intake")
        await conn.execute("DELETE FROM inbound_messages WHERE kind = 'bench'")
        settings = {r["name"]: r["setting"] for r in await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('synchronous_commit', 'fsync', 'wal_sync_method', 'server_version')")}
    finally:
        await conn.close()
    print(f"PostgreSQL {settings.get('server_version')}: synchronous_commit="
          f"{settings.get('synchronous_commit')}, fsync={settings.get('fsync')}, "
          f"wal_sync_method={settings.get('wal_sync_method')}")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.link_intake", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--server-procs", type=int, default=1)
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--pool", type=int, default=16, help="DB connections per server")
    parser.add_argument("--uvloop", action="store_true", help="uvloop in server and client")
    args = parser.parse_args(argv)

    from shared.db import resolve_url

    db_url = resolve_url(None, "cbgw_bench")
    asyncio.run(_prepare_db(db_url))
    pki_dir = Path(tempfile.mkdtemp(prefix="cbgw-bench-pki-"))
    _pki(pki_dir)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    ctx = mp.get_context("spawn")
    servers = []
    for _ in range(args.server_procs):
        ready = ctx.Event()
        proc = ctx.Process(target=_server_main, args=(str(pki_dir), db_url, port, args.uvloop,
                                                      args.pool, ready), daemon=True)
        proc.start()
        if not ready.wait(30):
            print("server did not start", file=sys.stderr)
            return 1
        servers.append(proc)
    out = ctx.Queue()
    per_client = max(1, args.connections // args.client_procs)
    clients = [ctx.Process(target=_client_main, args=(str(pki_dir), port, per_client,
                                                      args.seconds, args.warmup, args.uvloop,
                                                      out)) for _ in range(args.client_procs)]
    for c in clients:
        c.start()
    results = [out.get(timeout=args.seconds + args.warmup + 120) for _ in clients]
    for c in clients:
        c.join(10)
    for proc in servers:
        proc.terminate()
        proc.join(10)

    latencies = [x for r in results for x in r["latencies"]]
    ok = sum(r["ok"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    rps = ok / args.seconds
    exhausted = any(r["used"] >= r["presigned"] for r in results)
    verdict = "MEETS" if rps >= TARGET_RPS else "BELOW"
    print(f"cores={os.cpu_count()} python={sys.version.split()[0]} "
          f"uvloop={'yes' if args.uvloop else 'no'} server_procs={args.server_procs} "
          f"client_procs={args.client_procs} connections={args.connections} "
          f"pool={args.pool}/server seconds={args.seconds}")
    print(f"signed intake (verify + accept_once + insert, one durable commit, 202): "
          f"{rps:,.0f} req/s  p50 {_pct(latencies, 0.5) * 1000:.1f} ms  "
          f"p90 {_pct(latencies, 0.9) * 1000:.1f} ms  p99 {_pct(latencies, 0.99) * 1000:.1f} ms"
          f"  mean {statistics.fmean(latencies) * 1000 if latencies else float('nan'):.1f} ms"
          f"  errors {errors or 0}")
    print(f"target >= {TARGET_RPS:,}/s: {verdict} ({rps / TARGET_RPS:.0%} of target)"
          + ("  [pre-signed requests ran out: raise the budget]" if exhausted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
