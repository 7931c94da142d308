"""The JSON routes of the merchant's operators' page (:mod:`web.operator_page`), behind
the session its sign-in link opens (:mod:`callback_server.operator_sessions`), and the
merchant's routes that issue and revoke the links.

Merchant (bearer token):

* ``POST /v1/operator-signin-links``: a one-time link (201: ``token``, ``path``,
  ``expires_at``)
* ``DELETE /v1/operator-sessions``: end the merchant's operator sessions, void their
  unused links

Operator (the session cookie :data:`COOKIE`: HttpOnly, SameSite=Strict, Secure over TLS;
every change also needs the session's CSRF token in ``X-CSRF-Token``), for the session's
merchant only:

* ``GET /v1/operator/board``: the board (:mod:`callback_server.operator_board`), polled
  by the page every second
* ``PUT /v1/operator/advisors/{advisor_id}/presence``: what ``PUT
  /v1/advisors/{advisor_id}/presence`` does (``advisors.http.set_presence``; ``via``
  ``operator``)
* ``POST /v1/operator/consultations/{consultation_id}/<action>``: the handler of ``POST
  /v1/consultations/{consultation_id}/<action>`` (``consult_control.controlling``), the
  same checks, replies and NOTIFY, for each action (end, hold, unhold, transfer, its
  complete and cancel)
* ``POST /v1/operator/signout``: end this session

Errors: ``session-missing``/``session-invalid`` (401), ``csrf-invalid`` (403),
``cross-site-request`` (403: a change another site's page asked for), and the routes'
own.
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from advisors.http import SERVICES_KEY, Services, set_presence
from advisors.model import Via
from advisors.resources import UNAVAILABLE, id_param
from advisors.schemas import PRESENCE, PRESENCE_INPUT
from advisors.session_http import cookie_token, csrf_checked, live_session, session_access
from callback_server import consult_control
from callback_server.call_ports import utcnow
from callback_server.operator_board import BOARD, board
from callback_server.operator_sessions import OperatorSession, OperatorSessions
from shared.browser_session import CROSS_SITE, refuse_cross_site
from shared.http import (
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    started,
)
from shared.openapi import MERCHANT, Operation, Reply, Schema, add_operations

COOKIE = "cbgw_operator"

OPERATOR_SESSION = session_access("operatorSession", COOKIE, "a merchant's operator's",
                                  "/operator/signin/{token}")


def install(app: web.Application) -> None:
    """The routes, on an app with :func:`advisors.http.install` and
    :func:`callback_server.consult_control.install`."""
    add_operations(app, OPERATIONS)


def _advisors(request: web.Request) -> Services:
    return started(request, SERVICES_KEY, "advisors-unavailable")


def sessions(request: web.Request) -> OperatorSessions:
    """The operators' sessions, on the advisors' pool (503 before it is up)."""
    return OperatorSessions(_advisors(request).store.pool)


async def session_of(request: web.Request) -> OperatorSession:
    """The request's live operator session (401 otherwise)."""
    token = cookie_token(request, COOKIE)
    return live_session(await sessions(request).current(token, utcnow()))


async def changing(request: web.Request) -> OperatorSession:
    """A live session whose page sent its CSRF token, from the site's own page (403
    otherwise)."""
    refuse_cross_site(request)
    return csrf_checked(request, await session_of(request))


async def operator_merchant(request: web.Request) -> str:
    """The merchant a change of the page is for (``consult_control.MerchantOf``)."""
    return (await changing(request)).merchant_id


# --- the merchant's ------------------------------------------------------------------------


async def post_signin_link(request: web.Request) -> web.Response:
    """A one-time sign-in link for an operator (its token is shown only here)."""
    merchant = authenticated_merchant(request)
    token, expires = await sessions(request).issue(merchant, utcnow())
    return json_response({"token": token, "path": f"/operator/signin/{token}",
                          "expires_at": expires.isoformat()}, 201)


async def delete_sessions(request: web.Request) -> web.Response:
    merchant = authenticated_merchant(request)
    ended = await sessions(request).revoke(merchant, utcnow())
    return json_response({"sessions_ended": ended})


# --- the operator's ------------------------------------------------------------------------


async def get_board(request: web.Request) -> web.Response:
    session = await session_of(request)
    return json_response(await board(_advisors(request).store, session.merchant_id,
                                     utcnow()))


async def put_presence(request: web.Request) -> web.Response:
    merchant = await operator_merchant(request)
    return await set_presence(request, _advisors(request), merchant, Via.OPERATOR)


async def post_signout(request: web.Request) -> web.Response:
    session = await changing(request)
    await sessions(request).sign_out(session, utcnow())
    response = json_response({"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


# --- declarations --------------------------------------------------------------------------

LINK: Schema = {"type": "object", "required": ["token", "path", "expires_at"],
                "properties": {"token": {"type": "string"},
                               "path": {"type": "string",
                                        "description": "the page that signs in with it"},
                               "expires_at": {"type": "string", "format": "date-time"}}}
_CSRF = {403: ("csrf-invalid", CROSS_SITE)}
_T = "operator page"


def _control(action: consult_control.Action) -> Operation:
    """The operator page's route of a consultation control: the API's handler and
    declaration, the session's merchant."""
    op = consult_control.operation(action)
    return replace(op, path=op.path.replace("/v1/", "/v1/operator/", 1), tag=_T,
                   handler=database_errors_as_503(
                       consult_control.controlling(action, operator_merchant)),
                   access=OPERATOR_SESSION,
                   errors={**op.errors, 403: (*op.errors.get(403, ()), *_CSRF[403])})


OPERATIONS = (
    *(replace(op, handler=database_errors_as_503(op.handler)) for op in (
        Operation("POST", "/v1/operator-signin-links", post_signin_link,
                  "Issue a one-time sign-in link for the operators' page", "advisors",
                  {201: Reply("the link", LINK)}, access=MERCHANT, errors=UNAVAILABLE),
        Operation("DELETE", "/v1/operator-sessions", delete_sessions,
                  "Sign every operator of the merchant out", "advisors",
                  {200: Reply("how many sessions ended", {
                      "type": "object",
                      "properties": {"sessions_ended": {"type": "integer"}}})},
                  access=MERCHANT, errors=UNAVAILABLE),
        Operation("GET", "/v1/operator/board", get_board,
                  "The board: advisors, consultations talking, the queue, lines", _T,
                  {200: Reply("the board", BOARD)}, access=OPERATOR_SESSION,
                  errors=UNAVAILABLE),
        Operation("PUT", "/v1/operator/advisors/{advisor_id}/presence", put_presence,
                  "Set an advisor's presence", _T, {200: Reply("the presence", PRESENCE)},
                  access=OPERATOR_SESSION, params=id_param("advisor_id"),
                  body=PRESENCE_INPUT, errors={400: ("invalid-field",),
                                               404: ("not-found",),
                                               409: ("advisor-retired",), **_CSRF,
                                               **UNAVAILABLE}),
        Operation("POST", "/v1/operator/signout", post_signout, "Sign out of the page", _T,
                  {200: Reply("signed out", {"type": "object", "properties": {
                      "signed_out": {"const": True}}})},
                  access=OPERATOR_SESSION, errors={**_CSRF, **UNAVAILABLE}),
    )),
    *(_control(action) for action in consult_control.Action),
)
