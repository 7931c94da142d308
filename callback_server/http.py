"""The callback site's HTTP API.

* ``POST /v1/link/callbacks``: a call-back request from the edge (signed;
  verified by ``shared.link.signature_middleware``; idempotent by message id
  and by ``edge_call_id``). ``202 {"callback_id": ..., "status": ...}``.
* ``POST /v1/link/callbacks/batch``: up to 100 such requests in one signed
  request, ``{"messages": [{"message_id": ..., "body": {...}}]}``; ``200
  {"results": [{"message_id": ..., "status": 202, "body": {...}}]}``, each
  message answered as its own request would be (the edge's relay sends a
  backlog this way).
* ``GET /v1/callbacks/{id}``: status, reason code, attempts and legs, for the
  merchant that owns it (``Authorization: Bearer <token>``; its SHA-256 is the
  merchant's ``api_token_sha256``).
* quote/decide/simulate routes of ``routing_rates.http`` when the rating service runs.
* ``GET /healthz``.
* ``GET /openapi.json``: the OpenAPI 3.1 document of the routes this server serves (with
  the guard's and the rates' when they are mounted).

Error ids: ``invalid-field`` (400, with ``field``), ``invalid-json`` (400),
``body-too-large`` (413), ``unknown-merchant`` (422, with ``field``),
``auth-missing`` / ``auth-invalid`` (401), ``not-found`` (404),
``database-unavailable`` (503 + Retry-After: the edge keeps the request and
retries), ``overloaded`` (503 + Retry-After: the database does not keep up, so
new call-back requests are refused at once; the edge's relay waits that long),
plus the ``signature-*`` ids of the link middleware (401).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from aiohttp import web

from callback_server.intake import CallbackIntake
from callback_server.metrics import callback as callback_metrics
from callback_server.schemas import (
    CALLBACK_SCHEMA,
    INTAKE_ANSWER,
    INTAKE_EXAMPLE,
    INTAKE_SCHEMA,
    IntakeRequest,
    intake_from,
    parse_intake,
)
from callback_server.store import CallbackStore
from shared import logs
from shared.config import Merchant
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
from shared.intake_batch import IntakeBroken, IntakeFailed
from shared.link import (
    VERIFIER_KEY,
    Answer,
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
    Param,
    Reply,
    add_operations,
    serve_openapi,
)
from shared.signing import Verifier

log = logging.getLogger("callback.http")



STORE_KEY = web.AppKey("callback_store", CallbackStore)
#: the group-committed intake over the store (the composition root sets both)
INTAKE_KEY = web.AppKey("callback_intake", CallbackIntake)
MERCHANTS_KEY = web.AppKey("callback_merchants", dict[str, Merchant])
#: Screens a call-back request's raw body before it is parsed; the guard installs it
#: (:func:`callback_server.guard.http.refuse_raw_caller`): an error to answer, or None.
RawCallerScreen = Callable[[web.Application, Any, str | None], Awaitable[ApiError | None]]
RAW_CALLER_SCREEN_KEY: web.AppKey[RawCallerScreen] = web.AppKey("callback_raw_caller_screen")

CALLBACKS_PATH = "/v1/link/callbacks"
#: what an overloaded intake asks the edge to wait (Retry-After)
SHED_RETRY_AFTER_S = 2


def create_http_app(*, merchants: Sequence[Merchant], verifier: Verifier,
                    max_body_bytes: int = MAX_BODY_BYTES, health: Health | None = None
                    ) -> web.Application:
    """The aiohttp application; the composition root puts the store under ``STORE_KEY``."""
    app = web.Application(client_max_size=max_body_bytes,
                          middlewares=[error_middleware, signature_middleware])
    app[VERIFIER_KEY] = verifier
    app[MERCHANTS_KEY] = {m.id: m for m in merchants}
    app[TOKENS_KEY] = MerchantTokens([(m.id, m.api_token_sha256) for m in merchants])
    app[HEALTH_KEY] = health or Health()
    add_operations(app, OPERATIONS)
    serve_openapi(app, "Callback gateway: callback site", __doc__ or "")
    return app


def attach_store(app: web.Application, store: CallbackStore) -> None:
    """Serve from ``store`` (call before the app starts; the composition root sets the
    keys itself, in its database context). The intake batcher is closed on cleanup."""
    app[STORE_KEY] = store
    app[INTAKE_KEY] = intake = CallbackIntake(store)

    async def close_intake(_: web.Application) -> None:
        await intake.close()

    app.on_cleanup.append(close_intake)


def _store(request: web.Request) -> CallbackStore:
    try:
        return request.app[STORE_KEY]
    except KeyError:
        raise ServiceUnavailable("database-unavailable", "database not connected yet") from None


def _intake(request: web.Request, messages: int = 1) -> CallbackIntake:
    """The intake, if it takes ``messages`` more now (else 503 ``overloaded``, counted)."""
    try:
        intake = request.app[INTAKE_KEY]
    except KeyError:
        raise ServiceUnavailable("database-unavailable", "database not connected yet") from None
    if intake.overloaded():
        callback_metrics().intake_shed.inc(messages)
        raise ServiceUnavailable("overloaded", "the call-back site is busy; send again later",
                                 retry_after_s=SHED_RETRY_AFTER_S)
    return intake


def _merchant(request: web.Request, req: IntakeRequest) -> Merchant:
    merchant = request.app[MERCHANTS_KEY].get(req.merchant_id)
    if merchant is None:
        raise ApiError(422, "unknown-merchant", f"merchant_id: no merchant {req.merchant_id!r}",
                       field="merchant_id")
    return merchant


def _bound(mid: str, req: IntakeRequest) -> AbstractContextManager[logs.LogContext]:
    """Log lines about one call-back request name its call, message id and merchant."""
    return logs.bind(call_id=req.edge_call_id, request_id=mid, merchant=req.merchant_id)


def _not_stored(mid: str, req: IntakeRequest, exc: IntakeFailed) -> ApiError:
    """The answer for a request the intake did not store: 500 when storing it raised
    (logged with its traceback by the intake), else 503 (the database is away)."""
    with _bound(mid, req):
        log.warning("call-back request not stored: %s", exc.message)
    if isinstance(exc, IntakeBroken):
        return _internal_error()
    return ServiceUnavailable("database-unavailable", "database unavailable; retry")


def _internal_error() -> ApiError:
    return ApiError(500, "internal-error", "internal error")


async def link_callbacks(request: web.Request) -> web.Response:
    req = parse_intake(raw_body(request))
    mid = message_id(request)
    with _bound(mid, req):
        merchant = _merchant(request, req)
        try:
            status, body = await _intake(request).submit(mid, req, merchant)
        except IntakeFailed as exc:
            raise _not_stored(mid, req, exc) from None
        log.debug("call-back request for %s answered %d: %s", req.caller, status, body)
    return json_response(body, status=status)


async def link_callbacks_batch(request: web.Request) -> web.Response:
    """Several call-back requests in one signed request; ``200`` with each one's answer.

    Each message is what a single ``POST /v1/link/callbacks`` would carry, with
    its own message id, and gets exactly the answer that request would get:
    deduplicated by its id and its ``edge_call_id``, screened, stored (the
    messages are queued together, so they share the group commit), or refused
    alone (``invalid-field``, ``unknown-merchant``, ``destination-refused``,
    503 ``database-unavailable`` for one the database did not store, 500
    ``internal-error`` for one whose handling raised: its traceback is logged and
    the others are stored and answered all the same).
    """
    items = parse_batch(await read_json_object(request, raw_body(request)))
    intake = _intake(request, len(items))
    screen = request.app.get(RAW_CALLER_SCREEN_KEY)
    answers: list[Answer | None] = [None] * len(items)
    queued: list[tuple[int, str, IntakeRequest, Merchant]] = []
    for i, item in enumerate(items):
        try:
            refusal = None if screen is None else await screen(request.app, item.body,
                                                                item.message_id)
            if refusal is not None:
                raise refusal
            req = intake_from(item.body)
            queued.append((i, item.message_id, req, _merchant(request, req)))
        except ApiError as exc:
            answers[i] = (exc.status, exc.body())
        except Exception:
            with logs.bind(request_id=item.message_id):
                log.exception("call-back request of a batch failed alone")
            error = _internal_error()
            answers[i] = (error.status, error.body())
    stored = await intake.submit_many([(mid, req, merchant) for _, mid, req, merchant in queued])
    for (i, mid, req, _), result in zip(queued, stored, strict=True):
        if isinstance(result, IntakeFailed):
            error = _not_stored(mid, req, result)
            answers[i] = (error.status, error.body())
        else:
            answers[i] = result
    log.info("accepted a batch of %d call-back requests: %s", len(items),
             dict(Counter(status for status, _ in filter(None, answers))))
    return json_response(batch_answer(items, [a for a in answers if a is not None]))


async def get_callback(request: web.Request) -> web.Response:
    merchant_id = authenticated_merchant(request)
    callback_id = request.match_info["callback_id"]
    try:
        row = await _store(request).get(callback_id)
    except CONNECTION_ERRORS:
        raise ServiceUnavailable("database-unavailable", "database unavailable; retry") from None
    if row is None or row["merchant_id"] != merchant_id:
        raise ApiError(404, "not-found", f"no call-back {callback_id!r}")
    return json_response(row)


async def healthz(request: web.Request) -> web.Response:
    health = request.app[HEALTH_KEY]
    database = "ok"
    try:
        store = request.app[STORE_KEY]
        await store.pool.fetchval("SELECT 1")
    except KeyError:
        database = "not connected"
    except CONNECTION_ERRORS as exc:
        database = f"unavailable: {type(exc).__name__}"
    body = {"status": "ok" if database == "ok" else "degraded", "database": database,
            "ari": health.ari_state(), **health.extra()}
    return json_response(body, status=200 if database == "ok" else 503)


_DB_DOWN = {503: ("database-unavailable",)}
_BUSY = {503: ("database-unavailable", "overloaded")}
#: what a single request to the intake answers (also each message of a batch)
_INTAKE_ERRORS = {400: ("invalid-field",), 422: ("unknown-merchant", "destination-refused"),
                  **_BUSY}
BATCH_SCHEMA = batch_schema(INTAKE_SCHEMA)
BATCH_ANSWER = batch_answer_schema("INTAKE_ANSWER")
OPERATIONS = (
    Operation("POST", CALLBACKS_PATH, link_callbacks, "A call-back request from the edge",
              "link", {202: Reply("accepted (or the answer to an earlier delivery of it)",
                                  INTAKE_ANSWER)},
              access=LINK, body=INTAKE_SCHEMA, examples={"call back": INTAKE_EXAMPLE},
              errors=_INTAKE_ERRORS),
    Operation("POST", batch_path(CALLBACKS_PATH), link_callbacks_batch,
              "Several call-back requests in one signed request", "link",
              {200: Reply("each message's own answer, in order", BATCH_ANSWER)},
              access=LINK, body=BATCH_SCHEMA, errors={400: ("invalid-field",), **_BUSY},
              examples={"two call-backs": {"messages": [
                  {"message_id": "9d4e1c52-0000-4000-8000-000000000001", "body": INTAKE_EXAMPLE},
                  {"message_id": "9d4e1c52-0000-4000-8000-000000000002",
                   "body": {**INTAKE_EXAMPLE, "edge_call_id": "edge-1700.43"}}]}}),
    Operation("GET", "/v1/callbacks/{callback_id}", get_callback, "One call-back's state",
              "call center", {200: Reply("status, reason, attempts and legs", CALLBACK_SCHEMA)},
              access=MERCHANT, params=(Param("callback_id", "path", {"type": "string"}),),
              errors={404: ("not-found",), **_DB_DOWN}),
    Operation("GET", "/healthz", healthz, "Database and Asterisk connection", "meta",
              {200: Reply("up", HEALTH), 503: Reply("database down or not connected", HEALTH)}),
)
