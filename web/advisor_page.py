"""``GET /advisor``: the advisor's own page, and the sign-in behind the link the merchant
issues (``POST /v1/advisors/{id}/signin-links``, :mod:`advisors.session_http`).

``GET /advisor/signin/{token}`` is a page with one button; pressing it
(``POST /advisor/signin/{token}``) uses the link and sets the session cookie
(HttpOnly, SameSite=Strict, Secure when served over TLS) before sending the browser to
``/advisor``. A link opened by a mail or chat client's preview therefore signs nobody
in, and the cookie set from the site's own form is sent on the redirect that follows (a
SameSite=Strict cookie set in answer to a link followed from another site would not be).

The page shows the advisor's name and state, kept live by ``static/advisor.js`` from
``GET /v1/advisor/events``, and the buttons that change it through
``PUT /v1/advisor/presence`` with the session's CSRF token (in the page's data
attributes, sent as ``X-CSRF-Token``). Without a live session the page asks for a new
link (401); a link unknown, used or expired is a 410 page.
"""

from __future__ import annotations

import logging
from html import escape

from aiohttp import web

from advisors.session_http import COOKIE, me, services, session_of
from advisors.sessions import SESSION_VALID_S
from shared.browser_session import from_own_pages
from shared.client_address import client_address
from shared.http import ApiError
from shared.language import Language
from shared.openapi import Operation, Param, Reply, add_operations, string
from web.language import page_language
from web.render import HTML, LANG_PARAM, TAG, message_page, mount_static, page
from web.texts import text

log = logging.getLogger("web.signin")

#: the advisor's states the page names (``advisors.model.State``)
STATES = ("standby", "ringing", "talking", "wrap_up", "working", "break", "offline")
#: the buttons: (presence sent, text); the last ends after-call work
BUTTONS = (("online", "advisor.go-online"), ("break", "advisor.go-break"),
           ("working", "advisor.go-working"), ("offline", "advisor.go-offline"))
_LINK_PARAM = Param("token", "path", string(128))


def install(app: web.Application) -> None:
    """The page, on an app with :func:`advisors.http.install` and
    :func:`advisors.session_http.install`."""
    add_operations(app, OPERATIONS)
    mount_static(app)


def lang_query(language: Language) -> str:
    return "" if language is Language.JAPANESE else f"?lang={language.value}"


async def get_advisor(request: web.Request) -> web.StreamResponse:
    """The signed-in advisor's page; 401 (a page asking for a new link) without a
    session."""
    language = page_language(request)
    try:
        svc, session = await session_of(request)
    except ApiError as exc:
        if exc.status != 401:
            raise
        return refusal(language, 401, "signed-out")
    mine = await me(svc, session)
    state = mine["presence"]["state"]
    data = {"csrf": session.csrf_token,
            **{f"state-{name.replace('_', '-')}": text(f"advisor.state.{name}", language)
               for name in STATES},
            "msg-failed": text("advisor.failed", language),
            "signed-out-url": f"/advisor{lang_query(language)}"}
    attributes = " ".join(f'data-{k}="{escape(v)}"' for k, v in data.items())
    buttons = "".join(
        f'\n<button type="button" class="presence" data-presence="{value}">'
        f'{escape(text(name, language))}</button>' for value, name in BUTTONS)
    title = text("advisor.title", language)
    body = f"""<main id="advisor-page" {attributes}>
<h1>{escape(title)}</h1>
<p class="merchant" id="advisor-name">{escape(mine["display_name"])}</p>
<p>{escape(text("advisor.now", language))}
<strong id="advisor-state" data-state="{escape(state)}">{escape(
        text(f"advisor.state.{state}", language))}</strong></p>
<p id="advisor-reason" class="note">{escape(mine["presence"]["reason"])}</p>
<div id="presence-buttons">{buttons}
<button type="button" class="presence" id="end-wrap-up" data-presence="online" hidden>{
        escape(text("advisor.end-wrap-up", language))}</button>
</div>
<p id="advisor-status" role="status" aria-live="polite"></p>
<button type="button" id="sign-out" class="secondary">{
        escape(text("advisor.sign-out", language))}</button>
</main>"""
    return page(language, title, body, scripts=("/web/advisor.js",))


async def get_signin(request: web.Request) -> web.StreamResponse:
    """The sign-in page of a link: one button that uses it; 410 for a link unknown,
    used or expired."""
    language = page_language(request)
    token = request.match_info["token"]
    svc = services(request)
    if not await svc.sessions.usable(token, svc.live.clock()):
        return refusal(language, 410, "signin-link")
    return signin_page(language, "advisor", f"/advisor/signin/{token}")


async def post_signin(request: web.Request) -> web.StreamResponse:
    """Use the link: the session cookie, and on to ``/advisor`` (303); 410 for a link
    unknown, used or expired; 403 when another site's page sent the form (it would sign
    its visitor in as the advisor whose link it holds)."""
    language = page_language(request)
    if not from_own_pages(request):     # another site signing its visitor in as someone
        return refusal(language, 403, "cross-site")
    svc = services(request)
    opened = await svc.sessions.sign_in(request.match_info["token"], svc.live.clock())
    if opened is None:
        return refusal(language, 410, "signin-link")
    return signed_in(request, language, COOKIE, opened.token, "/advisor")


def signin_page(language: Language, who: str, action: str) -> web.Response:
    """The page of a sign-in link (``who``: the texts' prefix): one button that POSTs
    to ``action``."""
    title = text(f"{who}.signin.title", language)
    body = f"""<main>
<h1>{escape(title)}</h1>
<p>{escape(text(f"{who}.signin.lead", language))}</p>
<form method="post" action="{escape(action)}{lang_query(language)}">
<button type="submit" id="sign-in">{escape(text("advisor.signin.submit", language))}</button>
</form>
</main>"""
    return page(language, title, body)


def signed_in(request: web.Request, language: Language, cookie: str, token: str,
              location: str) -> web.Response:
    """On to the page (303) with the session's cookie: HttpOnly, SameSite=Strict, Secure
    over TLS; logged with the client's address (behind a trusted proxy, the one it
    names)."""
    log.info("signed in to %s from %s", location, client_address(request))
    response = web.Response(status=303, headers={
        "Location": f"{location}{lang_query(language)}", "Cache-Control": "no-store"})
    response.set_cookie(cookie, token, max_age=SESSION_VALID_S, path="/",
                        httponly=True, secure=request.secure, samesite="Strict")
    return response


def refusal(language: Language, status: int, why: str) -> web.Response:
    return message_page(language, status, text(f"error.{why}.title", language),
                        text(f"error.{why}", language))


_PAGE_REPLIES = {401: Reply("no live session: a page asking for a new link", HTML,
                            "text/html")}
_LINK_GONE = {410: Reply("the link is unknown, used or expired", HTML, "text/html")}
OPERATIONS = (
    Operation("GET", "/advisor", get_advisor, "The advisor's page", TAG,
              {200: Reply("the page", HTML, "text/html"), **_PAGE_REPLIES},
              params=(LANG_PARAM,)),
    Operation("GET", "/advisor/signin/{token}", get_signin,
              "The sign-in page of an advisor's link", TAG,
              {200: Reply("the page", HTML, "text/html"), **_LINK_GONE},
              params=(_LINK_PARAM, LANG_PARAM)),
    Operation("POST", "/advisor/signin/{token}", post_signin,
              "Sign in with the link (sets the session cookie)", TAG,
              {303: Reply("signed in: on to /advisor (Set-Cookie)"), **_LINK_GONE,
               403: Reply("sent from another site's page", HTML, "text/html")},
              params=(_LINK_PARAM, LANG_PARAM)),
)
