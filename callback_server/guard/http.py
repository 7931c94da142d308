"""The guard's HTTP surface on the callback site.

* The guard's counters (refusals by stage, reason and merchant, alerts, locks, cap
  trips, decision time) are in the site's ``GET /metrics``
  (:mod:`callback_server.metrics`, :mod:`shared.metrics_http`).
* Operator API (``Authorization: Bearer <token>``; its SHA-256 is
  ``[guard] operator_token_sha256``; without it the API answers 403
  ``operator-api-disabled``):

  ===========================================  =================================
  ``GET /v1/guard/status``                     trips, usage, spend, brake, locks
  ``GET /v1/guard/refusals?reason=&limit=``    recent refusals (newest first)
  ``GET /v1/guard/lists/{block|allow}``        list entries
  ``PUT /v1/guard/lists/{list}/{number}``      ``{"reason": "...", "by": "...",
                                               "expires_at": null}`` → 200
  ``DELETE /v1/guard/lists/{list}/{number}``   204, or 404 ``not-found``
  ``POST /v1/guard/numbers/{number}/unlock``   lift a lock → 200 / 404
  ``POST /v1/guard/caps/reset``                ``{"by": "...", "scope": "global" |
                                               "trunk:<carrier>" | "merchant:<id>" |
                                               null, "kind":
                                               "channels" | "cps" | "spend_daily" |
                                               null}`` → ``{"reset": n}``
  ===========================================  =================================

* :func:`intake_middleware` — ``POST /v1/link/callbacks`` (and, through
  :func:`refuse_raw_caller`, each message of ``/v1/link/callbacks/batch``) whose ``caller`` is
  a string but not E.164 (``anonymous``, ``09012345678&PJSIP/x``,
  ``+819012345678;foo``) is refused *before* parsing with 422
  ``destination-refused`` and ``reason`` (``destination_withheld``,
  ``destination_malformed``, ``destination_invalid``), stored in
  ``guard_refusals`` with the sanitised raw value (and the merchant, if it is
  configured) and counted. The edge's
  outbox parks a 422 as dead (no retries). It runs after the signature check.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from aiohttp import web

from callback_server.guard import store as sql
from callback_server.guard.caps import GLOBAL, KINDS
from callback_server.guard.reasons import Verdict
from callback_server.guard.service import Guard
from callback_server.http import CALLBACKS_PATH, MERCHANTS_KEY, RAW_CALLER_SCREEN_KEY
from shared.destination import classify_raw, sanitise
from shared.http import (
    ApiError,
    Handler,
    InvalidField,
    json_response,
    optional_timestamp,
    parse_json,
    query_int,
    read_json_object,
)
from shared.link import raw_body
from shared.openapi import (
    OPERATOR,
    TIMESTAMP,
    Operation,
    Param,
    Reply,
    add_operations,
    nullable,
)
from shared.outbox_operator import authorize
from shared.phone import E164, InvalidNumber, normalise

log = logging.getLogger("callback.guard.http")

GUARD_KEY = web.AppKey("callback_guard", Guard)
LISTS = ("block", "allow")
MAX_REFUSALS = 1000
ENTRY_BODY = {"type": "object", "properties": {
    "reason": {"type": "string"}, "by": {"type": "string"},
    "expires_at": nullable(TIMESTAMP)}}
ENTRY = {"type": "object", "required": ["number", "list", "reason"],
         "properties": {"number": {"type": "string"}, "list": {"enum": list(LISTS)},
                        "reason": {"type": "string"}}}
CAPS_BODY = {"type": "object", "required": ["by"], "properties": {
    "by": {"type": "string", "minLength": 1},
    "scope": nullable({"type": "string", "pattern": f"^({GLOBAL}|trunk:.*|merchant:.*)$"}),
    "kind": nullable({"enum": list(KINDS)})}}


def install(app: web.Application) -> None:
    """Add the routes and the intake middleware; the guard goes under ``GUARD_KEY``
    once the database is up (until then: 503 ``database-unavailable``)."""
    app.middlewares.append(intake_middleware)
    app[RAW_CALLER_SCREEN_KEY] = refuse_raw_caller
    add_operations(app, OPERATIONS)

def _guard(request: web.Request) -> Guard:
    return _guard_of(request.app)


def _guard_of(app: web.Application) -> Guard:
    try:
        return app[GUARD_KEY]
    except KeyError:
        raise ApiError(503, "database-unavailable", "guard not ready", retry_after_s=5) from None


@web.middleware
async def intake_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "POST" or request.path != CALLBACKS_PATH:
        return await handler(request)
    try:
        data = parse_json(raw_body(request))
    except ApiError:
        return await handler(request)       # the handler names what is wrong
    refusal = await refuse_raw_caller(request.app, data, request.headers.get("webhook-id"))
    if refusal is not None:
        raise refusal
    return await handler(request)


async def refuse_raw_caller(app: web.Application, data: Any, message_id: str | None
                            ) -> ApiError | None:
    """The 422 ``destination-refused`` for a call-back request whose ``caller`` is a string
    but not E.164, recorded in ``guard_refusals`` and counted; ``None`` for any other body
    (an E.164 caller is screened in the intake transaction, a missing one is the parser's).
    Used by :func:`intake_middleware` and, message by message, by the batch route."""
    caller = data.get("caller") if isinstance(data, dict) else None
    if not isinstance(caller, str):
        return None
    verdict = classify_raw(caller)
    if not isinstance(verdict, Verdict):
        return None
    try:
        guard = _guard_of(app)
    except ApiError as not_ready:
        return not_ready
    ids = {k: data.get(k) if isinstance(data.get(k), str) else None
           for k in ("merchant_id", "edge_call_id")}
    merchant = ids["merchant_id"] if ids["merchant_id"] in app[MERCHANTS_KEY] else None
    async with guard.pool.acquire() as conn, conn.transaction():
        await guard.refused(conn, verdict, stage="intake", number=sanitise(caller),
                            merchant_id=merchant,
                            edge_call_id=_short(ids["edge_call_id"]),
                            message_id=_short(message_id))
    return ApiError(422, "destination-refused", f"caller: {verdict}",
                    field="caller", reason=str(verdict.reason))


def _short(value: str | None) -> str | None:
    return None if value is None else sanitise(value, 128)


def _operator(request: web.Request) -> None:
    authorize(request, _guard(request).settings.operator_token_sha256,
              setting="[guard] operator_token_sha256")


def _list_name(request: web.Request) -> str:
    name = request.match_info["list"]
    if name not in LISTS:
        raise ApiError(404, "not-found", f"no list {name!r} (block, allow)")
    return name


def parse_number(text: str) -> E164:
    """As the configs and CLIs read numbers (:func:`shared.phone.normalise`)."""
    try:
        return normalise(text)
    except InvalidNumber:
        raise InvalidField("number", "expected a number: national (09012345678), E.164 "
                                     "(+819012345678) or its digits") from None


def _jsonable(rows: Any) -> Any:
    return json.loads(json.dumps(rows, default=lambda v: v.isoformat()
                                 if isinstance(v, datetime) else str(v)))


async def status(request: web.Request) -> web.Response:
    _operator(request)
    return json_response(_jsonable(await _guard(request).status()))


async def refusals(request: web.Request) -> web.Response:
    _operator(request)
    limit = query_int(request.query, "limit", low=1, high=MAX_REFUSALS, default=100)
    guard = _guard(request)
    async with guard.pool.acquire() as conn:
        rows = await sql.refusals(conn, since=None, reason=request.query.get("reason"),
                                  limit=limit)
    return json_response({"refusals": _jsonable(rows)})


async def list_entries(request: web.Request) -> web.Response:
    _operator(request)
    guard = _guard(request)
    async with guard.pool.acquire() as conn:
        rows = await sql.entries(conn, _list_name(request))
    return json_response({"entries": _jsonable(rows)})


async def put_entry(request: web.Request) -> web.Response:
    _operator(request)
    name = _list_name(request)
    number = parse_number(request.match_info["number"])
    body = await read_json_object(request) if request.can_read_body else {}
    reason = body.get("reason", "")
    by = body.get("by", "api")
    if not isinstance(reason, str) or not isinstance(by, str):
        raise InvalidField("reason", "reason and by are strings")
    expires_at = optional_timestamp(body, "expires_at")
    guard = _guard(request)
    async with guard.pool.acquire() as conn:
        await sql.add_entry(conn, number=str(number), list_name=name, reason=reason[:200],
                            source="operator", by=by[:64], now=guard.clock(),
                            expires_at=expires_at)
    log.warning("%s list: %s added by %s (%s)", name, number, by, reason)
    return json_response({"number": str(number), "list": name, "reason": reason})


async def delete_entry(request: web.Request) -> web.Response:
    _operator(request)
    name = _list_name(request)
    number = parse_number(request.match_info["number"])
    guard = _guard(request)
    async with guard.pool.acquire() as conn:
        removed = await sql.remove_entry(conn, str(number), name)
    if not removed:
        raise ApiError(404, "not-found", f"{number} is not on the {name} list")
    log.warning("%s list: %s removed", name, number)
    return web.Response(status=204)


async def unlock(request: web.Request) -> web.Response:
    _operator(request)
    number = parse_number(request.match_info["number"])
    guard = _guard(request)
    async with guard.pool.acquire() as conn:
        done = await sql.unlock(conn, str(number))
    if not done:
        raise ApiError(404, "not-found", f"{number} is not locked")
    log.warning("%s unlocked by an operator", number)
    return json_response({"number": str(number), "unlocked": True})


async def reset_caps(request: web.Request) -> web.Response:
    _operator(request)
    body = await read_json_object(request)
    by, scope, kind = body.get("by"), body.get("scope"), body.get("kind")
    if not isinstance(by, str) or not by:
        raise InvalidField("by", "who resets the cap (required)")
    if scope is not None and (not isinstance(scope, str)
                              or not (scope == GLOBAL
                                      or scope.startswith(("trunk:", "merchant:")))):
        raise InvalidField("scope", "expected global, trunk:<carrier>, merchant:<id> or null "
                                    "(all)")
    if kind is not None and kind not in KINDS:
        raise InvalidField("kind", f"expected one of {', '.join(KINDS)} or null (all)")
    count = await _guard(request).reset_caps(scope, kind, by[:64])
    return json_response({"reset": count, "scope": scope, "kind": kind})


_NOT_READY = {503: ("database-unavailable",)}
_LIST = Param("list", "path", {"enum": list(LISTS)}, "block or allow")
_NUMBER = Param("number", "path", {"type": "string"},
                "national (09012345678), E.164 (+819012345678) or its digits")
_ROWS = {"type": "array", "items": {"type": "object"}}
OPERATIONS = (
    Operation("GET", "/v1/guard/status", status, "Trips, usage, spend, brake, locks", "guard",
              {200: Reply("the guard's state", {"type": "object"})}, access=OPERATOR,
              errors=_NOT_READY),
    Operation("GET", "/v1/guard/refusals", refusals, "Recent refusals, newest first",
              "guard", {200: Reply("refusals", {"type": "object", "required": ["refusals"],
                                                "properties": {"refusals": _ROWS}})},
              access=OPERATOR,
              params=(Param("reason", "query", {"type": "string"}, "only this reason"),
                      Param("limit", "query", {"type": "integer", "minimum": 1,
                                               "maximum": MAX_REFUSALS, "default": 100})),
              errors={400: ("invalid-field",), **_NOT_READY}),
    Operation("GET", "/v1/guard/lists/{list}", list_entries, "A list's entries", "guard",
              {200: Reply("entries", {"type": "object", "required": ["entries"],
                                      "properties": {"entries": _ROWS}})},
              access=OPERATOR, params=(_LIST,), errors={404: ("not-found",), **_NOT_READY}),
    Operation("PUT", "/v1/guard/lists/{list}/{number}", put_entry, "Put a number on a list",
              "guard", {200: Reply("the entry", ENTRY)}, access=OPERATOR,
              params=(_LIST, _NUMBER), body=ENTRY_BODY, body_required=False,
              errors={400: ("invalid-field",), 404: ("not-found",), **_NOT_READY}),
    Operation("DELETE", "/v1/guard/lists/{list}/{number}", delete_entry,
              "Take a number off a list", "guard", {204: Reply("removed")}, access=OPERATOR,
              params=(_LIST, _NUMBER),
              errors={400: ("invalid-field",), 404: ("not-found",), **_NOT_READY}),
    Operation("POST", "/v1/guard/numbers/{number}/unlock", unlock, "Lift a number's lock",
              "guard", {200: Reply("unlocked", {
                  "type": "object", "required": ["number", "unlocked"],
                  "properties": {"number": {"type": "string"}, "unlocked": {"const": True}}})},
              access=OPERATOR, params=(_NUMBER,),
              errors={400: ("invalid-field",), 404: ("not-found",), **_NOT_READY}),
    Operation("POST", "/v1/guard/caps/reset", reset_caps, "Reset tripped caps", "guard",
              {200: Reply("how many were reset", {
                  "type": "object", "required": ["reset", "scope", "kind"],
                  "properties": {"reset": {"type": "integer", "minimum": 0},
                                 "scope": nullable({"type": "string"}),
                                 "kind": nullable({"enum": list(KINDS)})}})},
              access=OPERATOR, body=CAPS_BODY,
              errors={400: ("invalid-field",), **_NOT_READY}),
)
