"""``GET /card/{token}``: the page behind a card registration's link
(:mod:`billing.cards`).

It names the merchant and what the card is for (postpaid consultations charged to it, or
prepaid top-ups), loads Stripe.js (``[billing.stripe] js_url``), and ``static/card.js``
mounts Stripe's card element and confirms the SetupIntent with its client secret, the
only secret on the page besides the publishable key. Then the script asks the site to
look the SetupIntent up at Stripe (``POST /v1/billing/card-setup/{token}/confirm``) and
says the card is registered only once the site has it on file; a declined card gets a
clear message and may be tried again. A link that is unknown is a 404 page, one whose
card is already on file or older than ``[billing] card_link_valid_s`` a 410 page, the
site not ready (no database, no publishable key) a 503 page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from html import escape

from aiohttp import web

from billing.card_http import SERVICES_KEY, link_token
from billing.cards import Registration
from billing.settings import BillingSettings
from shared.http import ApiError, database_errors_as_503, started
from shared.language import Language
from shared.openapi import Operation, Param, Reply, add_operations, string
from web.language import page_language
from web.render import (
    HTML,
    STATIC_OPERATION,
    TAG,
    Sources,
    message_page,
    origin,
    page,
)
from web.texts import TEXTS, text

log = logging.getLogger("web.card")

#: merchant id → the name the page shows
MERCHANTS_KEY = web.AppKey("web_card_merchants", dict[str, str])
#: Stripe's API, unless ``[billing.stripe] api_base`` names another
STRIPE_API = "https://api.stripe.com"
#: the frames of Stripe's card authentication (3-D Secure)
STRIPE_HOOKS = "https://hooks.stripe.com"


def install(app: web.Application, merchant_names: Mapping[str, str]) -> None:
    """The card page and the pages' static files, on an app with the billing card routes
    (:func:`billing.card_http.install`); ``merchant_names``: id → the name shown."""
    app[MERCHANTS_KEY] = dict(merchant_names)
    add_operations(app, (CARD_OPERATION, STATIC_OPERATION))


def stripe_sources(settings: BillingSettings) -> Sources:
    """What a page using Stripe.js loads and talks to: the script's origin, Stripe's API
    and its authentication frames."""
    assert settings.stripe is not None
    js = origin(settings.stripe.js_url)
    api = origin(settings.stripe.api_base) if settings.stripe.api_base else STRIPE_API
    return Sources(script=(js,), connect=(api,), frame=(js, STRIPE_HOOKS))


async def get_card(request: web.Request) -> web.StreamResponse:
    """The card page of a registration's link (Japanese; English with ``?lang=en`` or an
    English ``Accept-Language``): 404 for a link that is not one, 410 for one used or
    expired, 503 while the site cannot take cards."""
    language = page_language(request)
    try:
        return await _card_page(request)
    except ApiError as exc:
        if exc.status in (400, 404):
            return _refusal(language, 404, "not-found")
        if exc.status == 503:
            return _refusal(language, 503, "unavailable", {"Retry-After": "60"})
        raise


@database_errors_as_503
async def _card_page(request: web.Request) -> web.Response:
    language = page_language(request)
    services = started(request, SERVICES_KEY, "billing-unavailable")
    reg = await services.cards.by_token(link_token(request))
    settings = services.settings
    if reg.payment_method is not None:
        return _refusal(language, 410, "used")
    valid = timedelta(seconds=settings.card_link_valid_s)
    if reg.requested_at + valid < datetime.now(UTC):
        return _refusal(language, 410, "expired")
    if settings.stripe is None or settings.stripe.publishable_key is None:
        log.warning("card page %d: no [billing.stripe] publishable_key", reg.id)
        return _refusal(language, 503, "unavailable", {"Retry-After": "60"})
    merchant = request.app[MERCHANTS_KEY].get(reg.merchant_id, reg.merchant_id)
    body = _card_body(reg, language, merchant,
                      settings.stripe.publishable_key,
                      postpaid=reg.merchant_id in settings.postpaid_merchants)
    return page(language, text("card.title", language), body,
                scripts=(settings.stripe.js_url, "/web/card.js"),
                sources=stripe_sources(settings))


def _refusal(language: Language, status: int, why: str,
             headers: Mapping[str, str] | None = None) -> web.Response:
    return message_page(language, status, text(f"error.{why}.title", language),
                        text(f"error.{why}", language), headers=headers)


def _card_body(reg: Registration, language: Language, merchant: str, publishable_key: str,
               *, postpaid: bool) -> str:
    def t(name: str) -> str:
        return escape(text(name, language, merchant=merchant))

    data = {"publishable-key": publishable_key, "client-secret": reg.client_secret,
            "confirm-url": f"/v1/billing/card-setup/{reg.link_token}/confirm",
            "lang": language.value,
            **{name: text(name, language) for name in TEXTS if name.startswith("msg-")}}
    attributes = " ".join(f'data-{name}="{escape(value)}"' for name, value in data.items())
    return f"""<main id="card-page" {attributes}>
<h1>{t("card.title")}</h1>
<p class="merchant">{escape(merchant)}</p>
<p>{t("card.lead")}</p>
<p>{t("card.postpaid" if postpaid else "card.prepaid")}</p>
<form id="card-form">
<p class="label">{t("card.label")}</p>
<div id="card-element"></div>
<button type="submit" id="card-submit">{t("card.submit")}</button>
</form>
<p id="card-status" role="status" aria-live="polite"></p>
<p class="note">{t("card.note")}</p>
</main>"""


CARD_OPERATION = Operation(
    "GET", "/card/{token}", get_card, "The card page behind a registration's link", TAG,
    {200: Reply("the page", HTML, "text/html"),
     404: Reply("no registration has this link", HTML, "text/html"),
     410: Reply("the link's card is already on file, or the link has expired", HTML,
                "text/html"),
     503: Reply("the site cannot take cards now (Retry-After)", HTML, "text/html")},
    params=(Param("token", "path", string(128)),
            Param("lang", "query", {"enum": ["ja", "en"]}, "the page's language "
                  "(default: from Accept-Language, else Japanese)")))
