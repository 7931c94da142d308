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
site not ready (no database, no publishable key) a 503 page (:mod:`web.card_form`).
"""

from __future__ import annotations

from aiohttp import web

from billing.card_http import CardServices, link_token
from shared.language import Language
from shared.openapi import Operation, Reply
from web.card_form import CardForm, form_page, merchant_name, page_or_refusal, refusal
from web.render import HTML, LANG_PARAM, TAG, TOKEN_PARAM
from web.texts import text


async def get_card(request: web.Request) -> web.StreamResponse:
    """The card page of a registration's link (Japanese; English with ``?lang=en`` or an
    English ``Accept-Language``): 404 for a link that is not one, 410 for one used or
    expired, 503 while the site cannot take cards."""
    return await page_or_refusal(request, _card_page)


async def _card_page(request: web.Request, language: Language, services: CardServices
                     ) -> web.Response:
    token = link_token(request)
    reg = await services.cards.by_token(token)
    if reg.payment_method is not None:
        return refusal(language, 410, "used")
    settings = services.settings
    merchant = merchant_name(request, reg)
    purpose = "card.postpaid" if reg.merchant_id in settings.postpaid_merchants \
        else "card.prepaid"
    return form_page(language, reg, settings, merchant, CardForm(
        title=text("card.title", language),
        lines=(text("card.lead", language, merchant=merchant), text(purpose, language)),
        button=text("card.submit", language),
        confirm_url=f"/v1/billing/card-setup/{token}/confirm",
        done_state="on-file", done_message=text("card.done", language)))


CARD_OPERATION = Operation(
    "GET", "/card/{token}", get_card, "The card page behind a registration's link", TAG,
    {200: Reply("the page", HTML, "text/html"),
     404: Reply("no registration has this link", HTML, "text/html"),
     410: Reply("the link's card is already on file, or the link has expired", HTML,
                "text/html"),
     503: Reply("the site cannot take cards now (Retry-After)", HTML, "text/html")},
    params=(TOKEN_PARAM, LANG_PARAM))
