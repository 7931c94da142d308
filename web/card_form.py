"""What the card page and the top-up page share: a registration's link checked (expired,
the site able to take cards), Stripe's card element in a form whose data attributes carry
what ``static/card.js`` needs (the publishable key, the SetupIntent's client secret, the
route that has the site ask Stripe, the state it answers when done, the messages), the
sources Stripe.js needs in the page's policy, and the page that says why a link is no
good (404, 410) or the site not ready (503)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

from aiohttp import web

from billing.card_http import SERVICES_KEY, CardServices
from billing.cards import Registration
from billing.settings import BillingSettings
from shared.access_log import logged_path
from shared.db import CONNECTION_ERRORS
from shared.http import ApiError, started
from shared.language import Language
from web.language import page_language
from web.render import Sources, message_page, origin, page
from web.texts import text

log = logging.getLogger("web.card")

#: merchant id → the name a page shows
MERCHANTS_KEY = web.AppKey("web_merchant_names", dict[str, str])
#: Stripe's API, unless ``[billing.stripe] api_base`` names another
STRIPE_API = "https://api.stripe.com"
#: the frames of Stripe's card authentication (3-D Secure)
STRIPE_HOOKS = "https://hooks.stripe.com"
#: the script's messages every card form has (each page adds its ``msg-done``)
MESSAGES = ("msg-working", "msg-declined", "msg-expired-card", "msg-incorrect", "msg-failed")
_UNAVAILABLE = {"Retry-After": "60"}

Build = Callable[[web.Request, Language, CardServices], Awaitable[web.Response]]


@dataclass(frozen=True, slots=True)
class CardForm:
    """A page's own words (already in its language) and its confirmation route."""

    title: str
    lines: Sequence[str]
    button: str
    #: what the script POSTs once Stripe.js confirmed the SetupIntent
    confirm_url: str
    #: the ``state`` that route answers when the page is done
    done_state: str
    done_message: str
    #: what the page says when the route answers ``failed`` (a top-up's charge declined)
    failed_message: str = ""


def stripe_sources(settings: BillingSettings) -> Sources:
    """What a page using Stripe.js loads and talks to: the script's origin, Stripe's API
    and its authentication frames."""
    assert settings.stripe is not None
    js = origin(settings.stripe.js_url)
    api = origin(settings.stripe.api_base) if settings.stripe.api_base else STRIPE_API
    return Sources(script=(js,), connect=(api,), frame=(js, STRIPE_HOOKS))


def refusal(language: Language, status: int, why: str, **values: str) -> web.Response:
    """The page saying why not: ``error.<why>`` and its title."""
    return message_page(language, status, text(f"error.{why}.title", language),
                        text(f"error.{why}", language, **values),
                        headers=_UNAVAILABLE if status == 503 else None)


async def page_or_refusal(request: web.Request, build: Build) -> web.StreamResponse:
    """``build``'s page in the request's language, or: 404 for a token that is not a
    link's, 503 while the database or billing is not there."""
    language = page_language(request)
    try:
        services = started(request, SERVICES_KEY, "billing-unavailable")
        return await build(request, language, services)
    except CONNECTION_ERRORS as exc:
        log.warning("%s: database unavailable: %s", logged_path(request), exc)
        return refusal(language, 503, "unavailable")
    except ApiError as exc:
        if exc.status in (400, 404):
            return refusal(language, 404, "not-found")
        if exc.status == 503:
            return refusal(language, 503, "unavailable")
        raise


def merchant_name(request: web.Request, reg: Registration) -> str:
    return request.app[MERCHANTS_KEY].get(reg.merchant_id, reg.merchant_id)


def form_page(language: Language, reg: Registration, settings: BillingSettings,
              merchant: str, form: CardForm) -> web.Response:
    """The form for ``reg``'s SetupIntent; 410 for a link older than ``[billing]
    card_link_valid_s``, 503 without a publishable key."""
    if reg.requested_at + timedelta(seconds=settings.card_link_valid_s) < datetime.now(UTC):
        return refusal(language, 410, "expired")
    if settings.stripe is None or settings.stripe.publishable_key is None:
        log.warning("registration %d: no [billing.stripe] publishable_key", reg.id)
        return refusal(language, 503, "unavailable")
    data = {"publishable-key": settings.stripe.publishable_key,
            "client-secret": reg.client_secret, "confirm-url": form.confirm_url,
            "done-state": form.done_state, "lang": language.value,
            "msg-done": form.done_message, "msg-charge-failed": form.failed_message,
            **{name: text(name, language) for name in MESSAGES}}
    lines = "".join(f"\n<p>{escape(line)}</p>" for line in form.lines)
    body = f"""<main id="card-page" {_attributes(data)}>
<h1>{escape(form.title)}</h1>
<p class="merchant">{escape(merchant)}</p>{lines}
<form id="card-form">
<p class="label">{escape(text("card.label", language))}</p>
<div id="card-element"></div>
<button type="submit" id="card-submit">{escape(form.button)}</button>
</form>
<p id="card-status" role="status" aria-live="polite"></p>
<p class="note">{escape(text("card.note", language))}</p>
</main>"""
    return page(language, form.title, body, scripts=(settings.stripe.js_url, "/web/card.js"),
                sources=stripe_sources(settings))


def _attributes(data: Mapping[str, str]) -> str:
    return " ".join(f'data-{name}="{escape(value)}"' for name, value in data.items())
