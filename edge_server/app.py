"""Composition root of the edge site.

``create_app(settings)`` builds the aiohttp application; its ``cleanup_ctx``
generators own, in order: the database (pool, migrations, merchant sync), the
rating service, the link to the callback site (client + outbox relay), the
ARI connection with the Stasis application, and the held-request sweeper.
Each is torn down in reverse order.

Asterisk being unreachable never stops the server: the ARI client retries
forever and the dialplan answers 503 meanwhile (the Stasis app is down), so
the carrier fails over. The database is retried for ``DB_START_TIMEOUT_S``.
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

from edge_server.config import EdgeSettings
from edge_server.decide import FixedDecider, RatesDecider
from edge_server.http import HEALTH_KEY, POOL_KEY, Health, create_http_app
from edge_server.stasis import Decider, MerchantDirectory, StasisApp, StasisDeps, run_events
from edge_server.store import CallStore, edge_migrations
from shared import ari
from shared.db import create_pool, migrate, resolve_url
from shared.link import LinkClient, purge_seen
from shared.outbox import OutboxRelay
from shared.pki import client_context
from shared.signing import Signer, SigningKey, Verifier, load_public_key

log = logging.getLogger("edge.app")

DB_START_TIMEOUT_S = 60.0
PURGE_EVERY_S = 3600.0

SETTINGS_KEY = web.AppKey("edge_settings", EdgeSettings)
DB_URL_KEY = web.AppKey("edge_db_url", str)
STORE_KEY = web.AppKey("edge_store", CallStore)
DECIDER_KEY = web.AppKey("edge_decider", Decider)
STASIS_KEY = web.AppKey("edge_stasis", StasisApp)
RELAY_KEY = web.AppKey("edge_relay", OutboxRelay)


def verifier_for(settings: EdgeSettings) -> Verifier:
    return Verifier({key_id: load_public_key(path)
                     for key_id, path in settings.signing.trusted.items()})


def create_app(settings: EdgeSettings, *, with_ari: bool = True) -> web.Application:
    health = Health()
    app = create_http_app(merchants=settings.merchants, verifier=verifier_for(settings),
                          max_body_bytes=settings.http.max_body_bytes, health=health)
    app[SETTINGS_KEY] = settings
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(rates_ctx)
    app.cleanup_ctx.append(link_ctx)
    if with_ari:
        app.cleanup_ctx.append(ari_ctx)
    app.cleanup_ctx.append(sweeper_ctx)
    return app


async def _connect(settings: EdgeSettings) -> tuple[str, asyncpg.Pool]:
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
        applied = await migrate(conn, edge_migrations(with_rates=settings.rates.enabled))
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    store = CallStore(pool)
    await store.sync_merchants(settings.merchants)
    app[DB_URL_KEY] = url
    app[POOL_KEY] = pool
    app[STORE_KEY] = store
    yield
    await pool.close()


async def rates_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    service: Any = None
    decider: Decider = FixedDecider()
    if settings.rates.enabled:
        try:
            from shared.money import FxTable

            rating_service: Any = importlib.import_module("routing_rates").RatingService

            fx = FxTable.from_mapping(settings.rates.fx_base, settings.rates.fx_rates)
            service = await rating_service.start(app[POOL_KEY], fx=fx)
            decider = RatesDecider(service, {m.id: m.inbound_tariff for m in settings.merchants},
                                   announce_s=settings.rates.announce_s)
            log.info("routing_rates loaded: the call-back decision is priced")
        except Exception as exc:  # the edge still works: merchants' unrated default applies
            log.error("routing_rates unavailable (%s: %s); every call is unrated",
                      type(exc).__name__, exc)
    else:
        log.info("routing_rates disabled: every call is unrated")
    app[DECIDER_KEY] = decider
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
    owner = f"edge-{socket.gethostname()}-{os.getpid()}"
    relay = OutboxRelay(app[POOL_KEY], app[DB_URL_KEY], client, owner=owner)
    app[RELAY_KEY] = relay
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
    deps = StasisDeps(ari=client, store=app[STORE_KEY], decider=app[DECIDER_KEY],
                      merchants=MerchantDirectory(settings.merchant_settings()),
                      timings=settings.edge.timings, direct_context=settings.edge.direct_context)
    stasis = StasisApp(deps)
    app[STASIS_KEY] = stasis
    app[HEALTH_KEY].ari_state = lambda: "connected" if stasis.connected else "connecting"
    try:
        info = await asyncio.wait_for(client.asterisk_info(), 2.0)
        log.info("Asterisk %s reachable at %s", info.get("system", {}).get("version", "?"),
                 a.url)
    except (ari.AriError, TimeoutError) as exc:
        log.warning("Asterisk ARI at %s is not reachable yet (%s); the server runs and keeps "
                    "retrying; meanwhile the dialplan answers 503", a.url, exc)
    task = asyncio.create_task(run_events(stasis, client), name="ari events")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await stasis.router.drain()
    await client.close()


async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    task = asyncio.create_task(_sweep_forever(app, settings), name="held-request sweeper")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def _sweep_forever(app: web.Application, settings: EdgeSettings) -> None:
    store, pool = app[STORE_KEY], app[POOL_KEY]
    since_purge = 0.0
    while True:
        await asyncio.sleep(settings.edge.sweep_every_s)
        try:
            await store.sweep_held(settings.edge.sweep_after_s)
            since_purge += settings.edge.sweep_every_s
            if since_purge >= PURGE_EVERY_S:
                since_purge = 0.0
                async with pool.acquire() as conn:
                    await purge_seen(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("sweep failed (%s); next in %.0f s", exc, settings.edge.sweep_every_s)
