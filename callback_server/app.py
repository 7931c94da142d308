"""Composition root of the callback site.

``create_app(settings)`` builds the aiohttp application; its ``cleanup_ctx``
generators own, in order: the database (pool, migrations, merchant sync, the
toll-fraud guard that screens intake, rounds, legs and spend), the advisors
domain (:func:`advisors.http.install`: its admin API, presence events and timers), the
billing API (:func:`billing.http.install`: deposits, balances, ledgers; with
``[billing.stripe]`` :func:`billing.card_http.install`: cards, top-ups, postpaid
dunning, Stripe's webhook and the job retrying and reconciling them, and
:func:`billing.topup_link_http.install`: top-up links, and :func:`web.pages.install`: the
customer's card and top-up pages), the media API
(:func:`ivr_platform.media_http.install`: guidance uploads, recordings and their expiry job,
as ``[media]`` enables them), the merchants' IVR flows (:func:`callback_server.flows_http.
install`: versions, activation; :class:`~callback_server.active_flows.ActiveFlows` following
activations for the worker), the rating
service, the link to the edge (outbox relay), and the ARI connection with the Stasis
application and the job worker. Each is torn down in reverse
order; the worker drains running calls first (``callback.drain_s``).

Asterisk being unreachable never stops the server: the ARI client retries
forever, the worker leaves due jobs queued (uncounted) until the events
websocket is connected, and ``/healthz`` says ``ari: connecting``. The
database is retried for a minute at start-up; later outages answer 503
``database-unavailable`` so the edge retries. The building blocks shared with
the edge are in :mod:`shared.site`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from aiohttp import web

import advisors
import billing
import callback_server
import ivr_platform
import shared
from advisors.edge_phones import install as install_edge_phones
from advisors.http import install as install_advisors
from advisors.model import Group
from advisors.phone import install as install_phone_presence
from advisors.record_store import MIGRATIONS as CONSULTATION_MIGRATIONS
from advisors.record_store import ConsultationRecords
from advisors.session_http import install as install_advisor_sessions
from advisors.store import GroupInUse
from billing.http import install as install_billing
from billing.records import MIGRATIONS as BILLING_RECORD_MIGRATIONS
from billing.records import customer_leg
from callback_server.active_flows import ActiveFlows
from callback_server.advisor_desk import AdvisorDesk
from callback_server.answerlog import AnswerLog
from callback_server.click_http import ClickIntake
from callback_server.click_http import install as install_click_to_call
from callback_server.click_web_http import install as install_click_web
from callback_server.config import CallbackSettings
from callback_server.consult_billing import ConsultBilling, warm_connection
from callback_server.consult_control import install as install_consult_control
from callback_server.consult_live import ConsultReconciler, LiveConsultations
from callback_server.dunning_notify import DunningNotifications
from callback_server.erasure import install as install_erasure
from callback_server.erasure import site_secret
from callback_server.flows_http import install as install_flows
from callback_server.guard.alerts import Alert
from callback_server.guard.http import GUARD_KEY
from callback_server.guard.http import install as install_guard
from callback_server.guard.reading import GUARD_TRIPS
from callback_server.guard.service import Guard
from callback_server.http import INTAKE_KEY, STORE_KEY, create_http_app
from callback_server.intake import CallbackIntake
from callback_server.ivr_flow import Flow
from callback_server.ivr_services import (
    evict_forever,
    flow_preparer,
    prerender,
    site_services,
    site_speech,
    webhook_session,
)
from callback_server.leg_progress import LegProgress
from callback_server.legrecord import LegRecords
from callback_server.metrics import callback as callback_metrics
from callback_server.queue_reading import CALLBACK_QUEUE
from callback_server.reconcile import LegSettler
from callback_server.round_runner import RUNNING_CALL_WRITES
from callback_server.routing import Routing
from callback_server.stasis import EVENTS_USED, StasisApp
from callback_server.store import CallbackStore
from callback_server.store.info_records import InfoRecords
from callback_server.store.leg_results import LegResults
from callback_server.worker import Worker
from ivr_platform.guidance import media_ref
from ivr_platform.media_http import install as install_media
from ivr_platform.metrics import ivr as ivr_metrics
from ivr_platform.notify_http import install as install_notify
from ivr_platform.sms_http import install as install_sms
from ivr_platform.tts import PromptCache
from shared import outbox_operator
from shared.client_address import TRUSTED_PROXIES_KEY
from shared.db import MigrationSet, migrate, package_migrations, serve_first
from shared.http import HEALTH_KEY, Health
from shared.link import pin_peer, purge_seen
from shared.metrics_http import READINGS_KEY
from shared.metrics_http import install as install_metrics
from shared.money import FxTable
from shared.openapi import add_operations
from shared.outbox import EVENTS_PATH, DeadLetter, OutboxRelay
from shared.site import ari_client as make_ari_client
from shared.site import (
    background,
    connect_database,
    link_client,
    log_asterisk_reachability,
    start_rating_service,
    verifier_for,
)
from web.advisor_page import install as install_advisor_page
from web.click_page import install as install_click_page
from web.operator_page import install as install_operator_page

log = logging.getLogger("callback.app")

PURGE_EVERY_S = 3600.0
#: how long the outbox relay waits, woken by a message written, before it claims: the
#: facts of the call-backs that end meanwhile (their CDRs, statuses, request info) go to
#: the edge in the same pass, a batch request a kind, instead of one pass each. None of
#: them waits on the line; at 20 call-backs/s, 300 ms gathers about six call-backs'
#: messages, each signed request costing the edge a TLS request, a signature checked and
#: a statement: 0.32 -> 0.14 requests a call-back at control 20/s with the edge's
#: gathering (bench/README.md, "Capacity sweep", "More call-back requests a signed
#: request")
RELAY_LINGER_S = 0.3

SETTINGS_KEY = web.AppKey("callback_settings", CallbackSettings)
DB_URL_KEY = web.AppKey("callback_db_url", str)
POOL_KEY = web.AppKey("callback_pool", asyncpg.Pool)
ROUTING_KEY = web.AppKey("callback_routing", Routing)
WORKER_KEY = web.AppKey("callback_worker", Worker)
ACTIVE_FLOWS_KEY = web.AppKey("callback_active_flows", ActiveFlows)
#: where say nodes' texts are rendered (None: no ``[media] guidance_dir``)
SPEECH_KEY: web.AppKey[PromptCache | None] = web.AppKey("callback_speech")
STASIS_KEY = web.AppKey("callback_stasis", StasisApp)
#: ``serve --role``: ``all`` (the whole site) or ``intake``
ROLE_KEY = web.AppKey("callback_role", str)
#: keyword arguments of the group-committed intake (``CallbackIntake``) when not its
#: defaults; set before the app starts (the intake benchmark varies them)
INTAKE_OPTIONS_KEY: web.AppKey[dict[str, Any]] = web.AppKey("callback_intake_options")


def owner_name() -> str:
    return f"callback-{socket.gethostname()}-{os.getpid()}"


def site_fx(settings: CallbackSettings) -> FxTable | None:
    """The ``[rates]`` FX table, when configured (billing records convert legs' costs with
    it; otherwise ``shared.money``'s default)."""
    return settings.rates.fx() if settings.rates.fx_rates else None


def dunning_notifications(settings: CallbackSettings) -> DunningNotifications | None:
    """Where a postpaid charge's dunning notices go: the merchants' notification channels
    and the customers of ``[sms] dunning_merchants`` by SMS (neither: only
    ``billing_notices``)."""
    notify = settings.notify if settings.notify.channels else None
    sms = settings.sms if settings.sms is not None and settings.sms.dunning_merchants else None
    return DunningNotifications(notify, sms) if notify is not None or sms is not None else None


def migration_sets(with_rates: bool) -> list[MigrationSet]:
    sets = [package_migrations("link", shared.__file__)]
    if with_rates:
        rates = importlib.import_module("routing_rates")
        sets.append(package_migrations("routing_rates", str(rates.__file__)))
    sets.append(package_migrations("callback", callback_server.__file__))
    sets.append(package_migrations("advisors", advisors.__file__))
    sets.append(CONSULTATION_MIGRATIONS)
    sets.append(package_migrations("billing", billing.__file__))
    sets.append(BILLING_RECORD_MIGRATIONS)
    sets.append(package_migrations("ivr_platform", ivr_platform.__file__))
    return sets


def create_app(settings: CallbackSettings, *, with_ari: bool = True) -> web.Application:
    app = _intake_app(settings, "all")
    outbox_operator.add_routes(app)
    install_advisors(app, lambda a: (a[DB_URL_KEY], a[POOL_KEY]),
                     operators={m.id: m.operator for m in settings.merchants},
                     group_in_use=group_in_use(app, settings))
    install_advisor_sessions(app)
    install_advisor_page(app)
    install_billing(app, lambda a: a[POOL_KEY], fx=site_fx(settings),
                    customer_leg_wait_s=settings.billing.customer_leg_wait_s)
    notify = settings.notify if settings.notify.channels else None
    install_media(app, settings.media, lambda a: a[POOL_KEY], guidance_in_use(app, settings),
                  notify, owner=owner_name(), db_url=lambda a: a[DB_URL_KEY])
    install_notify(app, settings.notify, lambda a: a[POOL_KEY], owner=owner_name(),
                   db_url=lambda a: a[DB_URL_KEY])
    install_sms(app, settings.sms, lambda a: a[POOL_KEY], owner=owner_name(),
                db_url=lambda a: a[DB_URL_KEY])
    ivr_metrics()  # its families are on /metrics before the first call
    speech = app[SPEECH_KEY] = site_speech(settings.media)
    if speech is not None:
        app.cleanup_ctx.append(speech_ctx)
    install_flows(app, lambda a: a[POOL_KEY], settings.stored_flow_problems,
                  flow_preparer(settings, speech))
    install_consult_control(app, lambda a: a[POOL_KEY], lambda a: a.get(GUARD_KEY))
    install_operator_page(app)
    app.cleanup_ctx.append(active_flows_ctx)
    if settings.billing.stripe is not None:
        from billing.card_http import install as install_cards  # needs stripe

        install_cards(app, lambda a: a[POOL_KEY], settings.billing, fx=site_fx(settings),
                      notices=dunning_notifications(settings))
        from billing.topup_link_http import install as install_topup_links
        from web.pages import install as install_pages

        install_topup_links(app)
        install_pages(app, {m.id: m.name for m in settings.merchants})
    app.cleanup_ctx.append(rates_ctx)
    install_click_to_call(app, lambda a: ClickIntake(
        a[STORE_KEY], AdvisorDesk(a[POOL_KEY], a[ROUTING_KEY]), a[GUARD_KEY],
        consult_billing(a), {m.id: m for m in settings.merchants}))
    install_click_web(app, settings.sms)
    install_click_page(app)
    install_erasure(app, lambda a: a.get(POOL_KEY), site_secret(settings.signing.keys[0]),
                    settings.media.recordings_dir)
    app.cleanup_ctx.append(link_ctx)
    if with_ari:
        app.cleanup_ctx.append(ari_ctx)
    app.cleanup_ctx.append(purge_ctx)
    if settings.rates.enabled:
        _mount_rates(app)
    return app


def consult_billing(app: web.Application) -> ConsultBilling:
    """Billing as consultations see it (admission, the meter, the charge)."""
    settings = app[SETTINGS_KEY]
    return ConsultBilling(app[POOL_KEY], settings.billing, fx=site_fx(settings),
                          notices=dunning_notifications(settings))


def _active_stored(app: web.Application, merchant: str) -> dict[str, Flow]:
    """The merchant's active stored flow, by its label (none: its configured file)."""
    held = app[ACTIVE_FLOWS_KEY].get(merchant) if ACTIVE_FLOWS_KEY in app else None
    return {f"{held.flow.name} version {held.version}": held.flow} if held else {}


def guidance_in_use(app: web.Application, settings: CallbackSettings
                    ) -> Callable[[str, str], list[str]]:
    """The flows that play a merchant's guidance: its configured flow and its active
    stored version (a guidance in use is not deleted)."""
    def in_use(merchant: str, name: str) -> list[str]:
        return settings.flows_playing(merchant, media_ref(merchant, name),
                                      _active_stored(app, merchant))
    return in_use


def group_in_use(app: web.Application, settings: CallbackSettings) -> GroupInUse:
    """Why a merchant's advisor group cannot be deleted now: a consultation through it
    in progress (ringing, queued or talking: a ``consult_live`` row), or its configured
    flow or active stored version ringing it (the flow and node named)."""
    async def in_use(conn: asyncpg.Connection, merchant: str, group: Group) -> list[str]:
        live = [f"consultation {r['consultation_id']} in progress" for r in await conn.fetch(
            "SELECT consultation_id FROM consult_live WHERE merchant_id = $1"
            " AND snapshot->>'group_id' = $2 ORDER BY consultation_id",
            merchant, str(group.id))]
        flows = settings.flows_connecting(merchant, group.name, _active_stored(app, merchant))
        return live + [f"flow {node} rings it" for node in flows]
    return in_use


def create_intake_app(settings: CallbackSettings) -> web.Application:
    """The intake alone (``serve --role intake``): the link's ``POST
    /v1/link/callbacks[/batch]`` (verify, guard screening, durable store, answer),
    ``GET /v1/callbacks/{id}``, ``/healthz`` and the guard's routes, over the database.

    No relay, rates, ARI, jobs or housekeeping: the site's full process (``create_app``)
    runs those, serves the same routes, and wakes on each stored request's NOTIFY
    whichever process stored it. Extra intake processes share its port
    (``[http] reuse_port``) when one core's worth of intake is not enough."""
    app = _intake_app(settings, "intake")
    app[HEALTH_KEY].ari_state = lambda: "not used (intake role)"
    return app


def _intake_app(settings: CallbackSettings, role: str) -> web.Application:
    """HTTP routes, guard and database: what every role of the site serves."""
    health = Health(extra=lambda: {"role": role, "pid": os.getpid()})
    app = create_http_app(merchants=settings.merchants, verifier=verifier_for(settings.signing),
                          max_body_bytes=settings.http.max_body_bytes, health=health)
    app[SETTINGS_KEY] = settings
    app[TRUSTED_PROXIES_KEY] = settings.http.trusted_proxies
    pin_peer(app, settings.peer.identity if settings.tls else None)
    app[ROLE_KEY] = role
    install_guard(app)
    install_phone_presence(app, lambda a: a[POOL_KEY])
    install_edge_phones(app, lambda a: a[POOL_KEY])
    install_metrics(app, lambda a: a.get(POOL_KEY))
    callback_metrics()  # its series exist before the first call-back
    app[READINGS_KEY] += [CALLBACK_QUEUE, GUARD_TRIPS]
    app.cleanup_ctx.append(database_ctx)
    return app


def _mount_rates(app: web.Application) -> None:
    """``GET /v1/rates/quote``, ``/v1/rates/decide`` and ``POST /v1/rates/simulate``: 503
    until the service has started."""
    from routing_rates.http import routes

    def service() -> Any:
        return app[ROUTING_KEY].service if ROUTING_KEY in app else None

    add_operations(app, routes(service, {m.id: m for m in app[SETTINGS_KEY].merchants}))


async def _warm_open_connections(pool: asyncpg.Pool) -> None:
    """Warm the connections the pool opened before the migrations ran (a fresh database:
    their :func:`warm_connection` found nothing to warm): each idle one acquired at once,
    so that each is a different connection."""
    async def warm() -> None:
        async with pool.acquire() as conn:
            await warm_connection(conn)

    await asyncio.gather(*(warm() for _ in range(pool.get_idle_size())))


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    # each new pooled connection as one that has served admissions (warm_connection)
    url, pool = await connect_database(settings.database, log, warm=warm_connection)
    serve_first(pool, RUNNING_CALL_WRITES)
    async with pool.acquire() as conn:
        applied = await migrate(conn, migration_sets(settings.rates.enabled))
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
        await _warm_open_connections(pool)
    fx = site_fx(settings)  # for spend caps
    guard = Guard(pool, settings.guard, fx=fx)
    store = CallbackStore(pool, owner=owner_name(), lease_s=settings.callback.lease_s,
                          guard=guard, notify=settings.notify if settings.notify.channels
                          else None, customer_legs=True)
    await store.sync_merchants(settings.merchants)
    store.leg_results = leg_results = LegResults(pool)
    store.info_records = info_records = InfoRecords(pool)
    app[DB_URL_KEY] = url
    app[POOL_KEY] = pool
    app[STORE_KEY] = store
    app[INTAKE_KEY] = intake = CallbackIntake(store, **app.get(INTAKE_OPTIONS_KEY, {}))
    app[GUARD_KEY] = guard
    app[outbox_operator.OPERATOR_KEY] = outbox_operator.OutboxOperator(
        pool, settings.operator.api_token_sha256 or settings.guard.operator_token_sha256)
    yield
    await intake.close()  # answers or fails every request it holds; gives connections back
    await leg_results.close()
    await info_records.close()
    await guard.alerter.close()
    await pool.close()


async def rates_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    service = await start_rating_service(app[POOL_KEY], settings.rates, log,
                                         settings.merchants)
    if service is not None:
        from routing_rates.quality import QualityBoard

        service.quality_board = await QualityBoard(app[POOL_KEY]).start()
        log.info("routing_rates loaded: carriers ranked by expected cost, and by the "
                 "merchants' [merchants.carrier_quality] floors")
    elif not settings.callback.static_routes:
        log.error("no routing_rates and no [[callback.routes]]: every job fails with no_route")
    app[ROUTING_KEY] = Routing(service, settings.callback.static_routes)
    yield
    if service is not None:
        await service.close()       # and its quality board


async def active_flows_ctx(app: web.Application) -> AsyncIterator[None]:
    """The merchants' active stored flows, read before the worker starts, then followed."""
    flows = app[ACTIVE_FLOWS_KEY] = ActiveFlows(app[POOL_KEY], app[DB_URL_KEY])
    await flows.refresh()
    async with background(flows.run(), "flow activations"):
        yield


async def link_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    client = link_client(settings.signing, settings.tls, settings.peer)
    await client.start()
    relay = OutboxRelay(app[POOL_KEY], app[DB_URL_KEY], client, owner=owner_name(),
                        passes_in_flight=settings.peer.passes_in_flight,
                        batch_paths=[EVENTS_PATH], batch_messages=settings.peer.batch_messages,
                        on_dead_letter=dead_letter_alert(app[GUARD_KEY]),
                        linger_s=RELAY_LINGER_S)
    async with background(relay.run(), "outbox relay"):
        yield
    await client.close()


def dead_letter_alert(guard: Guard) -> Callable[[DeadLetter], None]:
    """A message the edge refused for good raises a guard alert (webhook and mail)."""
    def alert(letter: DeadLetter) -> None:
        guard.alerter.alert(Alert(
            "link_dead_letter", letter.message_id,
            f"the edge refused {letter.kind} message {letter.message_id} for good "
            f"(HTTP {letter.status}); requeue it with POST /v1/link/outbox/"
            f"{letter.message_id}/requeue once the cause is fixed",
            at=letter.dead_at, details={"kind": letter.kind, "status": letter.status,
                                        "response": letter.response}))
    return alert


async def ari_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    client = make_ari_client(settings.ari, EVENTS_USED)
    await client.start()
    workers: list[Worker] = []
    store = app[STORE_KEY]
    routing = app[ROUTING_KEY]
    merchants = {m.id: m for m in settings.merchants}
    answers = settings.callback.answer_log
    records = LegRecords(client, answers=AnswerLog(answers) if answers is not None else None)
    settler = LegSettler(store, routing, records, merchants)
    webhooks = webhook_session()               # flows' webhooks: public addresses only
    speech = app[SPEECH_KEY]
    services = site_services(settings, app[POOL_KEY], webhooks, speech)
    if speech is not None:        # the configured flows' fixed texts, before any call
        for m in settings.merchants:
            await prerender(speech, settings.flows[m.ivr_flow], m.language)
    pool = app[POOL_KEY]
    desk = AdvisorDesk(pool, routing, {m.id: m.operator for m in settings.merchants},
                       settings.callback.worker.edge_trunks)
    consultations = ConsultationRecords(pool, customer_leg=customer_leg)
    billing = consult_billing(app)
    live = LiveConsultations(pool)
    reconciler = ConsultReconciler(live, client=client, store=store, settler=settler,
                                   records=consultations, desk=desk, billing=billing)

    def identified(name: str) -> None:
        store.asterisk = name
    stasis = StasisApp(client, lambda: workers[0].calls if workers else {}, records=records,
                       settle_stray=settler.settle_stray, identified=identified,
                       reconcile=reconciler.reconcile)
    progress = LegProgress(pool)      # first ring/answer: the carriers' PDD
    stasis.router.observe(progress.observe)
    worker = Worker(store=store, db_url=app[DB_URL_KEY], merchants=merchants,
                    flows=settings.flows, routes=routing, client=client, router=stasis.router,
                    rater=routing, ari_ready=stasis.ready, settings=settings.callback.worker,
                    guard=app[GUARD_KEY], settler=settler, desk=desk,
                    consultations=consultations, billing=billing,
                    active_flows=app[ACTIVE_FLOWS_KEY], services=services, live=live,
                    reconciler=reconciler)
    workers.append(worker)
    app[STASIS_KEY] = stasis
    app[WORKER_KEY] = worker
    health = app[HEALTH_KEY]
    health.ari_state = lambda: "connected" if stasis.ready.is_set() else "connecting"
    process = health.extra
    health.extra = lambda: {**process(), "calls": len(worker.calls)}
    await log_asterisk_reachability(client, settings.ari.url, log, "jobs stay queued meanwhile")
    async def purge_leg_records_forever() -> None:
        while True:     # Asterisk's own leg records of days no rescue can still ask about
            await stasis.ready.wait()
            try:
                await records.purge()
                if records.answers is not None:
                    await asyncio.to_thread(records.answers.rotate, time.time())
            except Exception:   # never let housekeeping stop for good
                log.exception("purge of leg records failed; next in %.0f s", PURGE_EVERY_S)
            await asyncio.sleep(PURGE_EVERY_S)

    async with background(stasis.run(), "ari events"), \
            background(purge_leg_records_forever(), "leg record purge"), \
            background(progress.run(), "leg progress"):
        async with background(worker.run(), "callback worker"):
            yield
            await worker.shutdown()
    await services.drain()
    await webhooks.close()
    await stasis.router.drain()
    await client.close()


async def speech_ctx(app: web.Application) -> AsyncIterator[None]:
    """The say nodes' renders, least recently used first, evicted every ``[media]
    sweep_s``."""
    speech, media = app[SPEECH_KEY], app[SETTINGS_KEY].media
    assert speech is not None       # mounted only with one
    async with background(evict_forever(speech, media.tts_cache, media.sweep_s),
                          "tts eviction"):
        yield


async def purge_ctx(app: web.Application) -> AsyncIterator[None]:
    async def purge_forever() -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY_S)
            try:
                async with app[POOL_KEY].acquire() as conn:
                    await purge_seen(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("purge of old message ids failed: %s", exc)

    async with background(purge_forever(), "message id purge"):
        yield
