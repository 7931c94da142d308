"""The top-up link routes (mounted by :func:`install` with the card routes, when
``[billing.stripe]`` is set; :mod:`billing.topup_links`).

Merchant bearer token:

* ``POST /v1/billing/accounts/{account}/topup-links``: a link to the top-up page for an
  amount (a SetupIntent for the card the customer will type in); the ``link``
  (``[billing] topup_page_url``) can be sent to the customer
* ``GET /v1/billing/topup-links/{id}``: its state (awaiting the card, then its top-up's)

Public: ``POST /v1/billing/topup-links/{token}/confirm`` (the top-up page, once Stripe.js
confirmed the SetupIntent: the site asks Stripe, puts the card on file and charges the
amount to it once).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from billing.card_http import (
    STRIPE_DOWN,
    TOKEN_PARAM,
    TOPUP_BODY,
    card_services,
    link_token,
    merchant_services,
    read_topup,
)
from billing.http import ACCOUNT_PARAM, TAG, UNAVAILABLE, account_param, id_param
from billing.settings import BillingSettings
from billing.topup_links import TopUpLink
from shared.http import database_errors_as_503, json_response
from shared.openapi import (
    MERCHANT,
    Operation,
    Param,
    Reply,
    Schema,
    add_operations,
    nullable,
)


def install(app: web.Application) -> None:
    """The routes, on an app with :func:`billing.card_http.install`'s services."""
    add_operations(app, OPERATIONS)


def link_json(link: TopUpLink, settings: BillingSettings) -> dict[str, Any]:
    reg, page = link.registration, settings.topup_page_url
    state = (link.result.outcome if link.result else "pending") if link.topup_id \
        else "awaiting-card"
    return {"id": reg.id, "account": reg.account, "amount_yen": link.amount_yen,
            "client_secret": reg.client_secret,
            "publishable_key": settings.stripe.publishable_key if settings.stripe else None,
            "link": page.replace("{token}", reg.link_token)
            if page and reg.link_token else None,
            "requested_at": reg.requested_at.isoformat(), "state": state,
            "topup_id": link.topup_id,
            "failure": (link.result.failure or None) if link.result else None}


async def post_link(request: web.Request) -> web.Response:
    """A link to the top-up page for ``amount_yen``: the customer types a card in, and
    once Stripe says the card is good the amount is charged to it and credited."""
    services, merchant = merchant_services(request)
    account = account_param(request)
    amount, by = await read_topup(request)
    link = await services.links.create(merchant, account, amount, by=by)
    return json_response(link_json(link, services.settings), status=201)


async def get_link(request: web.Request) -> web.Response:
    """A top-up link: awaiting the card, then its top-up's state."""
    services, merchant = merchant_services(request)
    link = await services.links.get(merchant, id_param(request, "link_id"))
    return json_response(link_json(link, services.settings))


async def post_confirm(request: web.Request) -> web.Response:
    """The top-up page says Stripe.js confirmed the SetupIntent: the site asks Stripe
    (the browser's word is not taken), puts the card on file and charges the amount to it
    once; ``state`` succeeded (credited), failed (declined), or pending (Stripe's answer
    not known yet: the periodic job finishes it). 409 ``setup-not-succeeded`` if the card
    was not accepted."""
    services = card_services(request)
    link = await services.links.confirm(link_token(request))
    body = link_json(link, services.settings)
    return json_response({name: body[name] for name in ("state", "amount_yen", "failure")})


_STATES = ["awaiting-card", "pending", "succeeded", "failed", "abandoned"]
LINK: Schema = {
    "type": "object", "required": ["id", "account", "amount_yen", "client_secret", "state"],
    "properties": {
        "id": {"type": "integer"}, "account": {"type": "string"},
        "amount_yen": {"type": "integer"},
        "client_secret": {"type": "string", "description": "for Stripe.js on the top-up page"},
        "publishable_key": nullable({"type": "string"}),
        "link": nullable({"type": "string", "description": "the top-up page, to send: in "
                          "the reply that makes it only (the site keeps the token's SHA-256 "
                          "alone)"}),
        "requested_at": {"type": "string", "format": "date-time"},
        "state": {"enum": _STATES}, "topup_id": nullable({"type": "integer"}),
        "failure": nullable({"type": "string"})}}

OPERATIONS = tuple(replace(op, handler=database_errors_as_503(op.handler)) for op in (
    Operation("POST", "/v1/billing/accounts/{account}/topup-links", post_link,
              "A link to the top-up page for an amount paid by a card typed in", TAG,
              {201: Reply("the link, with what the top-up page needs", LINK)},
              access=MERCHANT, params=(ACCOUNT_PARAM,), body=TOPUP_BODY,
              errors={400: ("invalid-field",), **STRIPE_DOWN}),
    Operation("GET", "/v1/billing/topup-links/{link_id}", get_link, "A top-up link", TAG,
              {200: Reply("the link and its top-up's state", LINK)}, access=MERCHANT,
              params=(Param("link_id", "path", {"type": "integer", "minimum": 1}),),
              errors={404: ("not-found",), **UNAVAILABLE}),
    Operation("POST", "/v1/billing/topup-links/{token}/confirm", post_confirm,
              "The top-up page's SetupIntent confirmed: ask Stripe, charge the amount once",
              TAG, {200: Reply("the top-up's state", {
                  "type": "object", "required": ["state", "amount_yen"],
                  "properties": {"state": {"enum": _STATES[1:]},
                                 "amount_yen": {"type": "integer"},
                                 "failure": nullable({"type": "string"})}})},
              params=(TOKEN_PARAM,), body_required=False,
              errors={400: ("invalid-field",), 404: ("not-found",),
                      409: ("setup-not-succeeded",), **STRIPE_DOWN}),
))
