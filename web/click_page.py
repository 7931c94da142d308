"""``GET /m/{merchant}/advisors``: the customer's click-to-call page (public).

It lists the merchant's advisors (display name, price per minute with tax, whether they
take a call now), refreshed by ``static/click.js`` every :data:`REFRESH_S` from
``GET /v1/m/{merchant}/advisors`` (a public page may have any number of anonymous
visitors: short requests, no connection held open per visitor), and a 「電話で相談する」
button on an advisor in standby. The customer types their number, receives a one-time
code by SMS, types it in, and only then may the page ask for the call
(:mod:`callback_server.click_web_http`); the page then follows the call (calling you,
connecting, talking, ended) and says why when a request is refused (billing's guidance, with a
link to the merchant's ``topup_url`` when the balance is too low; the advisor busy, too
many tries).
"""

from __future__ import annotations

from html import escape

from aiohttp import web

from callback_server.click_web_http import advisors_of, merchant_of
from shared.http import ApiError
from shared.language import Language
from shared.openapi import Operation, Param, Reply, add_operations, string
from web.language import page_language
from web.render import HTML, LANG_PARAM, TAG, message_page, mount_static, page
from web.texts import template, text, yen

REFRESH_S = 2
#: the script's messages (data attributes ``msg-*``)
MESSAGES = ("available", "talking", "offline", "per-minute", "code-sent", "calling",
            "connecting", "talking-now", "ended", "failed", "invalid-number",
            "code-wrong", "code-expired", "number-locked", "rate-limited",
            "number-refused", "advisor-unavailable", "balance-too-low", "no-card",
            "in-dunning", "unpaid-limit", "billing-refused", "verify-again")


def install(app: web.Application) -> None:
    """The page, on an app with :func:`callback_server.click_web_http.install`."""
    add_operations(app, (OPERATION,))
    mount_static(app)


async def get_click_page(request: web.Request) -> web.StreamResponse:
    """The merchant's advisors and the click-to-call form; 404 for no such merchant."""
    language = page_language(request)
    try:
        intake, merchant = merchant_of(request)
    except ApiError as exc:
        if exc.status != 404:
            raise
        return message_page(language, 404, text("error.not-found.title", language),
                            text("click.no-merchant", language))
    advisors = await advisors_of(intake, merchant)
    data = {"merchant": merchant.id, "refresh-s": str(REFRESH_S),
            "topup-url": merchant.topup_url or "",
            **{f"msg-{name}": template(f"click.{name}", language) for name in MESSAGES}}
    attributes = " ".join(f'data-{k}="{escape(v)}"' for k, v in data.items())
    items = "".join(_advisor(a, language) for a in advisors)
    title = text("click.title", language, merchant=merchant.name)
    body = f"""<main id="click-page" {attributes}>
<h1>{escape(title)}</h1>
<p>{escape(text("click.lead", language))}</p>
<ul id="advisors">{items}
</ul>
<section id="call-panel" hidden>
<h2 id="call-advisor"></h2>
<form id="number-form">
<label for="phone-number">{escape(text("click.number", language))}</label>
<input id="phone-number" type="tel" autocomplete="tel" maxlength="20" required>
<button type="submit" id="send-code">{escape(text("click.send-code", language))}</button>
</form>
<form id="code-form" hidden>
<label for="phone-code">{escape(text("click.code", language))}</label>
<input id="phone-code" inputmode="numeric" autocomplete="one-time-code" maxlength="6"
 required>
<button type="submit" id="verify-code">{escape(text("click.verify", language))}</button>
</form>
<p id="call-status" role="status" aria-live="polite"></p>
<p><a id="topup-link" href="{escape(merchant.topup_url or "")}" hidden>{
        escape(text("click.topup", language))}</a></p>
</section>
</main>"""
    return page(language, title, body, scripts=("/web/click.js",))


def _advisor(advisor: dict[str, object], language: Language) -> str:
    availability = str(advisor["availability"])
    price = int(str(advisor["price_per_minute_yen"]))
    return f"""
<li class="advisor" data-advisor-id="{advisor["id"]}" data-availability="{availability}">
<span class="name">{escape(str(advisor["display_name"]))}</span>
<span class="price">{escape(text("click.per-minute", language, amount=yen(price, language)))}</span>
<span class="availability">{escape(text(f"click.{availability}", language))}</span>
<button type="button" class="call" data-advisor-id="{advisor["id"]}"{
        "" if availability == "available" else " hidden"}>{
        escape(text("click.call", language))}</button>
</li>"""


OPERATION = Operation(
    "GET", "/m/{merchant}/advisors", get_click_page, "The customer's click-to-call page",
    TAG, {200: Reply("the page", HTML, "text/html"),
          404: Reply("no such merchant here", HTML, "text/html")},
    params=(Param("merchant", "path", string(64)), LANG_PARAM))
