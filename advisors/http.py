"""The advisors admin API and presence event stream (JSON; the merchant's bearer token,
:func:`shared.http.authenticated_merchant`, selects the tenant).

* ``GET|POST /v1/advisors`` (the current advisors), ``GET|PATCH|DELETE
  /v1/advisors/{advisor_id}`` (DELETE retires the advisor, who stays readable by id)
* ``PUT /v1/advisors/{advisor_id}/presence``: online (standby), offline, working, break
* ``GET /v1/advisors/events``: Server-Sent Events, one ``presence`` event per change of
  any of the merchant's advisors (``id:`` is the event row's id; reconnect with
  ``Last-Event-ID`` to get the ones missed), a comment every 15 s to keep it open
* ``GET|POST /v1/advisor-groups``, ``GET|PATCH|DELETE /v1/advisor-groups/{group_id}``
* ``GET|POST /v1/customers``, ``GET|PATCH /v1/customers/{customer_id}``
* ``GET|PUT /v1/advisor-settings``
* ``GET /v1/consultations`` (``since``/``until`` on ``requested_at``, ``advisor_id``,
  ``customer_id``, ``group_id``, ``limit``, ``cursor``), ``GET
  /v1/consultations/{consultation_id}``: the consultation records (:mod:`advisors.records`)

Error ids: ``invalid-field`` (400, with ``field``), ``invalid-json`` (400), ``not-found``
(404), ``duplicate`` (409, with ``field``), ``advisor-busy`` (409: retiring an advisor
rung, talking or awaited in the queue), ``advisor-retired`` (409: changing one),
``group-in-use`` (409: deleting a group a consultation or flow uses),
``auth-*`` (401), ``advisors-unavailable`` (503 before the database is connected),
``database-unavailable`` (503 when it is away).

:func:`install` mounts the routes, adds :data:`advisors.metrics.ADVISORS_BY_STATE` to
the site's ``/metrics`` readings and, in ``cleanup_ctx`` after the site's database, the
store, the event hub and the after-call timers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
from aiohttp import web

from advisors import record_schemas
from advisors import schemas as s
from advisors.errors import NotFound
from advisors.events import EventHub, Published, Subscriber, since
from advisors.live import Presences
from advisors.metrics import ADVISORS_BY_STATE
from advisors.model import Via
from advisors.record_store import ID_FILTERS, ConsultationRecords
from advisors.records import ID_PATTERN
from advisors.resources import (
    ADVISORS,
    CUSTOMERS,
    GROUPS,
    UNAVAILABLE,
    id_param,
    path_id,
)
from advisors.sessions import Sessions
from advisors.store import AdvisorStore, GroupInUse
from shared.http import (
    InvalidField,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    read_json_object,
    started,
)
from shared.metrics_http import READINGS_KEY
from shared.openapi import MERCHANT, Operation, Param, Reply, add_operations
from shared.paging import list_params, page_schema, parse_list_query
from shared.site import background

log = logging.getLogger("advisors.http")

HEARTBEAT_S = 15.0
#: the site's database: (URL for the LISTEN connection, pool), once connected
Database = Callable[[web.Application], tuple[str, asyncpg.Pool]]


@dataclass(frozen=True)
class Services:
    store: AdvisorStore
    live: Presences
    hub: EventHub
    records: ConsultationRecords
    sessions: Sessions


SERVICES_KEY = web.AppKey("advisors_services", Services)
GROUP_IN_USE_KEY: web.AppKey[GroupInUse | None] = web.AppKey("advisors_group_in_use")


def install(app: web.Application, database: Database, *, operators: Mapping[str, str],
            group_in_use: GroupInUse | None = None) -> None:
    """``operators``: each merchant's operator extension (a SIP contact taken without an
    endpoint at the edge); any other SIP contact needs the edge's endpoint
    (:mod:`advisors.edge_phones`). ``group_in_use``: what the site finds using a group
    (its consultations in progress, its flows), refusing its deletion."""
    add_operations(app, OPERATIONS)
    app[GROUP_IN_USE_KEY] = group_in_use
    if READINGS_KEY in app:  # the site serves /metrics
        app[READINGS_KEY].append(ADVISORS_BY_STATE)

    async def advisors_ctx(app: web.Application) -> AsyncIterator[None]:
        url, pool = database(app)
        services = Services(AdvisorStore(pool, operators), Presences(pool), EventHub(url),
                            ConsultationRecords(pool), Sessions(pool))
        app[SERVICES_KEY] = services
        async with background(services.hub.run(), "advisor events"), \
                background(services.live.run_timers(), "advisor timers"):
            yield

    async def end_streams(app: web.Application) -> None:
        """Open event streams end cleanly when the server stops, before it waits for
        its handlers to finish."""
        if SERVICES_KEY in app:
            app[SERVICES_KEY].hub.close()

    app.cleanup_ctx.append(advisors_ctx)
    app.on_shutdown.append(end_streams)


def _services(request: web.Request) -> tuple[Services, str]:
    """The services and the caller's merchant (401 first, then 503 if not started)."""
    merchant_id = authenticated_merchant(request)
    return started(request, SERVICES_KEY, "advisors-unavailable"), merchant_id


def _directory(request: web.Request) -> tuple[AdvisorStore, str]:
    svc, merchant = _services(request)
    return svc.store, merchant


# --- presence and events -------------------------------------------------------------


async def put_presence(request: web.Request) -> web.Response:
    """Set the advisor online (standby: gets calls), offline, working or on break. A
    consultation in progress goes on; the advisor takes no new one unless online."""
    svc, merchant = _services(request)
    return await set_presence(request, svc, merchant, Via.API)


async def set_presence(request: web.Request, svc: Services, merchant: str, via: Via
                       ) -> web.Response:
    """Apply the body's presence to the path's advisor of ``merchant``: the reply of
    ``PUT /v1/advisors/{advisor_id}/presence`` and of the operator page's route."""
    advisor_id = path_id(request, "advisor_id")
    wanted = s.parse_presence(await read_json_object(request))
    presence, _ = await svc.live.apply(merchant, advisor_id,
                                       wanted.event(svc.live.clock(), via))
    return json_response(s.presence_json(presence))


async def retire_advisor(request: web.Request) -> web.Response:
    """Retire the advisor: offline, out of every group, signed out, never offered, listed
    or found by code or contact again; their code is free for a new advisor; their
    records and events stay, and ``GET /v1/advisors/{advisor_id}`` still reads them (with
    ``retired_at``). A ``retired`` presence event is published. 409 ``advisor-busy`` while
    they are rung or talking, or a queued customer waits for them alone. Retiring a
    retired advisor changes nothing."""
    svc, merchant = _services(request)
    advisor_id = path_id(request, "advisor_id")
    await svc.live.retire(merchant, advisor_id)
    return json_response(s.advisor_json(*await svc.store.advisor(merchant, advisor_id)))


async def delete_group(request: web.Request) -> web.Response:
    """Delete the group: its memberships go, the consultation records naming it stay, a
    billing policy of it is never in force again (group ids are not reused). 409
    ``group-in-use`` naming each consultation in progress through it and each flow node
    ringing it (the merchant's configured flow, its active stored version)."""
    svc, merchant = _services(request)
    group = await svc.store.delete_group(merchant, path_id(request, "group_id"),
                                         request.app[GROUP_IN_USE_KEY])
    return json_response(s.group_json(group))


def _sse(published: Published) -> bytes:
    return f"id: {published.id}\nevent: presence\ndata: {published.text}\n\n".encode()


async def pump(response: web.StreamResponse, queue: Subscriber, seen: int,
               keep: Callable[[dict[str, Any]], bool] = lambda _: True) -> None:
    """Write the events of ``queue`` after id ``seen`` that ``keep`` takes, until the
    queue is closed; a comment every :data:`HEARTBEAT_S` while none come. The events
    queued by the time the stream is written to go out in one write."""
    while True:
        try:
            async with asyncio.timeout(HEARTBEAT_S):
                batch = [await queue.get()]
        except TimeoutError:
            await response.write(b": keep-alive\n\n")
            continue
        while batch[-1] is not None and not queue.empty():
            batch.append(queue.get_nowait())
        frames = []
        for item in batch:
            if item is not None and item.id > seen and keep(item.event):
                frames.append(_sse(item))
                seen = item.id
        if frames:
            await response.write(b"".join(frames))
        if batch[-1] is None:
            return


async def advisor_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each change of an advisor's state as it is committed (the
    ``advisor_events`` row: advisor_id, at, event, via, before, after, desk, load,
    reason). With ``Last-Event-ID``, the merchant's events after it come first. The events
    queued for the stream by the time it is written to go out in one write."""
    svc, merchant = _services(request)
    last_header = request.headers.get("Last-Event-ID")
    if last_header is not None and not (last_header.isascii() and last_header.isdigit()
                                        and len(last_header) < 19):
        raise InvalidField("Last-Event-ID", "expected an event id")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    with svc.hub.subscribe(merchant) as queue:
        seen = int(last_header) if last_header is not None else 0
        missed = await since(svc.store.pool, merchant, seen) if last_header else []
        await response.prepare(request)  # from here on, no error reply: the stream ends
        try:
            await response.write(b": advisor presence events\n\n")
            for event in missed:
                await response.write(_sse(Published.of(event)))
                seen = event["id"]
            await pump(response, queue, seen)
        except ConnectionResetError:
            pass  # the subscriber went away
    return response


# --- groups, customers, settings ------------------------------------------------------------


async def get_settings(request: web.Request) -> web.Response:
    """After-call work, ring timeout, misses before a break, lines (defaults until set)."""
    svc, merchant = _services(request)
    return json_response(s.settings_json(await svc.store.rules(merchant)))


async def put_settings(request: web.Request) -> web.Response:
    """Change the settings given; the others keep their values."""
    svc, merchant = _services(request)
    data = await read_json_object(request)
    rules = s.parse_settings(data, await svc.store.rules(merchant))
    return json_response(s.settings_json(await svc.store.set_rules(merchant, rules)))


# --- consultation records ------------------------------------------------------------------


async def list_consultations(request: web.Request) -> web.Response:
    """The merchant's consultation records, oldest stored first."""
    svc, merchant = _services(request)
    q = parse_list_query(merchant, request.rel_url.query, id_filters=ID_FILTERS)
    return json_response((await svc.records.page(q)).to_json())


async def get_consultation(request: web.Request) -> web.Response:
    """One consultation record."""
    svc, merchant = _services(request)
    consultation_id = request.match_info["consultation_id"]
    if not ID_PATTERN.match(consultation_id):
        raise InvalidField("consultation_id", "not a consultation id")
    found = await svc.records.get(merchant, consultation_id)
    if found is None:
        raise NotFound("consultation", consultation_id)
    return json_response(found)


# --- declarations ---------------------------------------------------------------------------

EVENT: dict[str, Any] = {
    "type": "string",
    "description": "lines 'id: <n>', 'event: presence', 'data: <JSON>' per event; the JSON "
                   "has id, merchant_id, advisor_id, at, event (online, offline, working, "
                   "break, offered, answered, ring_missed, ended, wrap_up_elapsed, retired), via "
                   "(api, web, phone, system or null), consultation_id, before, after, desk, "
                   "load, reason"}
_A, _G, _C = "advisors", "advisor groups", "customers"
OPERATIONS = tuple(replace(op, handler=database_errors_as_503(op.handler)) for op in (
    *ADVISORS.collection(_directory),
    # before /v1/advisors/{advisor_id}: the router tries routes in order
    Operation("GET", "/v1/advisors/events", advisor_events, "Presence event stream (SSE)",
              "advisors", {200: Reply("an event stream", EVENT, "text/event-stream")},
              access=MERCHANT,
              params=(Param("Last-Event-ID", "header", {"type": "string",
                                                         "pattern": "^[0-9]+$"},
                            "replay the merchant's events after this id first"),),
              errors={400: ("invalid-field",), **UNAVAILABLE}),
    *ADVISORS.items(_directory),
    Operation("DELETE", "/v1/advisors/{advisor_id}", retire_advisor, "Retire an advisor",
              "advisors", {200: Reply("the retired advisor", s.ADVISOR)}, access=MERCHANT,
              params=id_param("advisor_id"),
              errors={400: ("invalid-field",), 404: ("not-found",),
                      409: ("advisor-busy",), **UNAVAILABLE}),
    Operation("PUT", "/v1/advisors/{advisor_id}/presence", put_presence,
              "Set an advisor's presence", "advisors",
              {200: Reply("the presence", s.PRESENCE)}, access=MERCHANT,
              params=id_param("advisor_id"), body=s.PRESENCE_INPUT,
              errors={400: ("invalid-field",), 404: ("not-found",),
                      409: ("advisor-retired",), **UNAVAILABLE}),
    *GROUPS.collection(_directory), *GROUPS.items(_directory),
    Operation("DELETE", "/v1/advisor-groups/{group_id}", delete_group, "Delete a group",
              "advisor groups", {200: Reply("the deleted group", s.GROUP)}, access=MERCHANT,
              params=id_param("group_id"),
              errors={400: ("invalid-field",), 404: ("not-found",), 409: ("group-in-use",),
                      **UNAVAILABLE}),
    *CUSTOMERS.collection(_directory), *CUSTOMERS.items(_directory),
    Operation("GET", "/v1/advisor-settings", get_settings, "Advisor settings", "advisors",
              {200: Reply("the settings", s.SETTINGS)}, access=MERCHANT, errors=UNAVAILABLE),
    Operation("PUT", "/v1/advisor-settings", put_settings, "Change advisor settings",
              "advisors", {200: Reply("the settings", s.SETTINGS)}, access=MERCHANT,
              body=s.SETTINGS, errors={400: ("invalid-field",), **UNAVAILABLE}),
    Operation("GET", "/v1/consultations", list_consultations, "Consultation records",
              "consultations", {200: Reply("one page, oldest first",
                                           page_schema(record_schemas.LISTED))},
              access=MERCHANT, params=list_params(*ID_FILTERS),
              errors={400: ("invalid-field",), **UNAVAILABLE}),
    Operation("GET", "/v1/consultations/{consultation_id}", get_consultation,
              "One consultation record", "consultations",
              {200: Reply("the record", record_schemas.LISTED)}, access=MERCHANT,
              params=(Param("consultation_id", "path", record_schemas.PROPERTIES[
                  "consultation_id"]),),
              errors={400: ("invalid-field",), 404: ("not-found",), **UNAVAILABLE}),
))
