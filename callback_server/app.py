"""Composition root of the callback site.

``create_app(settings)`` builds the aiohttp application; its ``cleanup_ctx``
generators own, in order: the database (pool, migrations, merchant sync, the
toll-fraud guard that screens intake, rounds, legs and spend), the
rating service, the link to the edge (outbox relay), and the ARI connection
with the Stasis application and the job worker. Each is torn down in reverse
order; the worker drains running calls first (``callback.drain_s``).

Asterisk being unreachable never stops the server: the ARI client retries
forever, the worker leaves due jobs queued (uncounted) until the events
websocket is connected, and ``/healthz`` says ``ari: connecting``. The
database is retried for ``DB_START_TIMEOUT_S`` at start; later outages answer
503 ``database-unavailable`` so the edge retries.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import asyncpg
from aiohttp import web

import callback_server
import shared
from callback_server.config import CallbackSettings
from callback_server.guard.http import GUARD_KEY
from callback_server.guard.http import install as install_guard
from callback_server.guard.metrics import Metrics
from callback_server.guard.service import Guard
from callback_server.http import HEALTH_KEY, STORE_KEY, Health, create_http_app
from callback_server.routing import Routing
from callback_server.stasis import StasisApp
from callback_server.store import CallbackStore
from callback_server.worker import Worker
from shared import ari
from shared.db import MigrationSet, create_pool, migrate, package_migrations, resolve_url
from shared.link import LinkClient, purge_seen
from shared.money import FxTable
from shared.outbox import OutboxRelay
from shared.pki import client_context
from shared.signing import Signer, SigningKey, Verifier, load_public_key

log = logging.getLogger("callback.app")

DB_START_TIMEOUT_S = 60.0
PURGE_EVERY_S = 3600.0

SETTINGS_KEY = web.AppKey("callback_settings", CallbackSettings)
DB_URL_KEY = web.AppKey("callback_db_url", str)
POOL_KEY = web.AppKey("callback_pool", asyncpg.Pool)
ROUTING_KEY = web.AppKey("callback_routing", Routing)
WORKER_KEY = web.AppKey("callback_worker", Worker)
STASIS_KEY = web.AppKey("callback_stasis", StasisApp)
METRICS_KEY = web.AppKey("callback_metrics", Metrics)


def owner_name() -> str:
    return f"callback-{socket.gethostname()}-{os.getpid()}"


def migration_sets(with_rates: bool) -> list[MigrationSet]:
    sets = [package_migrations("link", shared.__file__)]
    if with_rates:
        rates = importlib.import_module("routing_rates")
        sets.append(package_migrations("routing_rates", str(rates.__file__)))
    sets.append(package_migrations("callback", callback_server.__file__))
    return sets


def verifier_for(settings: CallbackSettings) -> Verifier:
    return Verifier({key_id: load_public_key(path)
                     for key_id, path in settings.signing.trusted.items()})


def create_app(settings: CallbackSettings, *, with_ari: bool = True) -> web.Application:
    health = Health()
    app = create_http_app(merchants=settings.merchants, verifier=verifier_for(settings),
                          max_body_bytes=settings.http.max_body_bytes, health=health)
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = Metrics()
    install_guard(app)
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(rates_ctx)
    app.cleanup_ctx.append(link_ctx)
    if with_ari:
        app.cleanup_ctx.append(ari_ctx)
    app.cleanup_ctx.append(purge_ctx)
    if settings.rates.enabled:
        _mount_rates(app)
    return app


def _mount_rates(app: web.Application) -> None:
    """Add routing_rates' quote/decide routes (``routing_rates.http.routes``)."""
    try:
        module = importlib.import_module("routing_rates.http")
        app.add_routes(module.routes())
    except Exception as exc:   # the call-back path does not depend on these routes
        log.error("routing_rates quote/decide routes not mounted: %s: %s",
                  type(exc).__name__, exc)


async def _connect(settings: CallbackSettings) -> tuple[str, asyncpg.Pool]:
    db = settings.database
    url = await asyncio.to_thread(resolve_url, db.url, db.name)
    deadline = asyncio.get_running_loop().time() + DB_START_TIMEOUT_S
    delay = 0.5
    while True:
        try:
            pool = await create_pool(url, min_size=db.min_connections,
                                     max_size=db.max_connections)
            return url, pool
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"database unreachable for {DB_START_TIMEOUT_S:.0f} s: "
                                   f"{exc}") from exc
            log.warning("database not reachable (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    url, pool = await _connect(settings)
    async with pool.acquire() as conn:
        applied = await migrate(conn, migration_sets(settings.rates.enabled))
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    guard = Guard(pool, settings.guard, metrics=app[METRICS_KEY], fx=_fx(settings))
    store = CallbackStore(pool, owner=owner_name(), lease_s=settings.callback.lease_s,
                          guard=guard)
    await store.sync_merchants(settings.merchants)
    app[DB_URL_KEY] = url
    app[POOL_KEY] = pool
    app[STORE_KEY] = store
    app[GUARD_KEY] = guard
    yield
    await guard.alerter.close()
    await pool.close()


def _fx(settings: CallbackSettings) -> FxTable | None:
    """Converts CDR costs into the spend caps' currency (the ``[rates]`` FX table)."""
    if not settings.rates.fx_rates:
        return None
    return FxTable.from_mapping(settings.rates.fx_base, settings.rates.fx_rates)


async def rates_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    service: Any = None
    if settings.rates.enabled:
        try:
            from shared.money import FxTable

            rating_service: Any = importlib.import_module("routing_rates").RatingService
            fx = FxTable.from_mapping(settings.rates.fx_base, settings.rates.fx_rates)
            service = await rating_service.start(app[POOL_KEY], fx=fx)
            log.info("routing_rates loaded: carriers ranked by expected cost")
        except Exception as exc:
            log.error("routing_rates unavailable (%s: %s); static routes, CDRs without cost",
                      type(exc).__name__, exc)
    app[ROUTING_KEY] = Routing(service, settings.callback.static_routes)
    if service is None and not settings.callback.static_routes:
        log.error("no routing_rates and no [[callback.routes]]: every job fails with no_route")
    yield
    if service is not None:
        await service.close()


async def link_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    signer = Signer([SigningKey.load(path) for path in settings.signing.keys])
    tls = settings.tls
    ssl_ctx = client_context(tls.ca, tls.cert, tls.key) if tls else None
    client = LinkClient(settings.peer_routes, signer, ssl_ctx)
    await client.start()
    relay = OutboxRelay(app[POOL_KEY], app[DB_URL_KEY], client, owner=owner_name())
    task = asyncio.create_task(relay.run(), name="outbox relay")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await client.close()


async def ari_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    a = settings.ari
    client = ari.AriClient(base_url=a.url, username=a.username, password=a.password, app=a.app)
    await client.start()
    workers: list[Worker] = []
    stasis = StasisApp(client, lambda: workers[0].calls if workers else {})
    routing = app[ROUTING_KEY]
    worker = Worker(store=app[STORE_KEY], db_url=app[DB_URL_KEY],
                    merchants={m.id: m for m in settings.merchants}, flows=settings.flows,
                    routes=routing, client=client, router=stasis.router, rater=routing,
                    ari_ready=stasis.ready, settings=settings.callback.worker,
                    guard=app[GUARD_KEY])
    workers.append(worker)
    app[STASIS_KEY] = stasis
    app[WORKER_KEY] = worker
    health = app[HEALTH_KEY]
    health.ari_state = lambda: "connected" if stasis.ready.is_set() else "connecting"
    health.extra = lambda: {"calls": len(worker.calls)}
    try:
        info = await asyncio.wait_for(client.asterisk_info(), 2.0)
        log.info("Asterisk %s reachable at %s", info.get("system", {}).get("version", "?"),
                 a.url)
    except (ari.AriError, TimeoutError) as exc:
        log.warning("Asterisk ARI at %s is not reachable yet (%s); the server runs and keeps "
                    "retrying; jobs stay queued meanwhile", a.url, exc)
    events = asyncio.create_task(stasis.run(), name="ari events")
    jobs = asyncio.create_task(worker.run(), name="callback worker")
    yield
    await worker.shutdown()
    for task in (jobs, events):
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    await stasis.router.drain()
    await client.close()


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    async def purge_forever() -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY_S)
            try:
                async with app[POOL_KEY].acquire() as conn:
                    await purge_seen(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("purge of old message ids failed: %s", exc)

    task = asyncio.create_task(purge_forever(), name="message id purge")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
