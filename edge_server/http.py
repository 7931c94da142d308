"""The edge's HTTP API.

* ``POST /v1/link/events``: reports from the callback site (signed; verified by
  ``shared.link.signature_middleware``; idempotent by message id, each in one statement
  (:mod:`edge_server.report_store`) or through ``shared.link.accept_once``, and by
  natural key in the tables). The link's messages hold at most their share of the
  pool's connections (:mod:`edge_server.link_share`).
* ``POST /v1/link/events/batch``: several such reports in one signed request (the
  callback site's relay sends what is due together), each answered on its own; a
  call-back's reports in one statement for the batch.
* ``POST /v1/link/rate-decks``: the parts of a rate deck version the callback site
  activated (``routing_rates.distribute``; signed, idempotent likewise).
* ``GET /v1/requests``, ``GET /v1/cdrs``, ``GET /v1/calls`` (every inbound call:
  its state, outcome and why, e.g. ``closed``/``outside_hours`` out of business hours,
  and its call-back's status) and ``GET /v1/consultations``: for the merchant's call
  center, ``Authorization: Bearer <token>``; the token (its SHA-256 is configured per
  merchant) selects the tenant. Query (:mod:`shared.paging`): ``since``/``until``
  (ISO 8601 with a zone), ``limit`` (1-500, default 100), ``cursor`` (from
  ``next_cursor``); consultations also ``advisor_id``, ``customer_id``, ``group_id``.
* ``GET``/``PUT``/``DELETE /v1/sip-endpoints[/{user}]``: the merchant's advisors' SIP
  endpoints (:mod:`edge_server.sip_http`).
* ``GET /healthz``.
* ``GET /openapi.json``: the OpenAPI 3.1 document of these routes.

Error ids (``{"error": {"id": ...}}``): ``auth-missing``, ``auth-invalid`` (401),
``invalid-field`` (400, with ``field``), ``invalid-json`` (400),
``unknown-merchant`` / ``tenant-mismatch`` (422), ``database-unavailable`` (503),
plus the ``signature-*`` ids of the link middleware and ``body-too-large`` (413).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
from aiohttp import web

from advisors import record_schemas
from advisors.record_store import ID_FILTERS, list_records
from billing import records as billing_records
from edge_server.link_share import DEFAULT_RESERVE, LinkShare
from edge_server.report_store import (
    ONE_STATEMENT,
    Delivery,
    apply_report,
    apply_reports,
    save_report,
)
from edge_server.reports import (
    EVENT_ANSWER,
    EVENT_EXAMPLES,
    EVENT_SCHEMA,
    Report,
    kind_of,
    list_rows,
    page_schema,
    parse_event,
)
from edge_server.sip_http import OPERATIONS as SIP_OPERATIONS
from edge_server.sip_http import SIP_SETTINGS_KEY
from edge_server.sip_push import SipEndpointSettings
from routing_rates import deck_receiver, distribute
from shared.config import DatabaseSettings, Merchant
from shared.db import CONNECTION_ERRORS
from shared.http import (
    HEALTH_KEY,
    MAX_BODY_BYTES,
    TOKENS_KEY,
    ApiError,
    Health,
    MerchantTokens,
    ServiceUnavailable,
    authenticated_merchant,
    error_middleware,
    json_response,
    read_json_object,
)
from shared.link import (
    VERIFIER_KEY,
    Answer,
    BatchItem,
    accept_once,
    batch_answer,
    batch_answer_schema,
    batch_path,
    batch_schema,
    message_id,
    parse_batch,
    raw_body,
    signature_middleware,
)
from shared.openapi import (
    HEALTH,
    LINK,
    MERCHANT,
    Operation,
    Reply,
    add_operations,
    serve_openapi,
)
from shared.outbox import EVENTS_PATH
from shared.paging import ListQuery, Page, list_params, parse_list_query
from shared.paging import page_schema as page_of_items
from shared.signing import Verifier

log = logging.getLogger("edge.http")

POOL_KEY = web.AppKey("edge_pool", asyncpg.Pool)
#: the link handlers' share of the pool (:mod:`edge_server.link_share`)
LINK_SHARE_KEY = web.AppKey("edge_link_share", LinkShare)
#: the pool's size less the reserve, by default
DEFAULT_LINK_CONNECTIONS = DatabaseSettings.DEFAULT_MAX_CONNECTIONS - DEFAULT_RESERVE
#: set while routing_rates runs: CDRs arriving over the link teach the call lengths
LEARN_CALL_LENGTHS_KEY = web.AppKey("edge_learn_call_lengths", bool)
#: set when the database has the routing_rates tables ([rates] enabled): decks are taken
RATES_TABLES_KEY = web.AppKey("edge_rates_tables", bool)


def create_http_app(*, merchants: Sequence[Merchant], verifier: Verifier,
                    max_body_bytes: int = MAX_BODY_BYTES, health: Health | None = None,
                    sip: SipEndpointSettings | None = None,
                    link_connections: int = DEFAULT_LINK_CONNECTIONS) -> web.Application:
    """The aiohttp application; the caller puts the pool under ``POOL_KEY`` (and the
    SIP endpoints' store under ``sip_http.SIP_ENDPOINTS_KEY``). The link's messages hold
    at most ``link_connections`` of the pool's connections at once."""
    app = web.Application(client_max_size=max_body_bytes,
                          middlewares=[error_middleware, signature_middleware])
    app[VERIFIER_KEY] = verifier
    app[TOKENS_KEY] = MerchantTokens([(m.id, m.api_token_sha256) for m in merchants])
    app[HEALTH_KEY] = health or Health()
    app[SIP_SETTINGS_KEY] = sip or SipEndpointSettings()
    app[LINK_SHARE_KEY] = LinkShare(link_connections)
    add_operations(app, (*OPERATIONS, *SIP_OPERATIONS))
    serve_openapi(app, "Callback gateway: edge site", __doc__ or "")
    return app


def _pool(request: web.Request) -> asyncpg.Pool:
    try:
        return request.app[POOL_KEY]
    except KeyError:
        raise ServiceUnavailable("database-unavailable", "database not connected yet") from None


def _link_connection(request: web.Request) -> AbstractAsyncContextManager[asyncpg.Connection]:
    """A pool connection for a link message, within the link's share of the pool."""
    return request.app[LINK_SHARE_KEY].acquire(_pool(request))


#: the database failing a link message: 503, the sender sends it again (a deadlock
#: with another writer too)
_RETRY_LATER = (*CONNECTION_ERRORS, asyncpg.DeadlockDetectedError)


async def link_events(request: web.Request) -> web.Response:
    data = await read_json_object(request, raw_body(request))
    report = parse_event(data)
    mid = message_id(request)
    learn = request.app.get(LEARN_CALL_LENGTHS_KEY, False)
    try:
        async with _link_connection(request) as conn:
            status, body = await _store(conn, mid, report, learn)
    except _RETRY_LATER as exc:
        log.warning("link event %s not stored: %s", mid, exc)
        raise ServiceUnavailable("database-unavailable", "database unavailable; retry") from None
    return json_response(body, status=status)


async def _store(conn: asyncpg.Connection, mid: str, report: Report, learn: bool) -> Answer:
    """One report once per message id, in a transaction of its own: one statement
    (``report_store.apply_report``), else ``accept_once`` around ``save_report``."""
    if isinstance(report, ONE_STATEMENT):
        return await apply_report(conn, mid, report, learn_call_lengths=learn)
    async with conn.transaction():
        return await accept_once(conn, mid, kind_of(report),
                                 lambda c: save_report(c, report))


async def link_events_batch(request: web.Request) -> web.Response:
    """Several reports in one signed request; ``200`` with each one's answer.

    Each message is what a single ``POST /v1/link/events`` would carry, with its own
    message id, and gets the answer that request would get in the batch's order (stored
    or a duplicate's first answer, 400 ``invalid-field``, 422 ``unknown-merchant``).
    The reports each call-back sends, one after another in the batch, are applied in one
    statement (``report_store.apply_reports``: one transaction, one commit); each other
    report in a transaction of its own, in its place in the batch. Not one transaction
    held across statements: a report updates rows other batches share (a number's
    learned call lengths, a merchant's), and batches holding many of them until one
    commit deadlocked one another under load (measured: 70 deadlocks in a 40/s step, the
    pool held by them, the edge's own request stores timing out); one statement takes
    them in their keys' order and holds them for its own run only. The database failing
    answers the whole request 503: the sender sends them all again, and those already
    stored are duplicates.
    """
    items = parse_batch(await read_json_object(request, raw_body(request)))
    learn = request.app.get(LEARN_CALL_LENGTHS_KEY, False)
    try:
        async with _link_connection(request) as conn:
            answers = await _store_each(conn, items, learn)
    except _RETRY_LATER as exc:
        log.warning("a batch of %d link events not stored: %s", len(items), exc)
        raise ServiceUnavailable("database-unavailable", "database unavailable; retry") from None
    return json_response(batch_answer(items, answers))


async def _store_each(conn: asyncpg.Connection, items: Sequence[BatchItem], learn: bool
                      ) -> list[Answer]:
    """The items' answers in their order: each run of reports of ``ONE_STATEMENT`` kinds
    (a malformed message between them writes nothing and does not end the run) in one
    statement, each other report in a transaction of its own."""
    answers: dict[int, Answer] = {}
    run: list[tuple[int, Delivery]] = []

    async def apply_run() -> None:
        if run:
            stored = await apply_reports(conn, [d for _, d in run], learn_call_lengths=learn)
            answers.update(zip((i for i, _ in run), stored, strict=True))
            run.clear()

    for i, item in enumerate(items):
        try:
            report = parse_event(item.body)
            if isinstance(report, ONE_STATEMENT):
                run.append((i, (item.message_id, report)))
                continue
            await apply_run()
            answers[i] = await _store(conn, item.message_id, report, learn)
        except ApiError as exc:
            answers[i] = exc.status, exc.body()
    await apply_run()
    return [answers[i] for i in range(len(items))]


async def link_rate_decks(request: web.Request) -> web.Response:
    message = deck_receiver.parse_message(await read_json_object(request, raw_body(request)))
    if not request.app.get(RATES_TABLES_KEY, False):
        raise ApiError(409, "rates-disabled", "routing_rates is not enabled on this site "
                       "([rates] enabled = false): the deck waits in the sender's outbox")
    mid = message_id(request)
    try:
        async with _link_connection(request) as conn, conn.transaction():
            status, body = await accept_once(conn, mid, distribute.KIND,
                                             lambda c: deck_receiver.receive(c, message))
    except CONNECTION_ERRORS as exc:
        log.warning("rate deck message %s not stored: %s", mid, exc)
        raise ServiceUnavailable("database-unavailable", "database unavailable; retry") from None
    return json_response(body, status=status)


async def _list(request: web.Request, what: str,
                fetch: Callable[[asyncpg.Pool, ListQuery], Awaitable[Page]],
                id_filters: Sequence[str] = (), text_filters: Sequence[str] = ()
                ) -> web.Response:
    q = parse_list_query(authenticated_merchant(request), request.rel_url.query,
                         id_filters=id_filters, text_filters=text_filters)
    try:
        page = await fetch(_pool(request), q)
    except CONNECTION_ERRORS as exc:
        log.warning("listing %s failed: %s", what, exc)
        raise ServiceUnavailable("database-unavailable", "database unavailable; retry") from None
    return json_response(page.to_json())


async def list_requests(request: web.Request) -> web.Response:
    return await _list(request, "requests", lambda pool, q: list_rows(pool, "requests", q))


async def list_cdrs(request: web.Request) -> web.Response:
    return await _list(request, "cdrs", lambda pool, q: list_rows(pool, "cdrs", q))


async def list_consultations(request: web.Request) -> web.Response:
    return await _list(request, "consultations", list_records, ID_FILTERS)


async def list_billing_records(request: web.Request) -> web.Response:
    return await _list(request, "billing records", billing_records.list_records,
                       billing_records.ID_FILTERS, billing_records.TEXT_FILTERS)


async def list_calls(request: web.Request) -> web.Response:
    return await _list(request, "calls", lambda pool, q: list_rows(pool, "calls", q))


#: what /healthz reports as the database being down
_HEALTH_ERRORS: tuple[type[BaseException], ...] = (ApiError, *CONNECTION_ERRORS)


async def healthz(request: web.Request) -> web.Response:
    health = request.app[HEALTH_KEY]
    body: dict[str, Any] = {"ari": health.ari_state(), **health.extra()}
    try:
        await _pool(request).fetchval("SELECT 1")
        body["database"] = "up"
    except _HEALTH_ERRORS as exc:
        body["database"] = f"down: {exc}"
    body["status"] = "ok" if body["database"] == "up" and body["ari"] == "connected" \
        else "degraded"
    return json_response(body, status=200 if body["database"] == "up" else 503)


_DB_DOWN = {503: ("database-unavailable",)}
_LIST_PARAMETERS = list_params()
_LIST_ERRORS = {400: ("invalid-field",), **_DB_DOWN}
OPERATIONS = (
    Operation("POST", EVENTS_PATH, link_events, "A report from the callback site",
              "link", {200: Reply("stored, or a duplicate of a stored report", EVENT_ANSWER)},
              access=LINK, body=EVENT_SCHEMA, examples=EVENT_EXAMPLES,
              errors={400: ("invalid-field",), 422: ("unknown-merchant", "tenant-mismatch"),
                      **_DB_DOWN}),
    Operation("POST", batch_path(EVENTS_PATH), link_events_batch,
              "Several reports from the callback site in one signed request", "link",
              {200: Reply("each report's own answer, in order", batch_answer_schema("the "
                          "answer of POST /v1/link/events"))},
              access=LINK, body=batch_schema(EVENT_SCHEMA),
              errors={400: ("invalid-field",), **_DB_DOWN}),
    Operation("POST", distribute.PATH, link_rate_decks,
              "A part of a rate deck version the callback site activated, or its withdrawal",
              "link", {200: Reply("the version is stored (or was), or withdrawn",
                                  deck_receiver.RATE_DECK_ANSWER),
                       202: Reply("the part is stored; more are to come",
                                  deck_receiver.RATE_DECK_ANSWER)},
              access=LINK, body=deck_receiver.RATE_DECK_SCHEMA,
              examples=deck_receiver.RATE_DECK_EXAMPLES,
              errors={400: ("invalid-field",), **deck_receiver.RATE_DECK_ERRORS, **_DB_DOWN}),
    Operation("GET", "/v1/requests", list_requests, "The merchant's collected requests",
              "call center", {200: Reply("one page, oldest first", page_schema("requests"))},
              access=MERCHANT, params=_LIST_PARAMETERS, errors=_LIST_ERRORS),
    Operation("GET", "/v1/cdrs", list_cdrs, "The merchant's call detail records",
              "call center", {200: Reply("one page, oldest first", page_schema("cdrs"))},
              access=MERCHANT, params=_LIST_PARAMETERS, errors=_LIST_ERRORS),
    Operation("GET", "/v1/calls", list_calls, "The merchant's inbound calls and what became "
              "of them", "call center",
              {200: Reply("one page, oldest first", page_schema("calls"))},
              access=MERCHANT, params=_LIST_PARAMETERS, errors=_LIST_ERRORS),
    Operation("GET", "/v1/consultations", list_consultations,
              "The merchant's consultation records", "call center",
              {200: Reply("one page, oldest stored first",
                          page_of_items(record_schemas.LISTED))},
              access=MERCHANT, params=list_params(*ID_FILTERS), errors=_LIST_ERRORS),
    Operation("GET", "/v1/billing-records", list_billing_records,
              "The merchant's billing records: each charge of a consultation, its revenue, "
              "its legs' costs in yen and the margin", "call center",
              {200: Reply("one page, oldest stored first",
                          page_of_items(billing_records.LISTED))},
              access=MERCHANT, params=list_params(
                  *billing_records.ID_FILTERS, text_filters=billing_records.TEXT_FILTERS),
              errors=_LIST_ERRORS),
    Operation("GET", "/healthz", healthz, "Database and Asterisk connection", "meta",
              {200: Reply("up", HEALTH), 503: Reply("database down", HEALTH)}),
)
