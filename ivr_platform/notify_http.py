"""Call notifications on the callback site: the delivery worker in ``cleanup_ctx`` (when
``[notify]`` has channels) and the merchant's routes (bearer token, in ``/openapi.json``):

* ``GET /v1/phonebook?limit=&offset=``, ``PUT|DELETE /v1/phonebook/{number}`` (``PUT``
  body ``{"company", "name"}``; the number national or E.164): whom a notification names
* ``GET /v1/notifications?state=pending|delivered|parked&limit=``: the deliveries, newest
  first, each with its attempts (a parked one shows why)
* ``POST /v1/notifications/{notification_id}/channels/{channel}/requeue``: a parked
  delivery pending again (after the channel's settings are fixed)

Error ids: ``invalid-field`` (400), ``not-found`` (404), ``notify-unavailable`` (503 before
the database is connected), ``database-unavailable`` (503).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import aiohttp
import asyncpg
from aiohttp import web

from ivr_platform.media_http import MEDIA_SETTINGS_KEY, RECORDINGS_KEY, SIGNER_KEY
from ivr_platform.notify_compose import Composer, RecordingLinks
from ivr_platform.notify_config import CHANNEL_NAME, Event, NotifySettings
from ivr_platform.notify_outbox import NotificationWorker, deliveries, requeue
from ivr_platform.phonebook import MAX_TEXT, Entry, Phonebook
from shared.http import (
    ApiError,
    InvalidField,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    query_int,
    read_json_object,
    started,
)
from shared.openapi import (
    MERCHANT,
    TIMESTAMP,
    Operation,
    Param,
    Reply,
    Schema,
    add_operations,
    nullable,
    string,
)
from shared.phone import E164, InvalidNumber, normalise
from shared.site import background

PHONEBOOK_KEY = web.AppKey("notify_phonebook", Phonebook)
POOL_FN_KEY: web.AppKey[Callable[[web.Application], asyncpg.Pool]] = web.AppKey(
    "notify_pool")
STATES = ("pending", "delivered", "parked")
MAX_PAGE = 1000


def install(app: web.Application, settings: NotifySettings,
            pool: Callable[[web.Application], asyncpg.Pool], *, owner: str,
            db_url: Callable[[web.Application], str] | None = None) -> None:
    """Mount the routes; with channels, run the delivery worker while the app runs (after
    the media context, whose recordings and link signer make the notices' links), woken
    by NOTIFY through ``db_url`` (else it polls every ``poll_s``)."""
    app[POOL_FN_KEY] = pool
    add_operations(app, OPERATIONS)

    async def notify_ctx(app: web.Application) -> AsyncIterator[None]:
        app[PHONEBOOK_KEY] = phonebook = Phonebook(pool(app))
        if not settings.channels:
            yield
            return
        media = app.get(MEDIA_SETTINGS_KEY)
        links = None
        if media is not None and media.public_url and RECORDINGS_KEY in app:
            links = RecordingLinks(app[RECORDINGS_KEY], app[SIGNER_KEY], media.public_url,
                                   timedelta(seconds=media.link_ttl_s))
        async with aiohttp.ClientSession() as session:
            worker = NotificationWorker(
                pool(app), settings,
                {(c.merchant_id, c.name): c.notifier(session) for c in settings.channels},
                Composer(settings, phonebook, links), owner=owner)
            url = db_url(app) if db_url is not None else None
            async with background(worker.run(url), "notification delivery"):
                yield

    app.cleanup_ctx.append(notify_ctx)


def _phonebook(request: web.Request) -> Phonebook:
    return started(request, PHONEBOOK_KEY, "notify-unavailable")


def _number(request: web.Request) -> E164:
    try:
        return normalise(request.match_info["number"])
    except InvalidNumber as exc:
        raise InvalidField("number", str(exc)) from None


@database_errors_as_503
async def list_phonebook(request: web.Request) -> web.Response:
    """The merchant's phonebook, by number."""
    merchant = authenticated_merchant(request)
    found = await _phonebook(request).list(
        merchant, limit=query_int(request.query, "limit", low=1, high=MAX_PAGE, default=100),
        offset=query_int(request.query, "offset", low=0, high=10**9, default=0))
    return json_response({"items": [e.to_json() for e in found]})


@database_errors_as_503
async def put_phonebook(request: web.Request) -> web.Response:
    """Add or replace the company and name shown for a caller's number."""
    merchant = authenticated_merchant(request)
    number = _number(request)
    data = await read_json_object(request)
    values = {}
    for key in ("company", "name"):
        value = data.get(key, "")
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise InvalidField(key, f"expected a string of at most {MAX_TEXT} characters")
        values[key] = value
    if unknown := sorted(set(data) - {"company", "name"}):
        raise InvalidField(unknown[0], "unknown field")
    if not (values["company"] or values["name"]):
        raise InvalidField("name", "a company, a name or both")
    entry = Entry(number, values["company"], values["name"])
    created = await _phonebook(request).put(merchant, entry)
    return json_response(entry.to_json(), status=201 if created else 200)


@database_errors_as_503
async def delete_phonebook(request: web.Request) -> web.Response:
    """Remove a number from the phonebook."""
    merchant = authenticated_merchant(request)
    number = _number(request)
    if not await _phonebook(request).delete(merchant, number):
        raise ApiError(404, "not-found", f"no phonebook entry for {number}")
    return web.Response(status=204)


@database_errors_as_503
async def list_notifications(request: web.Request) -> web.Response:
    """The merchant's notification deliveries, newest first, with their attempts."""
    merchant = authenticated_merchant(request)
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise InvalidField("state", f"expected one of {', '.join(STATES)}")
    _phonebook(request)   # 503 before the database is connected
    items = await deliveries(
        request.app[POOL_FN_KEY](request.app), merchant, state=state,
        limit=query_int(request.query, "limit", low=1, high=MAX_PAGE, default=100))
    return json_response({"items": items})


@database_errors_as_503
async def requeue_notification(request: web.Request) -> web.Response:
    """Send a parked delivery again (its attempts start over)."""
    merchant = authenticated_merchant(request)
    text, channel = request.match_info["notification_id"], request.match_info["channel"]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise InvalidField("notification_id", "expected a positive integer")
    _phonebook(request)
    if not await requeue(request.app[POOL_FN_KEY](request.app), merchant, int(text),
                         channel):
        raise ApiError(404, "not-found", f"no parked delivery of notification {text} to "
                                         f"{channel!r}")
    return json_response({"notification_id": int(text), "channel": channel,
                          "state": "pending"})


# --- declarations -----------------------------------------------------------------------

ENTRY: Schema = {"type": "object", "required": ["number", "company", "name"],
                 "properties": {"number": {"type": "string"}, "company": {"type": "string"},
                                "name": {"type": "string"}}}
ENTRY_INPUT: Schema = {"type": "object", "additionalProperties": False, "minProperties": 1,
                       "properties": {"company": string(MAX_TEXT), "name": string(MAX_TEXT)}}
DELIVERY: Schema = {
    "type": "object",
    "required": ["notification_id", "channel", "event", "state", "attempts", "last_error",
                 "created_at", "next_attempt_at", "finished_at", "attempt_log"],
    "properties": {
        "notification_id": {"type": "integer"}, "channel": {"type": "string"},
        "event": {"enum": [e.value for e in Event]},
        "state": {"enum": list(STATES)}, "attempts": {"type": "integer"},
        "last_error": nullable({"type": "string"}), "created_at": TIMESTAMP,
        "next_attempt_at": nullable(TIMESTAMP), "finished_at": nullable(TIMESTAMP),
        "attempt_log": {"type": "array", "items": {"type": "object"}}}}
_TAG = "notifications"
_UNAVAILABLE = {503: ("notify-unavailable", "database-unavailable")}
_NUMBER = Param("number", "path", string(32), "national (090…) or E.164 (+8190…)")
_PAGE = (Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),)

OPERATIONS = [
    Operation("GET", "/v1/phonebook", list_phonebook, "The merchant's phonebook", _TAG,
              {200: Reply("by number", {"type": "object", "required": ["items"],
                                        "properties": {"items": {"type": "array",
                                                                 "items": ENTRY}}})},
              access=MERCHANT,
              params=(*_PAGE, Param("offset", "query", {"type": "integer", "minimum": 0,
                                                        "maximum": 10**9})),
              errors=_UNAVAILABLE),
    Operation("PUT", "/v1/phonebook/{number}", put_phonebook, "Name a caller's number", _TAG,
              {200: Reply("replaced", ENTRY), 201: Reply("added", ENTRY)}, access=MERCHANT,
              params=(_NUMBER,), body=ENTRY_INPUT,
              errors={400: ("invalid-field",), **_UNAVAILABLE}),
    Operation("DELETE", "/v1/phonebook/{number}", delete_phonebook, "Forget a number", _TAG,
              {204: Reply("removed")}, access=MERCHANT, params=(_NUMBER,),
              errors={404: ("not-found",), **_UNAVAILABLE}),
    Operation("GET", "/v1/notifications", list_notifications,
              "The merchant's notification deliveries", _TAG,
              {200: Reply("newest first", {"type": "object", "required": ["items"],
                                           "properties": {"items": {"type": "array",
                                                                    "items": DELIVERY}}})},
              access=MERCHANT,
              params=(*_PAGE, Param("state", "query", {"enum": list(STATES)})),
              errors=_UNAVAILABLE),
    Operation("POST", "/v1/notifications/{notification_id}/channels/{channel}/requeue",
              requeue_notification, "Send a parked delivery again", _TAG,
              {200: Reply("pending again", {"type": "object"})}, access=MERCHANT,
              params=(Param("notification_id", "path", {"type": "integer", "minimum": 1}),
                      Param("channel", "path", string(64, pattern=CHANNEL_NAME))),
              errors={404: ("not-found",), **_UNAVAILABLE}),
]
