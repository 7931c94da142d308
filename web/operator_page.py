"""``GET /operator``: the merchant's operators' live page, and the sign-in behind the link
the merchant issues (``POST /v1/operator-signin-links``,
:mod:`callback_server.operator_http`), as the advisor's page (:mod:`web.advisor_page`):
``GET /operator/signin/{token}`` is a page with one button; pressing it (``POST
/operator/signin/{token}``) uses the link once and sets the session cookie (HttpOnly,
SameSite=Strict, Secure over TLS) before sending the browser to ``/operator``.

The page (``static/operator.js``) polls ``GET /v1/operator/board`` every second and
shows the advisors with their state and since when, the consultations talking now (the
customer's number masked), the customers waiting with their places, and the lines in
use. Its buttons send the API's own controls under ``/v1/operator/...`` with the
session's CSRF token (``X-CSRF-Token``): an advisor's presence (standby, break,
offline), hold and resume, a consult transfer to an advisor picked from the board and
its complete or cancel, and a forced end after a confirmation. A refused action shows
the API's error in the page's language (``operator.refused.<error id>``). Without a
live session the page asks for a new link (401); a link unknown, used or expired is a
410 page.
"""

from __future__ import annotations

from html import escape

from aiohttp import web

from callback_server.call_ports import utcnow
from callback_server.operator_http import COOKIE, session_of, sessions
from callback_server.operator_http import install as install_routes
from shared.browser_session import from_own_pages
from shared.http import ApiError
from shared.language import Language
from shared.openapi import Operation, Param, Reply, add_operations, string
from web.advisor_page import STATES, lang_query, refusal, signed_in, signin_page
from web.language import page_language
from web.render import HTML, LANG_PARAM, TAG, mount_static, page
from web.texts import TEXTS, text

_LINK_PARAM = Param("token", "path", string(128))


def install(app: web.Application) -> None:
    """The page and its JSON routes, on an app with :func:`advisors.http.install` and
    :func:`callback_server.consult_control.install`."""
    install_routes(app)
    add_operations(app, OPERATIONS)
    mount_static(app)


def state_text(state: str, language: Language) -> str:
    return text(f"operator.state.{state}" if f"operator.state.{state}" in TEXTS
                else f"advisor.state.{state}", language)


def _data(csrf: str, language: Language) -> dict[str, str]:
    """What the script needs: the CSRF token and every text it writes."""
    prefix = "operator."
    texts = {name[len(prefix):].replace(".", "-").replace("_", "-"): text(name, language)
             for name in TEXTS if name.startswith(prefix) and ".signin." not in name}
    return {"csrf": csrf, "lang": language.value,
            "signed-out-url": f"/operator{lang_query(language)}",
            **{f"state-{name.replace('_', '-')}": state_text(name, language)
               for name in STATES},
            **{f"t-{name}": value for name, value in texts.items()}}


async def get_operator(request: web.Request) -> web.StreamResponse:
    """The signed-in operator's board; 401 (a page asking for a new link) without a
    session."""
    language = page_language(request)
    try:
        session = await session_of(request)
    except ApiError as exc:
        if exc.status != 401:
            raise
        return refusal(language, 401, "signed-out")
    attributes = " ".join(f'data-{k}="{escape(v)}"'
                          for k, v in _data(session.csrf_token, language).items())

    def t(name: str) -> str:
        return escape(text(f"operator.{name}", language))

    def table(table_id: str, columns: tuple[str, ...]) -> str:
        heads = "".join(f"<th>{t('col.' + c)}</th>" for c in columns)
        return (f'<table id="{table_id}"><thead><tr>{heads}</tr></thead>'
                f'<tbody></tbody></table>')

    title = text("operator.title", language)
    body = f"""<main id="operator-page" class="wide" {attributes}>
<h1>{escape(title)}</h1>
<p>{t("lines")}: <strong id="lines"><span id="lines-in-use">-</span> / <span
id="lines-total">-</span></strong></p>
<p id="operator-status" role="status" aria-live="polite"></p>
<h2>{t("advisors")}</h2>
{table("advisors", ("name", "state", "since", "actions"))}
<h2>{t("consultations")}</h2>
{table("consultations", ("customer", "advisor", "method", "talking-since", "actions"))}
<h2>{t("queue")}</h2>
{table("queue", ("place", "queued-at"))}
<button type="button" id="sign-out" class="secondary">{t("sign-out")}</button>
</main>"""
    return page(language, title, body, scripts=("/web/operator.js",))


async def get_signin(request: web.Request) -> web.StreamResponse:
    """The sign-in page of a link: one button that uses it; 410 for a link unknown,
    used or expired."""
    language = page_language(request)
    token = request.match_info["token"]
    if not await sessions(request).usable(token, utcnow()):
        return refusal(language, 410, "signin-link")
    return signin_page(language, "operator", f"/operator/signin/{token}")


async def post_signin(request: web.Request) -> web.StreamResponse:
    """Use the link: the session cookie, and on to ``/operator`` (303); 410 for a link
    unknown, used or expired; 403 when another site's page sent the form."""
    language = page_language(request)
    if not from_own_pages(request):     # another site signing its visitor in
        return refusal(language, 403, "cross-site")
    token = await sessions(request).sign_in(request.match_info["token"], utcnow())
    if token is None:
        return refusal(language, 410, "signin-link")
    return signed_in(request, language, COOKIE, token, "/operator")


_PAGE_REPLIES = {401: Reply("no live session: a page asking for a new link", HTML,
                            "text/html")}
_LINK_GONE = {410: Reply("the link is unknown, used or expired", HTML, "text/html")}
OPERATIONS = (
    Operation("GET", "/operator", get_operator, "The merchant's operators' board", TAG,
              {200: Reply("the page", HTML, "text/html"), **_PAGE_REPLIES},
              params=(LANG_PARAM,)),
    Operation("GET", "/operator/signin/{token}", get_signin,
              "The sign-in page of an operator's link", TAG,
              {200: Reply("the page", HTML, "text/html"), **_LINK_GONE},
              params=(_LINK_PARAM, LANG_PARAM)),
    Operation("POST", "/operator/signin/{token}", post_signin,
              "Sign in with the link (sets the session cookie)", TAG,
              {303: Reply("signed in: on to /operator (Set-Cookie)"), **_LINK_GONE,
               403: Reply("sent from another site's page", HTML, "text/html")},
              params=(_LINK_PARAM, LANG_PARAM)),
)
