"""The advisor's own routes, behind the session the advisor's sign-in link opens
(:mod:`advisors.sessions`; the page is :mod:`web.advisor_page`), and the merchant's
routes that issue and revoke sign-in links.

Merchant (bearer token):

* ``POST /v1/advisors/{advisor_id}/signin-links``: a one-time link for the advisor, valid
  :data:`~advisors.sessions.LINK_VALID_S` (201: ``token``, ``path``, ``expires_at``)
* ``DELETE /v1/advisors/{advisor_id}/sessions``: end the advisor's sessions, void their
  unused links

Advisor (the session cookie :data:`COOKIE`: HttpOnly, SameSite=Strict, Secure over TLS;
every change also needs the session's CSRF token in ``X-CSRF-Token``):

* ``GET /v1/advisor/me``: the advisor's name and presence, and the id of their last
  presence event
* ``PUT /v1/advisor/presence``: online (standby; also ends after-call work), offline,
  working or break, the same event ``PUT /v1/advisors/{id}/presence`` applies (via
  ``web``)
* ``GET /v1/advisor/events``: Server-Sent Events of this advisor only: ``state`` (the
  ``me`` body) first, then a ``presence`` event per change, as committed. The hub already
  holds the site's one LISTEN connection and fans out each commit at once, so the page
  sees a change made anywhere (an offer, the phone, the API) within the commit's NOTIFY
  rather than a polling period, at no cost while nothing changes. The stream ends within
  :data:`SESSION_CHECK_S` of its session ending (the page's reconnection is then refused)
* ``POST /v1/advisor/signout``: end this session

Errors: ``session-missing``/``session-invalid`` (401: no cookie, or one signed out,
revoked or expired), ``csrf-invalid`` (403), ``cross-site-request`` (403: a change
another site's page asked for, :func:`shared.browser_session.refuse_cross_site`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from aiohttp import web

from advisors import schemas as s
from advisors.events import Subscriber
from advisors.http import SERVICES_KEY, Services, pump
from advisors.model import Via
from advisors.resources import UNAVAILABLE, id_param, path_id
from advisors.sessions import Session
from shared.browser_session import CROSS_SITE, refuse_cross_site
from shared.db import CONNECTION_ERRORS
from shared.http import (
    ApiError,
    Unauthorized,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    read_json_object,
    started,
)
from shared.openapi import MERCHANT, Access, Operation, Reply, Schema, add_operations
from shared.site import background

log = logging.getLogger("advisors.session_http")

#: the session cookie
COOKIE = "cbgw_advisor"
#: how often an open event stream checks that its session is still live
SESSION_CHECK_S = 5.0
CSRF_HEADER = "X-CSRF-Token"



def session_access(scheme: str, cookie: str, whose: str, signin: str) -> Access:
    """A page's session cookie as the OpenAPI security scheme ``scheme``."""
    return Access(scheme, {
        "type": "apiKey", "in": "cookie", "name": cookie,
        "description": f"{whose} session, opened by a sign-in link (POST {signin}); "
                       f"changes also need {CSRF_HEADER}"},
        errors={401: ("session-missing", "session-invalid")})


ADVISOR_SESSION = session_access("advisorSession", COOKIE, "the advisor's",
                                 "/advisor/signin/{token}")


def install(app: web.Application) -> None:
    """The routes, on an app with :func:`advisors.http.install`."""
    add_operations(app, OPERATIONS)


def services(request: web.Request) -> Services:
    return started(request, SERVICES_KEY, "advisors-unavailable")


class WithCsrf(Protocol):
    def csrf_ok(self, sent: str) -> bool: ...


_S = TypeVar("_S", bound=WithCsrf)


def cookie_token(request: web.Request, cookie: str) -> str:
    """The session token of the request's ``cookie`` (401 ``session-missing``)."""
    token = request.cookies.get(cookie)
    if not token:
        raise Unauthorized("session-missing", "sign in with your sign-in link")
    return token


def live_session(session: _S | None) -> _S:
    """The session a cookie's token found (401 ``session-invalid`` for none)."""
    if session is None:
        raise Unauthorized("session-invalid", "signed out or expired: sign in again")
    return session


def csrf_checked(request: web.Request, session: _S) -> _S:
    """The session, if its page sent its CSRF token (403 ``csrf-invalid`` otherwise)."""
    if not session.csrf_ok(request.headers.get(CSRF_HEADER, "")):
        raise ApiError(403, "csrf-invalid", f"{CSRF_HEADER} is missing or wrong")
    return session


async def session_of(request: web.Request) -> tuple[Services, Session]:
    """The request's live session (401 otherwise)."""
    svc = services(request)
    token = cookie_token(request, COOKIE)
    return svc, live_session(await svc.sessions.current(token, svc.live.clock()))


async def changing(request: web.Request) -> tuple[Services, Session]:
    """A live session whose page sent its CSRF token, from the site's own page (403
    otherwise)."""
    refuse_cross_site(request)
    svc, session = await session_of(request)
    return svc, csrf_checked(request, session)


async def me(svc: Services, session: Session) -> dict[str, Any]:
    """The advisor's name and presence, with the id of the last presence event the
    presence includes (read first: the presence read after it is as new or newer)."""
    event_id = await svc.store.pool.fetchval(
        "SELECT coalesce(max(id), 0) FROM advisor_events WHERE advisor_id = $1",
        session.advisor_id)
    advisor, presence = await svc.store.advisor(session.merchant_id, session.advisor_id)
    return {"advisor_id": advisor.id, "display_name": advisor.display_name,
            "presence": s.presence_json(presence), "event_id": event_id}


# --- the merchant's ------------------------------------------------------------------------


async def post_signin_link(request: web.Request) -> web.Response:
    """A one-time sign-in link for the advisor (its token is shown only here)."""
    merchant = authenticated_merchant(request)
    svc = services(request)
    link = await svc.sessions.issue(merchant, path_id(request, "advisor_id"),
                                    svc.live.clock())
    return json_response({"advisor_id": link.advisor_id, "token": link.token,
                          "path": f"/advisor/signin/{link.token}",
                          "expires_at": link.expires_at.isoformat()}, 201)


async def delete_sessions(request: web.Request) -> web.Response:
    """Sign the advisor out everywhere and void their unused sign-in links."""
    merchant = authenticated_merchant(request)
    svc = services(request)
    advisor_id = path_id(request, "advisor_id")
    await svc.store.advisor(merchant, advisor_id)       # 404 if not the merchant's
    ended = await svc.sessions.revoke(merchant, advisor_id, svc.live.clock())
    return json_response({"advisor_id": advisor_id, "sessions_ended": ended})


# --- the advisor's -------------------------------------------------------------------------


async def get_me(request: web.Request) -> web.Response:
    """The signed-in advisor's name and presence."""
    return json_response(await me(*await session_of(request)))


async def put_own_presence(request: web.Request) -> web.Response:
    """Set the signed-in advisor's presence (online also ends after-call work)."""
    svc, session = await changing(request)
    wanted = s.parse_presence(await read_json_object(request))
    await svc.live.apply(session.merchant_id, session.advisor_id,
                         wanted.event(svc.live.clock(), Via.WEB))
    return json_response(await me(svc, session))


async def own_events(request: web.Request) -> web.StreamResponse:
    """The signed-in advisor's state, then each change of it (SSE)."""
    svc, session = await session_of(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    with svc.hub.subscribe(session.merchant_id) as queue:   # before the state is read
        state = await me(svc, session)
        await response.prepare(request)  # from here on, no error reply: the stream ends
        try:
            text = json.dumps(state, ensure_ascii=False)
            await response.write(f"event: state\ndata: {text}\n\n".encode())
            async with background(_ends_with_session(svc, request.cookies[COOKIE], queue),
                                  "advisor session watch"):
                await pump(response, queue, state["event_id"],
                           lambda event: event["advisor_id"] == session.advisor_id)
        except ConnectionResetError:
            pass  # the page went away
    return response


async def _ends_with_session(svc: Services, token: str, queue: Subscriber) -> None:
    """Close the stream's queue once its session is over (signed out, revoked, expired):
    checked every :data:`SESSION_CHECK_S`."""
    while True:
        await asyncio.sleep(SESSION_CHECK_S)
        try:
            live = await svc.sessions.current(token, svc.live.clock())
        except CONNECTION_ERRORS as exc:
            log.warning("advisor stream: session not checked: %s", exc)
            continue
        if live is None:
            if not queue.full():       # a full queue was closed by the hub already
                queue.put_nowait(None)
            return


async def post_signout(request: web.Request) -> web.Response:
    """End this session (the cookie is cleared too)."""
    svc, session = await changing(request)
    await svc.sessions.sign_out(session, svc.live.clock())
    response = json_response({"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


# --- declarations --------------------------------------------------------------------------

ME: Schema = {"type": "object", "required": ["advisor_id", "display_name", "presence",
                                             "event_id"],
              "properties": {"advisor_id": {"type": "integer"},
                             "display_name": {"type": "string"}, "presence": s.PRESENCE,
                             "event_id": {"type": "integer", "description":
                                          "the last presence event the presence includes"}}}
LINK: Schema = {"type": "object", "required": ["advisor_id", "token", "path", "expires_at"],
                "properties": {"advisor_id": {"type": "integer"},
                               "token": {"type": "string"},
                               "path": {"type": "string",
                                        "description": "the page that signs in with it"},
                               "expires_at": {"type": "string", "format": "date-time"}}}
EVENTS: Schema = {"type": "string", "description":
                  "'event: state' with the me body first, then 'id: <n>', 'event: "
                  "presence', 'data: <JSON>' per change of this advisor (as GET "
                  "/v1/advisors/events)"}
_CSRF = {403: ("csrf-invalid", CROSS_SITE)}
_T = "advisor page"
OPERATIONS = tuple(replace(op, handler=database_errors_as_503(op.handler)) for op in (
    Operation("POST", "/v1/advisors/{advisor_id}/signin-links", post_signin_link,
              "Issue a one-time sign-in link for the advisor's page", "advisors",
              {201: Reply("the link", LINK)}, access=MERCHANT, params=id_param("advisor_id"),
              errors={404: ("not-found",), **UNAVAILABLE}),
    Operation("DELETE", "/v1/advisors/{advisor_id}/sessions", delete_sessions,
              "Sign the advisor out of every page", "advisors",
              {200: Reply("how many sessions ended", {
                  "type": "object", "properties": {"advisor_id": {"type": "integer"},
                                                   "sessions_ended": {"type": "integer"}}})},
              access=MERCHANT, params=id_param("advisor_id"),
              errors={404: ("not-found",), **UNAVAILABLE}),
    Operation("GET", "/v1/advisor/me", get_me, "The signed-in advisor", _T,
              {200: Reply("name and presence", ME)}, access=ADVISOR_SESSION,
              errors=UNAVAILABLE),
    Operation("PUT", "/v1/advisor/presence", put_own_presence,
              "Set the signed-in advisor's presence", _T,
              {200: Reply("name and the new presence", ME)}, access=ADVISOR_SESSION,
              body=s.PRESENCE_INPUT, errors={400: ("invalid-field",), **_CSRF,
                                             **UNAVAILABLE}),
    Operation("GET", "/v1/advisor/events", own_events,
              "The signed-in advisor's presence, live (SSE)", _T,
              {200: Reply("an event stream", EVENTS, "text/event-stream")},
              access=ADVISOR_SESSION, errors=UNAVAILABLE),
    Operation("POST", "/v1/advisor/signout", post_signout, "Sign out of the page", _T,
              {200: Reply("signed out", {"type": "object",
                                         "properties": {"signed_out": {"const": True}}})},
              access=ADVISOR_SESSION, errors={**_CSRF, **UNAVAILABLE}),
))
