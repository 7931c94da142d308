"""Benchmark: signed intake on the link = verify + store durably + acknowledge.

    .venv/bin/python -m bench.link_intake [--seconds 8] [--connections 64] [--no-uvloop]
        [--server-procs 2] [--client-procs 1] [--compare ROUNDS]
        [--mode batch|single|callback|callback-single|callback-batch|no-db] [--messages 32]
        [--max-batch N] [--in-flight 2] [--linger-ms 0] [--client raw|aiohttp] [--pipeline 1]

The server is the real stack a site uses: aiohttp with mutual TLS and
:func:`shared.link.serve_options`, :func:`shared.link.signature_middleware`
(Ed25519 verify of the raw body), then the message id recorded once and the
payload stored, committed with PostgreSQL's default ``synchronous_commit = on``
(durable), then ``202``. Two ways to store (``--mode``):

* ``batch`` (default): :class:`shared.intake_batch.IntakeBatcher`, group
  commit: concurrent requests share one statement (message ids + payload rows,
  ``ON CONFLICT`` dedupe) and one WAL flush; each request is answered after
  that commit.
* ``single``: the old path, one transaction per request holding
  :func:`shared.link.accept_once` and an INSERT of the payload.
* ``callback``: the callback site's real intake, ``POST /v1/link/callbacks``,
  each server process composed as ``callback_server serve --role intake``
  composes it (:func:`callback_server.app.create_intake_app` over
  ``deploy/callback.example.toml``: its guard policy, ``--pool`` connections,
  INFO logging to a file) and served as ``serve`` serves it (uvloop,
  ``[http] reuse_port``, no access log), through
  :class:`callback_server.intake.CallbackIntake` (group commit of whole
  requests: message ids, toll-fraud guard screening under per-number locks,
  request rows with their job NOTIFY, answers). Every request is a new edge
  call from a new caller, so every one is screened and queued. A deployed site
  runs the same: one full server plus intake processes on its port
  (``deploy/systemd/``).
* ``callback-single``: the same handler and SQL with batches of one (one
  transaction per request, up to 16 at once): what the callback server did
  before group commit.
* ``callback-batch``: the same intake fed as the edge's relay feeds it a
  backlog: ``--messages`` (32, the relay's default) call-back requests per
  signed request to ``POST /v1/link/callbacks/batch``, on 8 connections unless
  ``--connections`` says otherwise; a request counts when its own result in
  the batch's 200 is 202. Rates are call-back requests per second; latency is
  per HTTP request.
* ``no-db``: DIAGNOSTIC ONLY, verify and answer without storing; not an
  intake, it only shows what HTTP + TLS + verify cost alone.

Without ``--mode`` (``make bench``) it runs ``single``, ``batch``,
``callback-single``, ``callback`` and ``callback-batch`` in turn, ``--compare N`` rounds of them (at
least one), so each path and its baseline are measured in the same invocation
(this VM's speed drifts). ``--mode M --compare N`` alternates M with its
baseline (``callback-batch``: ``callback``), N of each. Exits 1 when ``batch``,
``callback`` or ``callback-batch`` misses the target.

The load comes from separate processes (``multiprocessing``, spawn) holding
``--connections`` keep-alive TLS connections in total: by default raw TLS
connections writing pre-built HTTP/1.1 requests (``--pipeline`` outstanding
per connection) and parsing only status and ``Content-Length`` of the answers;
``--client aiohttp`` is the older ClientSession generator. Requests are signed
before the clock starts (signing is the sender's cost, not intake's); every
one has its own message id, so each is a real first delivery. Latency is per
request, from handing its bytes to the transport to its whole answer
(``time.perf_counter``).

Prints per run requests/s, p50/p90/p99/max latency, errors, the load average,
CPU per request of the servers, of PostgreSQL (every ``postgres`` process, from
``/proc``) and of the load generator over the measured window, all of it in
units of the load generator's (a yardstick for this VM's speed at that minute),
rows stored vs requests sent, and the median against the target (>= 5,000/s).
PostgreSQL is ``DATABASE_URL`` or the embedded server.
Everything (load generator, servers, PostgreSQL) shares this machine's cores;
see bench/README.md for figures (and its git history for what limits them).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET_RPS = 5000
_REPO = Path(__file__).resolve().parent.parent
PATH = "/v1/link/bench"
CALLBACK_PATH = "/v1/link/callbacks"
CALLBACK_MODES = ("callback", "callback-single", "callback-batch")


def _path(mode: str) -> str:
    if mode == "callback-batch":
        from shared.link import batch_path

        return batch_path(CALLBACK_PATH)
    return CALLBACK_PATH if mode in CALLBACK_MODES else PATH


def _pki(directory: Path) -> None:
    """Both sites' TLS certificates and signing keys, and the callback site's config
    (``deploy/callback.example.toml`` with these keys) beside them."""
    from shared import pki

    pki.init(directory, ["edge", "callback"])
    (directory / "callback.toml").write_text(
        (_REPO / "deploy" / "callback.example.toml").read_text()
        .replace("../var/pki", str(directory)))


# --- server --------------------------------------------------------------------------------


STORE_SQL = "INSERT INTO bench_intake (message_id, body) SELECT message_id, payload FROM fresh"


def _server_main(pki_dir: str, db_url: str, port: int, use_uvloop: bool, pool_size: int,
                 mode: str, batch: dict[str, Any] | None, stats: Any, ready: Any) -> None:
    if use_uvloop:
        import uvloop

        uvloop.install()
    if mode in CALLBACK_MODES:
        assert batch is not None
        asyncio.run(_serve_callback(Path(pki_dir), db_url, port, pool_size, batch, stats, ready))
        return
    asyncio.run(_serve(Path(pki_dir), db_url, port, pool_size, mode, batch, stats, ready))


async def _serve(pki_dir: Path, db_url: str, port: int, pool_size: int,
                 mode: str, batch: dict[str, Any] | None, stats: Any, ready: Any) -> None:
    from aiohttp import web

    from shared.db import create_pool
    from shared.http import error_middleware
    from shared.intake_batch import IntakeBatcher
    from shared.link import (
        VERIFIER_KEY,
        accept_once,
        message_id,
        raw_body,
        signature_middleware,
    )
    from shared.signing import Verifier, load_public_key

    pool = await create_pool(db_url, min_size=pool_size, max_size=pool_size)
    app = web.Application(middlewares=[error_middleware, signature_middleware])
    app[VERIFIER_KEY] = Verifier({"edge-sign-1": load_public_key(pki_dir / "edge-sign-1.pub")})

    batcher = None if batch is None else IntakeBatcher(pool, "bench", STORE_SQL, **batch)
    queued = (202, {"status": "queued"})
    handled = 0

    async def intake_batched(request: web.Request) -> web.Response:
        nonlocal handled
        handled += 1
        assert batcher is not None
        status, answer = await batcher.submit(message_id(request), raw_body(request), queued)
        return web.json_response(answer, status=status)

    async def intake(request: web.Request) -> web.Response:
        nonlocal handled
        handled += 1
        mid = message_id(request)
        body = raw_body(request)

        async def store(conn: Any) -> tuple[int, dict[str, Any]]:
            await conn.execute("INSERT INTO bench_intake (message_id, body) VALUES ($1, $2)",
                               mid, body)
            return 202, {"status": "queued"}

        async with pool.acquire() as conn, conn.transaction():
            status, answer = await accept_once(conn, mid, "bench", store)
        return web.json_response(answer, status=status)

    async def diagnostic_no_db(request: web.Request) -> web.Response:
        nonlocal handled
        handled += 1
        message_id(request)
        return web.json_response(queued[1], status=queued[0])

    app.router.add_post(PATH, diagnostic_no_db if mode == "no-db"
                        else intake if batcher is None else intake_batched)

    def counters() -> tuple[int, int, int]:
        if batcher is None:
            return 0, 0, handled
        return batcher.batches, batcher.messages, handled

    await _serve_until_stopped(app, pki_dir, port, ready, stats, counters,
                               [] if batcher is None else [batcher.close], pool)


async def _serve_until_stopped(app: Any, pki_dir: Path, port: int, ready: Any, stats: Any,
                               counters: Any, closers: list[Any], pool: Any) -> None:
    """Serve ``app`` over mutual TLS until the process is terminated, publishing
    ``counters()`` (batches, messages, requests) and the CPU time to ``stats``."""
    from aiohttp import web

    from shared import pki
    from shared.link import serve_options
    from shared.site import settle_heap_on_startup

    settle_heap_on_startup(app)  # as ``serve`` does (shared.server_cli)
    runner = web.AppRunner(app, access_log=None, **serve_options())
    await runner.setup()
    ctx = pki.server_context(pki_dir / "callback.pem", pki_dir / "callback.key",
                             pki_dir / "ca.pem")
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx, backlog=4096,
                      reuse_port=True).start()
    ready.set()
    try:
        while True:
            await asyncio.sleep(0.1)
            stats[0], stats[1], stats[2] = counters()
            stats[3] = int(time.process_time() * 1e6)
    finally:
        await runner.cleanup()
        for close in closers:
            await close()
        if pool is not None:
            await pool.close()


async def _serve_callback(pki_dir: Path, db_url: str, port: int, pool_size: int,
                          batch: dict[str, Any], stats: Any, ready: Any) -> None:
    """The callback site's intake as ``callback_server serve --role intake`` composes it
    (:func:`callback_server.app.create_intake_app`: HTTP routes, guard, store and
    group-committed intake, from the example config), logging at INFO to a file as
    ``serve`` logs; served like ``serve`` serves it (uvloop, ``reuse_port``, no access
    log)."""
    import logging

    from callback_server.app import INTAKE_OPTIONS_KEY, create_intake_app
    from callback_server.config import CallbackSettings
    from callback_server.http import INTAKE_KEY

    logging.basicConfig(level=logging.INFO, filename=str(pki_dir / f"server-{os.getpid()}.log"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = CallbackSettings.load(pki_dir / "callback.toml", environ={
        "CALLBACK__DATABASE__URL": db_url,
        "CALLBACK__DATABASE__MIN_CONNECTIONS": str(pool_size),
        "CALLBACK__DATABASE__MAX_CONNECTIONS": str(pool_size),
        "CALLBACK__RATES__ENABLED": "false",
        "CALLBACK__HTTP__REUSE_PORT": "true"})
    app = create_intake_app(settings)
    app[INTAKE_OPTIONS_KEY] = batch

    def counters() -> tuple[int, int, int]:
        intake = app.get(INTAKE_KEY)
        return (0, 0, 0) if intake is None else (intake.batches, intake.messages,
                                                 intake.messages)

    await _serve_until_stopped(app, pki_dir, port, ready, stats, counters, [], None)


# --- load generator (separate process) -------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """Where the load goes and what it sends: every request a new edge call, from a caller
    of its own (``+8190`` + 8 digits from ``caller_base``)."""

    port: int
    path: str
    caller_base: int
    #: call-back requests per HTTP request: 1, or a batch envelope of this many
    messages: int = 1


def _client_main(pki_dir: str, target: _Target, connections: int, seconds: float,
                 warmup: float, use_uvloop: bool, kind: str, pipeline: int, servers: list[Any],
                 out: Any) -> None:
    if use_uvloop:
        import uvloop

        uvloop.install()
    if kind == "raw":
        result = asyncio.run(_raw_load(Path(pki_dir), target, connections, pipeline, seconds,
                                       warmup, servers))
    else:
        result = asyncio.run(_load(Path(pki_dir), target, connections, seconds, warmup,
                                   servers))
    out.put(result)


def _postgres_cpu_us() -> int:
    """CPU time (user + system, µs) of every PostgreSQL process on this machine (the
    embedded server's, or a local ``DATABASE_URL`` server's), from ``/proc``; 0 elsewhere."""
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        name, _, rest = text.partition(") ")
        if name.endswith("(postgres"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) * tick_us  # utime, stime
    return int(total)


def _window_marks(seconds: float, warmup: float, servers: list[Any],
                  responses: Any) -> list[tuple[float, int, int, int, int]]:
    """At the start and the end of the measured window: (own CPU s, responses seen,
    requests the servers handled, servers' CPU µs, PostgreSQL's CPU µs)."""
    marks: list[tuple[float, int, int, int, int]] = []

    def mark() -> None:
        marks.append((time.process_time(), responses(), sum(int(c[2]) for c in servers),
                      sum(int(c[3]) for c in servers), _postgres_cpu_us()))

    loop = asyncio.get_running_loop()
    loop.call_later(warmup, mark)
    loop.call_later(warmup + seconds, mark)
    return marks


def _cpu_figures(marks: list[tuple[float, int, int, int, int]]) -> dict[str, float]:
    (c0, n0, h0, s0, p0), (c1, n1, h1, s1, p1) = marks
    return {"cpu_per_response_us": (c1 - c0) / max(1, n1 - n0) * 1e6,
            "server_us": (s1 - s0) / max(1, h1 - h0),
            "postgres_us": (p1 - p0) / max(1, h1 - h0)}


def _presign(pki_dir: Path, target: _Target, count: int) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` signed HTTP requests, each carrying ``target.messages`` call-back requests
    (more than one: the edge relay's batch envelope, :func:`shared.link.encode_batch`)."""
    from shared.link import encode_batch
    from shared.signing import Signer, SigningKey

    signer = Signer([SigningKey.load(pki_dir / "edge-sign-1.key")])
    reqs = []
    for i in range(count):
        bodies = []
        for j in range(i * target.messages, (i + 1) * target.messages):
            bodies.append(json.dumps(
                {"edge_call_id": f"edge-{uuid.uuid4().hex}", "merchant_id": "acme",
                 "caller": f"+8190{target.caller_base + j}", "dialed": "+81120123456",
                 "received_at": "2026-11-22T01:02:03.456Z", "announce_mode": "early_media",
                 "seq": j}, separators=(",", ":")).encode())
        if target.messages == 1:
            body = bodies[0]
        else:
            body = encode_batch([(str(uuid.uuid4()), b) for b in bodies])
        headers = signer.headers("POST", target.path, body)
        headers["content-type"] = "application/json"
        reqs.append((body, headers))
    return reqs


def _raw_requests(pki_dir: Path, target: _Target, count: int) -> list[bytes]:
    """Each pre-signed request as the exact HTTP/1.1 bytes put on the wire."""
    out = []
    for body, headers in _presign(pki_dir, target, count):
        head = [f"POST {target.path} HTTP/1.1", f"Host: 127.0.0.1:{target.port}",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        out.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return out


class _RawConnection(asyncio.Protocol):
    """One keep-alive TLS connection of the raw load generator.

    Writes pre-built requests, keeps up to ``pipeline`` outstanding (HTTP/1.1
    pipelining: the server answers in order), and parses only what it must
    from each response: where the head ends, ``Content-Length``, the status.
    No coroutine per request: everything happens in ``data_received``.
    """

    def __init__(self, run: _RawRun) -> None:
        self.run = run
        self.buf = bytearray()
        self.sent: collections.deque[float] = collections.deque()
        self.transport: Any = None  # uvloop's TLS transport is not an asyncio.Transport
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send_more(self) -> None:
        run, transport = self.run, self.transport
        assert transport is not None
        now = time.perf_counter()
        while len(self.sent) < run.pipeline and run.next < len(run.reqs) and now < run.stop_at:
            transport.write(run.reqs[run.next])
            run.next += 1
            self.sent.append(time.perf_counter())
        if not self.sent:
            transport.close()

    def data_received(self, data: bytes) -> None:
        buf, run = self.buf, self.run
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                eol = head.find(b"\r\n", at)
                length = int(head[at + 15:eol if eol >= 0 else None])
            total = end + 4 + length
            if len(buf) < total:
                return
            t1 = time.perf_counter()
            t0 = self.sent.popleft()
            run.responses += run.messages
            status = head[9:12]
            if run.messages == 1:
                accepted = 1 if status == b"202" else 0
            else:  # a batch's 200: one result per message, each with its own status
                accepted = buf.count(b'"status": 202', end + 4, total) if status == b"200" else 0
            del buf[:total]
            if accepted < run.messages:  # counted whenever it happens, warm-up included
                key = status.decode(errors="replace")
                if status == b"200":
                    key = "200 with refused messages"
                run.errors[key] = run.errors.get(key, 0) + run.messages - accepted
            if accepted and t0 >= run.measure_from and t1 <= run.stop_at:
                run.latencies.append(t1 - t0)
                run.ok += accepted
            self.send_more()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sent:  # requests without an answer
            key = type(exc).__name__ if exc else "closed-with-requests-outstanding"
            self.run.errors[key] = self.run.errors.get(key, 0) + len(self.sent)
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class _RawRun:
    reqs: list[bytes]
    pipeline: int
    #: call-back requests per HTTP request
    messages: int = 1
    #: call-back requests accepted within the measured window
    ok: int = 0
    measure_from: float = 0.0
    stop_at: float = 0.0
    next: int = 0
    responses: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


async def _raw_load(pki_dir: Path, target: _Target, connections: int, pipeline: int,
                    seconds: float, warmup: float, servers: list[Any]) -> dict[str, Any]:
    """Load generator on raw TLS connections: pre-built requests, minimal response parsing.

    A request's latency is from the moment its bytes were handed to the
    transport to the moment its whole response was parsed
    (``time.perf_counter``).
    """
    from shared import pki

    # more than this box can send: running out closes the connections early, and uvloop's
    # TLS close can then wait for the server forever
    budget = int((seconds + warmup) * 15000) // target.messages + connections * pipeline
    run = _RawRun(_raw_requests(pki_dir, target, budget), pipeline, target.messages)
    ctx = pki.client_context(pki_dir / "ca.pem", pki_dir / "edge.pem", pki_dir / "edge.key")
    loop = asyncio.get_running_loop()
    conns: list[_RawConnection] = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: _RawConnection(run), "127.0.0.1",
                                                target.port, ssl=ctx)
        conns.append(proto)
    start = time.perf_counter()
    run.measure_from = start + warmup
    run.stop_at = run.measure_from + seconds
    marks = _window_marks(seconds, warmup, servers, lambda: run.responses)
    for c in conns:
        c.send_more()
    await asyncio.gather(*(c.done for c in conns))
    return {"ok": run.ok, "errors": run.errors, "seconds": seconds,
            **_cpu_figures(marks),
            "latencies": run.latencies, "presigned": len(run.reqs) * target.messages,
            "used": run.next * target.messages, "pooled": connections}


async def _load(pki_dir: Path, target: _Target, connections: int, seconds: float,
                warmup: float, servers: list[Any]) -> dict[str, Any]:
    import aiohttp

    from shared import pki

    budget = int((seconds + warmup) * 15000) + connections  # more than this box can send
    reqs = _presign(pki_dir, target, budget)
    ctx = pki.client_context(pki_dir / "ca.pem", pki_dir / "edge.pem", pki_dir / "edge.key")
    url = f"https://127.0.0.1:{target.port}{target.path}"
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0
    clock = time.perf_counter  # uvloop's loop.time() only ticks in whole milliseconds
    start = clock()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    counted = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, counted
        while True:
            now = clock()
            if now >= stop_at or next_index >= len(reqs):
                return
            body, headers = reqs[next_index]
            next_index += 1
            t0 = clock()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 202
                    key = str(resp.status)
            except aiohttp.ClientError as exc:
                ok, key = False, type(exc).__name__
            t1 = clock()
            if t0 >= measure_from and t1 <= stop_at:
                if ok:
                    latencies.append(t1 - t0)
                    counted += 1
                else:
                    errors[key] = errors.get(key, 0) + 1

    marks = _window_marks(seconds, warmup, servers, lambda: next_index)
    connector = aiohttp.TCPConnector(ssl=ctx, limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        handshakes = len(connector._conns) if hasattr(connector, "_conns") else -1
    return {"ok": counted, "errors": errors, "seconds": seconds,
            "latencies": latencies, "presigned": len(reqs), "used": next_index,
            "pooled": handshakes, **_cpu_figures(marks)}


# --- orchestration --------------------------------------------------------------------------


#: A site in service has history, and the planner statistics of it: the callback
#: tables start each run with this many finished requests of other callers (7 days
#: old) and their message ids (kept >= 24 h for dedupe), vacuumed and analysed. On
#: empty tables the planner picks sequential scans and hash joins, and the cached
#: plans keep them while the tables fill up.
HISTORY_ROWS = 100_000
_HISTORY = """
WITH h AS (SELECT g, 'cb-hist-' || g AS callback_id, '+8170' || (10000000 + g) AS number,
                  now() - interval '7 days' AS at FROM generate_series(1, $1) g),
     r AS (INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller,
               received_at, accepted_at, message_id, status, reason, max_attempts,
               next_attempt_at, finished_at)
           SELECT callback_id, 'edge-hist-' || g, 'acme', number, at, at, 'msg-hist-' || g,
                  'completed', 'answered', 3, at, at FROM h),
     c AS (INSERT INTO guard_callbacks (callback_id, number, merchant_id, known, accepted_at)
           SELECT callback_id, number, 'acme', true, at FROM h),
     m AS (INSERT INTO inbound_messages (message_id, kind, received_at, response_status,
               response_body)
           SELECT 'msg-hist-' || g, 'callback_request', now() - interval '1 hour', 202,
                  jsonb_build_object('callback_id', callback_id, 'status', 'queued') FROM h)
INSERT INTO guard_numbers (number, first_seen_at, confirmations) SELECT number, at, 1 FROM h
"""
CALLBACK_TABLES = ("callback_attempts, click_to_call_requests, callback_requests, "
                   "guard_callbacks, guard_numbers, guard_refusals, outbox")


async def _prepare_db(db_url: str, *, quiet: bool = False) -> None:
    import asyncpg

    from callback_server.store import CallbackStore
    from callback_server.testing import merchant
    from shared.db import MigrationSet, migrate_url

    await migrate_url(db_url, [MigrationSet("link", _REPO / "shared" / "migrations"),
                               MigrationSet("callback", _REPO / "callback_server" / "migrations")])
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_intake (message_id text PRIMARY "
                           "KEY, body bytea NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        await conn.execute("TRUNCATE bench_intake")
        await conn.execute(f"TRUNCATE {CALLBACK_TABLES} CASCADE")
        await conn.execute("DELETE FROM inbound_messages WHERE kind IN ('bench', "
                           "'callback_request')")
        settings = {r["name"]: r["setting"] for r in await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('synchronous_commit', 'fsync', 'wal_sync_method', 'server_version')")}
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        await CallbackStore(pool, owner="bench").sync_merchants([merchant("acme")])
        await pool.execute(_HISTORY, HISTORY_ROWS)
        await pool.execute("VACUUM ANALYZE callback_requests, guard_callbacks, guard_numbers,"
                           " inbound_messages")
    finally:
        await pool.close()
    if quiet:
        return
    print(f"PostgreSQL {settings.get('server_version')}: synchronous_commit="
          f"{settings.get('synchronous_commit')}, fsync={settings.get('fsync')}, "
          f"wal_sync_method={settings.get('wal_sync_method')}")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _run(args: argparse.Namespace, db_url: str, pki_dir: Path, mode: str) -> dict[str, Any]:
    """One measured run: start the servers, run the load, stop; returns the figures."""
    asyncio.run(_prepare_db(db_url, quiet=True))
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    batch = None if mode in ("single", "no-db") else {
        "max_in_flight": args.in_flight, "linger_s": args.linger_ms / 1000}
    if batch is not None and args.max_batch is not None:
        batch["max_batch"] = args.max_batch
    if mode == "callback-single":  # one transaction per request, as many at once as before
        batch = {"max_batch": 1, "max_in_flight": args.pool, "linger_s": 0.0}
    ctx = mp.get_context("spawn")
    servers, stats = [], []
    for _ in range(args.server_procs):
        ready = ctx.Event()
        counters = ctx.Array("q", 4, lock=False)
        proc = ctx.Process(target=_server_main, args=(str(pki_dir), db_url, port, args.uvloop,
                                                      args.pool, mode, batch, counters, ready),
                           daemon=True)
        proc.start()
        if not ready.wait(30):
            raise RuntimeError("server did not start")
        servers.append(proc)
        stats.append(counters)
    out = ctx.Queue()
    connections = args.connections or (8 if mode == "callback-batch" else 64)
    per_client = max(1, connections // args.client_procs)
    clients = [ctx.Process(target=_client_main, args=(str(pki_dir),
                                                      _Target(port, _path(mode),
                                                              10_000_000 * (1 + i),
                                                              _messages(args, mode)),
                                                      per_client,
                                                      args.seconds, args.warmup, args.uvloop,
                                                      args.client, args.pipeline, stats, out))
               for i in range(args.client_procs)]
    for c in clients:
        c.start()
    results = [out.get(timeout=args.seconds + args.warmup + 120) for _ in clients]
    load = os.getloadavg()[0]
    for c in clients:
        c.join(10)
    time.sleep(0.3)  # the servers' last counters
    batches = sum(int(c[0]) for c in stats)
    batched = sum(int(c[1]) for c in stats)
    for proc in servers:
        proc.terminate()
        proc.join(10)
    stored = asyncio.run(_count_stored(db_url, mode))
    latencies = [x for r in results for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    ok = sum(r["ok"] for r in results)
    return {"mode": mode, "rps": ok / args.seconds, "ok": ok, "errors": errors,
            "p50": _pct(latencies, 0.5), "p90": _pct(latencies, 0.9),
            "p99": _pct(latencies, 0.99), "max": max(latencies, default=float("nan")),
            "mean": statistics.fmean(latencies) if latencies else float("nan"),
            "exhausted": any(r["used"] >= r["presigned"] for r in results),
            "sent": sum(r["used"] for r in results), "stored": stored, "load1": load,
            "batch_mean": batched / batches if batches else float("nan"),
            "server_us": statistics.fmean(r["server_us"] for r in results),
            "postgres_us": statistics.fmean(r["postgres_us"] for r in results),
            "client_us": statistics.fmean(r["cpu_per_response_us"] for r in results),
            "messages": _messages(args, mode)}


async def _count_stored(db_url: str, mode: str) -> int:
    """Requests stored with their message id (call-backs: queued ones; a refusal would be
    a difference from the requests sent)."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM callback_requests b JOIN inbound_messages m"
            " USING (message_id) WHERE b.status = 'queued'" if mode in CALLBACK_MODES else
            "SELECT count(*) FROM bench_intake b JOIN inbound_messages m USING (message_id)")
        return n
    finally:
        await conn.close()


def _messages(args: argparse.Namespace, mode: str) -> int:
    return args.messages if mode == "callback-batch" else 1


def _yardstick(r: dict[str, Any]) -> float:
    """All CPU per request (servers, PostgreSQL, load generator) in units of the load
    generator's: its work per request never changes, so this compares runs and trees
    across minutes when this VM's speed moves more than the change measured."""
    total = float(r["server_us"] + r["postgres_us"] + r["client_us"])
    return total / max(1.0, float(r["client_us"]))


def _report(r: dict[str, Any]) -> None:
    what = {
        "single": "accept_once per request (5 round trips, 1 commit each)",
        "no-db": "DIAGNOSTIC: nothing stored, not a valid intake",
        "batch": f"batched (1 statement + commit per batch, mean batch {r['batch_mean']:.1f})",
        "callback-single": "callback intake + guard, 1 transaction per request",
        "callback": f"callback intake + guard, 1 transaction per batch, mean batch "
                    f"{r['batch_mean']:.1f}",
        "callback-batch": f"callback intake + guard, {r['messages']} requests per signed "
                          f"HTTP request (the edge relay's batch), mean commit batch "
                          f"{r['batch_mean']:.1f}",
    }[r["mode"]]
    print(f"  {r['mode']:>15}: {r['rps']:,.0f} req/s  p50 {r['p50'] * 1000:.1f} ms  "
          f"p90 {r['p90'] * 1000:.1f} ms  p99 {r['p99'] * 1000:.1f} ms  "
          f"max {r['max'] * 1000:.1f} ms  errors {r['errors'] or 0}  load1 {r['load1']:.2f}  "
          f"CPU/request: servers {r['server_us']:.0f} µs, PostgreSQL {r['postgres_us']:.0f} µs, "
          f"load generator {r['client_us']:.0f} µs (all: {_yardstick(r):.1f}x the load "
          f"generator's)  [{what}; sent {r['sent']:,}, stored {r['stored']:,}]"
          + ("  [pre-signed requests ran out: raise the budget]" if r["exhausted"] else "")
          + ("  [MISMATCH: stored rows != requests sent]"
             if r["mode"] != "no-db" and r["stored"] != r["sent"] else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.link_intake", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=None,
                        help="TLS connections in all (default 64; callback-batch: 8, "
                             "which with --messages 32 keeps 256 requests outstanding)")
    parser.add_argument("--server-procs", type=int, default=2)
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--pool", type=int, default=16, help="DB connections per server")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True,
                        help="uvloop in server and client")
    parser.add_argument("--mode", choices=["batch", "single", "callback", "callback-single",
                                           "callback-batch", "no-db"], default=None,
                        help="batch: shared.intake_batch (group commit); single: one "
                             "accept_once transaction per request (the old path); callback: "
                             "the callback site's real intake (guard included), group "
                             "committed; callback-single: the same, one transaction per "
                             "request; callback-batch: the same intake, --messages requests "
                             "per signed HTTP request (POST /v1/link/callbacks/batch, as the "
                             "edge's relay sends a backlog); no-db: DIAGNOSTIC ONLY, verify "
                             "and answer without storing anything (shows the HTTP + TLS + "
                             "verify cost). Default: single, batch, callback-single, "
                             "callback, callback-batch, each --compare times "
                             "(at least once)")
    parser.add_argument("--compare", type=int, default=0, metavar="ROUNDS",
                        help="alternate single and batch runs, ROUNDS of each")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="messages per commit at most (default: the intake's own, as "
                             "the servers run it: 128 for the callback modes, 256 for batch)")
    parser.add_argument("--in-flight", type=int, default=2, help="batches at once per server")
    parser.add_argument("--linger-ms", type=float, default=0.0)
    parser.add_argument("--client", choices=["raw", "aiohttp"], default="raw",
                        help="raw: pre-built requests on TLS streams; aiohttp: ClientSession")
    parser.add_argument("--messages", type=int, default=32,
                        help="callback-batch: call-back requests per HTTP request")
    parser.add_argument("--pipeline", type=int, default=1,
                        help="raw client: requests outstanding per connection")
    args = parser.parse_args(argv)
    if args.client == "aiohttp" and args.mode in (None, "callback-batch"):
        parser.error("callback-batch needs --client raw (the aiohttp client sends single "
                     "requests only)")
    from shared.link_policy import BATCH_MAX_MESSAGES

    if not 1 <= args.messages <= BATCH_MAX_MESSAGES:
        parser.error(f"--messages: 1 to {BATCH_MAX_MESSAGES} (a batch request's limit)")

    from shared.db import resolve_url

    db_url = resolve_url(None, "cbgw_bench")
    asyncio.run(_prepare_db(db_url))
    with tempfile.TemporaryDirectory(prefix="cbgw-bench-pki-") as tmp:
        pki_dir = Path(tmp)
        _pki(pki_dir)
        return _measure(args, db_url, pki_dir)


def _measure(args: argparse.Namespace, db_url: str, pki_dir: Path) -> int:
    """Every run the arguments ask for, with their report; 1 when a target is missed."""
    if args.mode is None:
        modes = ["single", "batch", "callback-single", "callback",
                 "callback-batch"] * max(1, args.compare)
    elif args.compare and args.mode == "callback-batch":
        modes = ["callback", "callback-batch"] * args.compare
    elif args.compare:
        modes = (["callback-single", "callback"] if args.mode in CALLBACK_MODES
                 else ["single", "batch"]) * args.compare
    else:
        modes = [args.mode]
    from bench._machine import speed_line

    print(speed_line())
    print(f"cores={os.cpu_count()} python={sys.version.split()[0]} "
          f"uvloop={'yes' if args.uvloop else 'no'} server_procs={args.server_procs} "
          f"client={args.client} client_procs={args.client_procs} "
          f"connections={args.connections or '64 (callback-batch: 8)'} "
          f"pipeline={args.pipeline} pool={args.pool}/server "
          f"max_batch={args.max_batch or 'default'} in_flight={args.in_flight}/server "
          f"linger={args.linger_ms} ms seconds={args.seconds}")
    print("signed intake (mTLS, Ed25519 verify, durable commit, 202); single/batch: message "
          "id once + payload; callback-single/callback: the callback site's endpoint (parse, "
          "message id once, guard screening, request row + job NOTIFY):")
    runs = []
    for mode in modes:
        r = _run(args, db_url, pki_dir, mode)
        _report(r)
        runs.append(r)
    missed: list[str] = []
    for mode in dict.fromkeys(modes):
        mine = [r for r in runs if r["mode"] == mode]
        best = max(r["rps"] for r in mine)
        median = statistics.median(r["rps"] for r in mine)
        verdict = "MEETS" if median >= TARGET_RPS else "BELOW"
        if mode == "no-db":
            verdict = "n/a, diagnostic (nothing stored)"
        print(f"{mode}: median {median:,.0f} req/s (best {best:,.0f}) over {len(mine)} run(s); "
              f"target >= {TARGET_RPS:,}/s: {verdict} ({median / TARGET_RPS:.0%} of target)")
        if mode in ("batch", "callback", "callback-batch") and verdict == "BELOW":
            missed.append(mode)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
