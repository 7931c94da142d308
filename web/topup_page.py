"""``GET /topup/{token}``: the prepaid top-up page behind a top-up link
(:mod:`billing.topup_links`).

It names the merchant and the amount, and (as the card page, :mod:`web.card_form`) has
Stripe.js confirm the link's SetupIntent with the card typed in; then the script asks the
site to look it up at Stripe and charge the amount to the card
(``POST /v1/billing/topup-links/{token}/confirm``): the balance is credited from Stripe's
answer to that charge, once, and the page says so only then. A link once its card is
given is a 410 page: paid (naming the amount), its charge declined (asking for a new
link) or still being charged; unknown, expired or the site not ready as the card page.
"""

from __future__ import annotations

from aiohttp import web

from billing.card_http import CardServices, link_token
from shared.language import Language
from shared.openapi import Operation, Reply
from web.card_form import CardForm, form_page, merchant_name, page_or_refusal, refusal
from web.render import HTML, LANG_PARAM, TAG, TOKEN_PARAM
from web.texts import text, yen


async def get_topup(request: web.Request) -> web.StreamResponse:
    """The top-up page of a top-up link (Japanese; English with ``?lang=en`` or an
    English ``Accept-Language``): 404 for a link that is not one, 410 for one paid,
    declined or expired, 503 while the site cannot take cards."""
    return await page_or_refusal(request, _topup_page)


async def _topup_page(request: web.Request, language: Language, services: CardServices
                      ) -> web.Response:
    token = link_token(request)
    link = await services.links.by_token(token)
    amount = yen(link.amount_yen, language)
    if link.registration.payment_method is not None:     # the card is given
        outcome = link.result.outcome if link.result else "pending"
        why = {"succeeded": "topped-up", "pending": "topup-pending"}.get(outcome,
                                                                        "topup-failed")
        return refusal(language, 410, why, amount=amount)
    reg = link.registration
    merchant = merchant_name(request, reg)
    return form_page(language, reg, services.settings, merchant, CardForm(
        title=text("topup.title", language),
        lines=(text("topup.lead", language, merchant=merchant, amount=amount),
               text("topup.saved", language)),
        button=text("topup.submit", language, amount=amount),
        confirm_url=f"/v1/billing/topup-links/{token}/confirm",
        done_state="succeeded", done_message=text("topup.done", language, amount=amount),
        failed_message=text("error.topup-failed", language)))


TOPUP_OPERATION = Operation(
    "GET", "/topup/{token}", get_topup, "The prepaid top-up page behind a top-up link", TAG,
    {200: Reply("the page", HTML, "text/html"),
     404: Reply("no top-up link has this token", HTML, "text/html"),
     410: Reply("the link's top-up is paid, declined or being charged, or the link has "
                "expired", HTML, "text/html"),
     503: Reply("the site cannot take cards now (Retry-After)", HTML, "text/html")},
    params=(TOKEN_PARAM, LANG_PARAM))
