"""``GET /metrics`` on both sites, the scrape-time readings, and the process sampler.

:func:`install` adds the route and the sampler to a site's application:

* ``GET /metrics`` (Prometheus text, no token: the sites serve mutual TLS): this
  process's metrics, or in multiprocess mode those of every process using the
  site's directory (:mod:`shared.metrics`), plus the *scrape-time readings*: the
  application's :data:`READINGS_KEY` functions, each asked on every scrape for
  metric families read from the database (queue depth, outbox backlog; bounded
  queries with a timeout). A reading that fails is left out and
  ``cbgw_metrics_reading_up{reading}`` says 0, so a scrape never fails because
  the database is slow.
* the sampler: every :data:`SAMPLE_EVERY_S`, how late the event loop ran its
  timer (``cbgw_event_loop_delay_seconds``, every sample; ``cbgw_event_loop_lag_seconds``,
  the last) and the database pool's use (``cbgw_db_pool_connections``, and by holder
  ``cbgw_db_pool_holders``). The pool itself
  times each acquire (``cbgw_db_pool_acquire_wait_seconds``, :func:`shared.db.create_pool`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from shared import metrics
from shared.db import HoldTimes, pool_hold_times, pool_holders, pool_waiting
from shared.openapi import Operation, Reply, add_operations
from shared.outbox import outbox_stats

log = logging.getLogger("shared.metrics")

SAMPLE_EVERY_S = 0.25
READING_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Reading:
    """Metric families read on each scrape (from the database, by any process)."""

    name: str
    #: the metric names it yields (the dashboard test checks queries against these)
    names: tuple[str, ...]
    read: Callable[[web.Application], Awaitable[list[Metric]]]


READINGS_KEY: web.AppKey[list[Reading]] = web.AppKey("metrics_readings")
#: the application's database pool, once connected (the sampler and readings use it)
POOL_GETTER_KEY: web.AppKey[Callable[[web.Application], asyncpg.Pool | None]] = web.AppKey(
    "metrics_pool")


def install(app: web.Application, pool: Callable[[web.Application], asyncpg.Pool | None]
            ) -> None:
    """Serve ``GET /metrics`` and sample the loop and the pool; the outbox backlog is a
    reading of every site."""
    metrics.common()
    app[POOL_GETTER_KEY] = pool
    app[READINGS_KEY] = [OUTBOX_BACKLOG]
    add_operations(app, [Operation(
        "GET", "/metrics", scrape, "Prometheus metrics of the site's processes", "meta",
        {200: Reply("Prometheus text format", {"type": "string"}, "text/plain")})])
    app.cleanup_ctx.append(sampler_ctx)


class _Collected(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


async def scrape(request: web.Request) -> web.Response:
    app = request.app
    readings = app.get(READINGS_KEY, [])
    up = GaugeMetricFamily("cbgw_metrics_reading_up",
                           "1 if the scrape-time reading answered in time, else 0.",
                           labels=["reading"])
    families: list[Metric] = [up]
    results = await asyncio.gather(*(_read(r, app) for r in readings))
    for reading, result in zip(readings, results, strict=True):
        up.add_metric([reading.name], 0.0 if result is None else 1.0)
        families.extend(result or ())
    return web.Response(body=render(families),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def render(extra: Sequence[Metric] = ()) -> bytes:
    """The Prometheus text of this process (or all of the directory's) plus ``extra``."""
    out = CollectorRegistry(auto_describe=False)
    directory = metrics.multiprocess_directory()
    if directory is not None:
        MultiProcessCollector(out, str(directory))  # type: ignore[no-untyped-call]
    else:
        out.register(_Collected(metrics.PROCESS.collect))
    out.register(_Collected(lambda: extra))
    return generate_latest(out)


async def _read(reading: Reading, app: web.Application) -> list[Metric] | None:
    try:
        async with asyncio.timeout(READING_TIMEOUT_S):
            return await reading.read(app)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
            _NoDatabase) as exc:
        log.warning("metrics reading %s failed: %s: %s", reading.name, type(exc).__name__, exc)
        return None


class _NoDatabase(Exception):
    pass


def pool_of(app: web.Application) -> asyncpg.Pool:
    pool = app[POOL_GETTER_KEY](app)
    if pool is None:
        raise _NoDatabase("database not connected yet")
    return pool


async def _outbox_backlog(app: web.Application) -> list[Metric]:
    stats = await outbox_stats(pool_of(app))
    messages = GaugeMetricFamily("cbgw_outbox_messages",
                                 "Outbox messages not delivered, by state (pending, held, dead).",
                                 labels=["state"])
    for state, count in (("pending", stats.pending), ("held", stats.held),
                         ("dead", stats.dead)):
        messages.add_metric([state], float(count))
    oldest = GaugeMetricFamily("cbgw_outbox_oldest_pending_seconds",
                               "Age of the oldest pending outbox message (0: none).",
                               value=stats.oldest_pending_s or 0.0)
    return [messages, oldest]


OUTBOX_BACKLOG = Reading("outbox_backlog",
                         ("cbgw_outbox_messages", "cbgw_outbox_oldest_pending_seconds"),
                         _outbox_backlog)


async def sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sample_forever(app), name="metrics sampler")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def count_pool_holds(pool: asyncpg.Pool, seen: dict[str, HoldTimes]) -> None:
    """What the pool's holders gave back since the last tick, into the counters."""
    m = metrics.common()
    for holder, now in pool_hold_times(pool).items():
        was = seen.get(holder) or HoldTimes()
        if now.holds != was.holds:
            m.db_pool_holds.labels(holder).inc(now.holds - was.holds)
            m.db_pool_held.labels(holder, "all").inc(now.held_s - was.held_s)
            m.db_pool_held.labels(holder, "releasing").inc(now.releasing_s - was.releasing_s)
            seen[holder] = HoldTimes(now.holds, now.held_s, now.releasing_s)


async def _sample_forever(app: web.Application) -> None:
    m = metrics.common()
    seen: dict[str, HoldTimes] = {}
    while True:
        started = time.monotonic()
        await asyncio.sleep(SAMPLE_EVERY_S)
        late = max(0.0, time.monotonic() - started - SAMPLE_EVERY_S)
        m.loop_lag.set(late)
        m.loop_delay.observe(late)
        pool = app[POOL_GETTER_KEY](app)
        if pool is not None:
            size, idle = pool.get_size(), pool.get_idle_size()
            m.db_pool.labels("in_use").set(size - idle)
            m.db_pool.labels("idle").set(idle)
            m.db_pool.labels("size").set(size)
            m.db_pool.labels("max").set(pool.get_max_size())
            for holder, held in pool_holders(pool).items():
                m.db_pool_holders.labels(holder).set(held)
            first, other = pool_waiting(pool)
            m.db_pool_waiting.labels("first").set(first)
            m.db_pool_waiting.labels("other").set(other)
            count_pool_holds(pool, seen)
