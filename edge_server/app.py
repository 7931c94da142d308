"""Composition root of the edge site.

``create_app(settings)`` builds the aiohttp application; its ``cleanup_ctx``
generators own, in order: the database (pool, migrations, merchant sync), the
rating service, the link to the callback site (client + outbox relay), the
ARI connection with the Stasis application (and the closed messages rendered
ahead for the numbers with business hours, and the advisors' SIP endpoints pushed
to Asterisk), and the held-request sweeper.
Each is torn down in reverse order. The building blocks shared with the
callback site are in :mod:`shared.site`.

Asterisk being unreachable never stops the server: the ARI client retries
forever and the dialplan answers 503 meanwhile (the Stasis app is down), so
the carrier fails over. The database is retried for a minute at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from edge_server.config import EdgeSettings
from edge_server.decide import FixedDecider, RatesDecider
from edge_server.hours_prompts import ClosedPrompts
from edge_server.http import (
    LEARN_CALL_LENGTHS_KEY,
    LINK_SHARE_KEY,
    POOL_KEY,
    RATES_TABLES_KEY,
    create_http_app,
)
from edge_server.link_share import LinkShare
from edge_server.presence_stasis import LinkPresence
from edge_server.sip_endpoints import SipEndpoints
from edge_server.sip_http import SIP_ENDPOINTS_KEY
from edge_server.sip_push import EndpointPusher
from edge_server.sip_registrations import RegistrationWatch
from edge_server.stasis import (
    EVENTS_USED,
    Decider,
    MerchantDirectory,
    StasisApp,
    StasisDeps,
    run_events,
)
from edge_server.store import CALLBACK_PATH, CallStore, edge_migrations
from ivr_platform.tts import PromptCache
from shared import ari, outbox_operator
from shared.client_address import TRUSTED_PROXIES_KEY
from shared.db import holding, migrate
from shared.http import HEALTH_KEY, Health
from shared.link import LinkClient, pin_peer, purge_seen
from shared.metrics_http import install as install_metrics
from shared.outbox import OutboxRelay
from shared.site import ari_client as make_ari_client
from shared.site import (
    background,
    connect_database,
    link_client,
    log_asterisk_reachability,
    start_rating_service,
    verifier_for,
)

log = logging.getLogger("edge.app")

PURGE_EVERY_S = 3600.0

SETTINGS_KEY = web.AppKey("edge_settings", EdgeSettings)
DB_URL_KEY = web.AppKey("edge_db_url", str)
STORE_KEY = web.AppKey("edge_store", CallStore)
DECIDER_KEY = web.AppKey("edge_decider", Decider)
STASIS_KEY = web.AppKey("edge_stasis", StasisApp)
RELAY_KEY = web.AppKey("edge_relay", OutboxRelay)
LINK_KEY = web.AppKey("edge_link", LinkClient)


def create_app(settings: EdgeSettings, *, with_ari: bool = True) -> web.Application:
    health = Health()
    app = create_http_app(merchants=settings.merchants, verifier=verifier_for(settings.signing),
                          max_body_bytes=settings.http.max_body_bytes, health=health,
                          sip=settings.edge.sip_endpoints,
                          link_connections=settings.link_connections())
    app[SETTINGS_KEY] = settings
    app[TRUSTED_PROXIES_KEY] = settings.http.trusted_proxies
    pin_peer(app, settings.peer.identity if settings.tls else None)
    install_metrics(app, lambda a: a.get(POOL_KEY))
    outbox_operator.add_routes(app)
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(rates_ctx)
    app.cleanup_ctx.append(link_ctx)
    if with_ari:
        app.cleanup_ctx.append(ari_ctx)
    app.cleanup_ctx.append(sweeper_ctx)
    return app


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    url, pool = await connect_database(settings.database, log)
    async with pool.acquire() as conn:
        applied = await migrate(conn, edge_migrations(with_rates=settings.rates.enabled))
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    store = CallStore(pool)
    await store.sync_merchants(settings.merchants)
    app[DB_URL_KEY] = url
    app[POOL_KEY] = pool
    app[RATES_TABLES_KEY] = settings.rates.enabled  # decks from the callback site are taken
    app[STORE_KEY] = store
    app[SIP_ENDPOINTS_KEY] = SipEndpoints(pool)
    app[outbox_operator.OPERATOR_KEY] = outbox_operator.OutboxOperator(
        pool, settings.operator.api_token_sha256)
    yield
    await pool.close()


async def rates_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    service = await start_rating_service(app[POOL_KEY], settings.rates, log,
                                         settings.merchants)
    decider: Decider = FixedDecider()
    if service is not None:
        decider = RatesDecider(service, {m.id: m.inbound_tariff for m in settings.merchants},
                               announce_s=settings.rates.announce_s,
                               max_rates={m.id: m.max_cost_per_minute
                                          for m in settings.merchants},
                               quality={m.id: m.carrier_quality for m in settings.merchants})
        if any(m.carrier_quality for m in settings.merchants):
            from routing_rates.quality import QualityBoard

            service.quality_board = await QualityBoard(app[POOL_KEY], site="edge").start()
        app[LEARN_CALL_LENGTHS_KEY] = True
        log.info("routing_rates loaded: the call-back decision is priced")
    else:
        log.warning("no routing_rates: every call is unrated (merchants' default applies)")
    app[DECIDER_KEY] = decider
    yield
    if service is not None:
        await service.close()


#: the edge relay's adaptive linger (``OutboxRelay.claim_gap_s``): a call-back request
#: released less than this after the relay's last claim waits until then, and those
#: released meanwhile go with it in one pass and one signed request (evenly spaced
#: hang-ups below 50/s never wait). Control 100/s, one step each (bench/README.md,
#: "Capacity sweep", edgestore): own CPU 9.8 -> 7.7 ms a call-back, transactions a
#: call-back edge 3.1 -> 2.7 and callback 5.2 -> 4.2, hang-up -> INVITE p50 / p99
#: 9 / 36 -> 20 / 86 ms (the target is p99 <= 1 s)
RELAY_CLAIM_GAP_S = 0.02
#: the edge relay's gathering window (``OutboxRelay.gather_s``): while the hang-ups come
#: at least twice a window (13/s and more, a smoothed gap between releases), a call-back
#: request released waits up to this long for others to share its signed request, and
#: goes sooner once :data:`RELAY_GATHER_MESSAGES` have joined it or the next is not
#: expected within the window; rarer ones go at once. Each signed request costs both
#: servers a TLS request, a signature made and checked, an intake statement and a claim.
#: Control, alternating with one partner at most (75 ms, the earlier rule; bench/README.md,
#: "Capacity sweep", "More call-back requests a signed request"): at 20/s signed requests
#: 0.50 -> 0.30 a call-back, own CPU -2.2 and -2.4 ms a call-back, hang-up -> INVITE p99
#: 71-86 -> 169-178 ms; at 100/s 0.50 -> 0.125, own CPU -1.4 ms (the target is p99 <= 1 s)
RELAY_GATHER_S = 0.15
#: a gathering call-back request goes once this many share its signed request (at most
#: ``[peer] batch_messages``): at 100/s after about 80 ms instead of the window
RELAY_GATHER_MESSAGES = 8


def edge_relay(pool: asyncpg.Pool, db_url: str, client: LinkClient, settings: EdgeSettings,
               share: LinkShare) -> OutboxRelay:
    """The edge's outbox relay: a backlog of call-back requests goes to the callback site
    in batch requests of ``[peer] batch_messages``, ``[peer] passes_in_flight`` claims
    under way at once, their statements within the link's ``share`` of the pool (never
    the connections the inbound calls need); requests released within
    :data:`RELAY_CLAIM_GAP_S` of a claim wait for the next (0: none waits), and while they
    come often, up to :data:`RELAY_GATHER_S` for others to share its signed request (not
    when ``[peer] batch_messages`` is 1: never batch)."""
    batch_messages = settings.peer.batch_messages
    gather = batch_messages > 1
    return OutboxRelay(pool, db_url, client, owner=f"edge-{socket.gethostname()}-{os.getpid()}",
                       batch_paths=[CALLBACK_PATH], batch_messages=batch_messages,
                       passes_in_flight=settings.peer.passes_in_flight,
                       connections=lambda: share.acquire(pool, holder="relay"),
                       claim_gap_s=RELAY_CLAIM_GAP_S, gather_s=RELAY_GATHER_S if gather else 0.0,
                       gather_messages=min(RELAY_GATHER_MESSAGES, batch_messages) if gather
                       else None)


async def link_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    client = link_client(settings.signing, settings.tls, settings.peer)
    await client.start()
    relay = edge_relay(app[POOL_KEY], app[DB_URL_KEY], client, settings, app[LINK_SHARE_KEY])
    app[RELAY_KEY] = relay
    app[LINK_KEY] = client
    app[STORE_KEY].relay = relay    # a release hands its message to the relay
    try:
        async with background(relay.run(), "outbox relay"):
            yield
    finally:
        app[STORE_KEY].relay = None
    await client.close()


async def _calls(stasis: StasisApp, client: ari.AriClient) -> None:
    """The calls' events; their pool connections count as ``calls``'."""
    with holding("calls"):
        await run_events(stasis, client)


def closed_prompts(settings: EdgeSettings) -> ClosedPrompts | None:
    """The closed messages of every number with business hours, rendered ahead into
    ``[edge.hours] prompts_dir``; None without one (or without hours)."""
    where = settings.edge.hours
    schedules = [(m.hours, m.language) for m in settings.merchant_settings().values()
                 if m.hours is not None]
    if where.prompts_dir is None or where.asterisk_prompts_dir is None or not schedules:
        return None
    return ClosedPrompts(PromptCache(where.prompts_dir), where.asterisk_prompts_dir, schedules)


async def ari_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    client = make_ari_client(settings.ari, EVENTS_USED)
    # A call's early media ``play`` and its ``hangup`` with the cause (the requests of
    # every inbound call) go on the events websocket the router reads, where Asterisk
    # takes REST requests (22.4 on; else, and until its probe on connect is answered,
    # over HTTP): no HTTP request, parse and authentication at either end for each.
    client.requests_over_events = True
    await client.start()
    prompts = closed_prompts(settings)
    presence = settings.edge.presence
    deps = StasisDeps(ari=client, store=app[STORE_KEY], decider=app[DECIDER_KEY],
                      merchants=MerchantDirectory(settings.merchant_settings(),
                                                  settings.presence_lines()),
                      timings=settings.edge.timings, direct_context=settings.edge.direct_context,
                      closed_prompts=prompts,
                      presence=LinkPresence(app[LINK_KEY], presence.ask_s),
                      presence_timings=presence)
    stasis = StasisApp(deps)
    app[STASIS_KEY] = stasis
    pusher = EndpointPusher(client, app[SIP_ENDPOINTS_KEY], settings.edge.sip_endpoints)
    stasis.router.observe(pusher.observe)   # every (re)connect: all endpoints again
    app[HEALTH_KEY].ari_state = lambda: "connected" if stasis.connected else "connecting"
    await log_asterisk_reachability(client, settings.ari.url, log,
                                    "meanwhile the dialplan answers 503")
    async with contextlib.AsyncExitStack() as tasks:
        if prompts is not None:
            await tasks.enter_async_context(background(prompts.run(), "closed messages"))
        await tasks.enter_async_context(background(pusher.serve(app[DB_URL_KEY]),
                                                   "SIP endpoint push"))
        await tasks.enter_async_context(background(
            RegistrationWatch(client, app[SIP_ENDPOINTS_KEY]).run(), "SIP registrations"))
        await tasks.enter_async_context(background(_calls(stasis, client), "ari events"))
        yield
    await stasis.router.drain()
    await client.close()


async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    async with background(_sweep_forever(app, app[SETTINGS_KEY]), "held-request sweeper"):
        yield


async def _sweep_forever(app: web.Application, settings: EdgeSettings) -> None:
    with holding("sweeper"):
        await _sweep(app, settings)


async def _sweep(app: web.Application, settings: EdgeSettings) -> None:
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
