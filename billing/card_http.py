"""The card routes of the billing API (mounted by :func:`install` when ``[billing.stripe]``
is set), Stripe's webhook and the periodic job.

Merchant bearer token:

* ``POST /v1/billing/accounts/{account}/cards``: register a card (a SetupIntent): the
  client secret and publishable key a card page needs, and the link to send
* ``GET /v1/billing/card-registrations/{id}``, ``POST …/{id}/confirm`` (ask Stripe)
* ``POST /v1/billing/accounts/{account}/card-topups``: top the prepaid balance up from the
  card on file (201 recorded, 202 Stripe's answer not known yet)
* ``GET /v1/billing/card-topups/{id}``: its state
* ``GET /v1/billing/accounts/{account}/postpaid``: card on file, unpaid charges, dunning
* ``POST /v1/billing/postpaid-charges/{id}/retry``: try a charge in dunning again now
* ``POST /v1/billing/postpaid-charges/{id}/close``: paid another way, or written off
* ``GET /v1/billing/notices``: the dunning notices, oldest first

Public: ``GET /v1/billing/card-setup/{token}`` (what the card page behind the link
needs), ``POST /v1/billing/card-setup/{token}/confirm`` (the card page, once Stripe.js
confirmed the SetupIntent: the site asks Stripe itself) and ``POST
/v1/billing/stripe/webhook`` (Stripe's signature checked with the endpoint's secret; each
event applied once).

The job (every ``[billing] every_s``): the postpaid retries due, the top-up links whose
card is on file charged if they were not (:meth:`billing.topup_links.TopUpLinks.charge_due`),
the top-ups and
postpaid attempts left without Stripe's answer for ``reconcile_after_s`` reconciled, and
the Stripe event ids older than 30 days forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import stripe
from aiohttp import web

from billing.card_topups import CardTopUps, Result, TopUp
from billing.cards import Cards, Registration
from billing.http import ACCOUNT_PARAM, TAG, UNAVAILABLE, account_param, id_param
from billing.ledger import MAX_AMOUNT_YEN, LedgerError, find_account
from billing.postpaid import NoticeSink, Postpaid
from billing.settings import BillingSettings
from billing.standing import (
    CLOSURES,
    Charge,
    card_on_file,
    charges,
    close,
    notices,
    parse_close,
    standing,
    standing_json,
)
from billing.stripe_payments import Pending
from billing.topup_links import TopUpLinks
from shared.http import (
    ApiError,
    InvalidField,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    query_int,
    read_json_object,
    require_str,
    started,
)
from shared.money import FxTable
from shared.openapi import (
    MERCHANT,
    TIMESTAMP,
    Operation,
    Param,
    Reply,
    Schema,
    add_operations,
    nullable,
    string,
)
from shared.site import background

log = logging.getLogger("billing.cards")


@dataclass(frozen=True, slots=True)
class CardServices:
    cards: Cards
    topups: CardTopUps
    postpaid: Postpaid
    settings: BillingSettings
    links: TopUpLinks


SERVICES_KEY = web.AppKey("billing_card_services", CardServices)


def install(app: web.Application, pool: Callable[[web.Application], asyncpg.Pool],
            settings: BillingSettings, *, fx: FxTable | None = None,
            notices: NoticeSink | None = None) -> None:
    """The card routes and webhook, and (in ``cleanup_ctx``, after the site's database)
    the services on its pool and the periodic job; ``notices``: where the dunning notices
    go besides ``billing_notices``."""
    assert settings.stripe is not None
    stripe_settings = settings.stripe
    add_operations(app, OPERATIONS)

    async def cards_ctx(app: web.Application) -> AsyncIterator[None]:
        client = stripe_settings.client()
        p = pool(app)
        cards, topups = Cards(p, client), CardTopUps(p, client)
        services = CardServices(cards, topups,
                                Postpaid(p, client, retry_after_s=settings.retry_after_s, fx=fx,
                                         notices=notices),
                                settings, TopUpLinks(cards, topups))
        app[SERVICES_KEY] = services
        async with background(periodic(services), "billing card job"):
            yield

    app.cleanup_ctx.append(cards_ctx)


#: how long a Stripe event id is kept to answer its replays (Stripe retries an event for
#: up to three days)
EVENTS_KEPT_S = 30 * 86400


async def run_once(services: CardServices) -> None:
    """The retries due, the top-up links left uncharged, then the reconciles, then the
    event ids past keeping."""
    after = services.settings.reconcile_after_s
    await services.postpaid.run_due()
    await services.links.charge_due()
    await services.postpaid.reconcile(older_than_s=after)
    await services.topups.reconcile(older_than_s=after)
    await services.postpaid.pool.execute(
        "DELETE FROM billing_stripe_events WHERE received_at < now() - make_interval(secs "
        "=> $1)", EVENTS_KEPT_S)


async def periodic(services: CardServices) -> None:
    while True:
        try:
            await run_once(services)
        except Exception:       # Stripe or the database away: the next round tries again
            log.exception("billing card job failed; next in %d s", services.settings.every_s)
        await asyncio.sleep(services.settings.every_s)


def card_services(request: web.Request) -> CardServices:
    return started(request, SERVICES_KEY, "billing-unavailable")


def merchant_services(request: web.Request) -> tuple[CardServices, str]:
    """The services, and the merchant whose bearer token the request has."""
    merchant_id = authenticated_merchant(request)
    return card_services(request), merchant_id


def only_fields(data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for name in data:
        if name not in allowed:
            raise InvalidField(name, f"unknown field (expected {', '.join(allowed)})")


def registration_json(reg: Registration, settings: BillingSettings) -> dict[str, Any]:
    page = settings.card_page_url
    return {"id": reg.id, "account": reg.account, "customer": reg.customer,
            "setup_intent": reg.setup_intent, "client_secret": reg.client_secret,
            "publishable_key": settings.stripe.publishable_key if settings.stripe else None,
            "link": page.replace("{token}", reg.link_token)
            if page and reg.link_token else None,
            "requested_at": reg.requested_at.isoformat(),
            "state": "on-file" if reg.payment_method else "awaiting-card",
            "payment_method": reg.payment_method,
            "confirmed_at": reg.confirmed_at.isoformat() if reg.confirmed_at else None}


def topup_json(topup: TopUp, result: Result | None) -> dict[str, Any]:
    return {"id": topup.id, "account": topup.account, "amount_yen": topup.amount_yen,
            "requested_by": topup.requested_by,
            "state": result.outcome if result else "pending",
            "payment_intent": result.payment_intent if result else None,
            "failure": (result.failure or None) if result else None,
            "transaction_id": result.transaction_id if result else None}


async def post_card(request: web.Request) -> web.Response:
    """Register a card for the account: a Stripe SetupIntent for off-session use. The
    card page confirms it with Stripe.js (``client_secret``, ``publishable_key``); the
    ``link`` (``[billing] card_page_url``) can be sent to the customer."""
    services, merchant = merchant_services(request)
    account = account_param(request)
    data = await read_json_object(request)
    only_fields(data, ("by",))
    reg = await services.cards.register(merchant, account,
                                        by=require_str(data, "by", max_len=128))
    return json_response(registration_json(reg, services.settings), status=201)


async def get_registration(request: web.Request) -> web.Response:
    """A card registration: awaiting the card, or on file."""
    services, merchant = merchant_services(request)
    reg = await services.cards.get(merchant, id_param(request, "registration_id"))
    return json_response(registration_json(reg, services.settings))


async def post_confirm(request: web.Request) -> web.Response:
    """Ask Stripe whether the SetupIntent succeeded and put the card on file if it did
    (the ``setup_intent.succeeded`` webhook does the same)."""
    services, merchant = merchant_services(request)
    reg = await services.cards.confirm(merchant, id_param(request, "registration_id"))
    return json_response(registration_json(reg, services.settings))


async def get_card_setup(request: web.Request) -> web.Response:
    """What the card page behind a registration's link needs to confirm it."""
    services = card_services(request)
    reg = await services.cards.by_token(link_token(request))
    settings = services.settings
    return json_response({
        "client_secret": reg.client_secret,
        "publishable_key": settings.stripe.publishable_key if settings.stripe else None,
        "state": "on-file" if reg.payment_method else "awaiting-card"})


def link_token(request: web.Request) -> str:
    """The ``{token}`` of a card page's link; 400 ``invalid-field`` if it cannot be one."""
    token = request.match_info["token"]
    if not 16 <= len(token) <= 128:
        raise InvalidField("token", "expected 16..128 characters")
    return token


async def post_card_setup_confirm(request: web.Request) -> web.Response:
    """The card page says Stripe.js confirmed the SetupIntent: the site asks Stripe
    (the browser's word is not taken) and puts the card on file if it succeeded; 409
    ``setup-not-succeeded`` if not."""
    services = card_services(request)
    reg = await services.cards.by_token(link_token(request))
    reg = await services.cards.confirm(reg.merchant_id, reg.id)
    return json_response({"state": "on-file" if reg.payment_method else "awaiting-card"})


async def read_topup(request: web.Request) -> tuple[int, str]:
    """``amount_yen`` and ``by`` of a top-up's body (``TOPUP_BODY``); 400
    ``invalid-field`` naming the field otherwise."""
    data = await read_json_object(request)
    only_fields(data, ("amount_yen", "by"))
    amount = data.get("amount_yen")
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT_YEN:
        raise InvalidField("amount_yen", f"expected an integer 1..{MAX_AMOUNT_YEN}")
    return amount, require_str(data, "by", max_len=128)


async def post_topup(request: web.Request) -> web.Response:
    """Top the account's prepaid balance up from its card on file: 201 with the outcome
    (succeeded with its deposit, or failed), 202 while Stripe's answer is not known (the
    periodic job reconciles it); 409 ``no-card`` without a card on file."""
    services, merchant = merchant_services(request)
    account = account_param(request)
    amount, by = await read_topup(request)
    pool = services.topups.pool
    acc = await find_account(pool, merchant, account)
    card = None if acc is None else await card_on_file(pool, acc)
    if card is None:
        raise LedgerError(409, "no-card", f"account {account!r} has no card on file")
    topup = await services.topups.request(merchant, account, amount, customer=card.customer,
                                          payment_method=card.payment_method, by=by)
    try:
        result = await services.topups.charge(topup.id)
    except Pending:
        return json_response(topup_json(topup, None), status=202)
    return json_response(topup_json(topup, result), status=201)


async def get_topup(request: web.Request) -> web.Response:
    """A card top-up: pending, succeeded (with its deposit), failed or abandoned."""
    services, merchant = merchant_services(request)
    topup, result = await services.topups.get(merchant, id_param(request, "topup_id"))
    return json_response(topup_json(topup, result))


async def get_postpaid(request: web.Request) -> web.Response:
    """The account's postpaid standing (card on file, unpaid charges, dunning) and its
    charges, oldest first."""
    services, merchant = merchant_services(request)
    account = account_param(request)
    pool = services.postpaid.pool
    now = await standing(pool, merchant, account)
    return json_response(standing_json(account, now, await charges(pool, merchant, account)))


async def post_retry(request: web.Request) -> web.Response:
    """Try a charge in dunning again now, with the card on file now (after the customer
    registered another card); a charge paid or pending is returned as it is."""
    services, merchant = merchant_services(request)
    try:
        charge: Charge = await services.postpaid.retry(merchant, id_param(request, "charge_id"))
    except Pending:
        raise ApiError(503, "stripe-unavailable", "Stripe's answer is not known yet; the "
                       "periodic job finishes the attempt", retry_after_s=60) from None
    return json_response(charge.to_json())


async def post_close(request: web.Request) -> web.Response:
    """Close a charge in dunning: paid another way (``paid-elsewhere``) or
    ``written-off``, saying who and why; it no longer counts as unpaid nor is retried."""
    services, merchant = merchant_services(request)
    charge_id = id_param(request, "charge_id")
    closing = parse_close(await read_json_object(request))
    charge = await close(services.postpaid.pool, merchant, charge_id, closing.how,
                         by=closing.by, reason=closing.reason)
    return json_response(charge.to_json())


async def get_notices(request: web.Request) -> web.Response:
    """Dunning notices (a charge failed; a charge in dunning was paid), oldest first."""
    services, merchant = merchant_services(request)
    after_id = query_int(request.query, "after_id", low=0, high=10**18, default=0)
    limit = query_int(request.query, "limit", low=1, high=1000, default=100)
    items = await notices(services.postpaid.pool, merchant, after_id=after_id, limit=limit)
    return json_response({"items": items,
                          "next_after_id": items[-1]["id"] if items else after_id})


async def post_webhook(request: web.Request) -> web.Response:
    """A Stripe event, its ``Stripe-Signature`` checked with the endpoint's secret:
    PaymentIntents of top-ups and postpaid charges (succeeded, failed) are recorded,
    a SetupIntent that succeeded puts its card on file. An event already applied is
    answered 200 and not applied again."""
    services = card_services(request)
    secret = services.settings.stripe.webhook_secret if services.settings.stripe else None
    if secret is None:
        raise ApiError(404, "webhook-disabled", "no [billing.stripe] webhook_secret")
    payload = await request.read()
    try:
        event = stripe.Webhook.construct_event(
            payload.decode(), request.headers.get("Stripe-Signature", ""), secret)
    except (ValueError, stripe.SignatureVerificationError) as exc:
        raise ApiError(400, "invalid-signature",
                       f"not a Stripe event signed with this endpoint's secret: {exc}"
                       [:300]) from None
    pool = services.postpaid.pool
    try:
        event_id, kind, obj = str(event["id"]), str(event["type"]), event["data"]["object"]
        if await pool.fetchval("SELECT 1 FROM billing_stripe_events WHERE event_id = $1",
                               event_id):
            return json_response({"event": event_id, "applied": False, "replay": True})
        applied = await _apply(services, kind, obj)
    except Pending:     # still processing at Stripe: a later event or the job records it
        return json_response({"event": event_id, "applied": False, "replay": False})
    except (KeyError, TypeError, AttributeError) as exc:    # signed, yet not as Stripe's
        raise ApiError(400, "invalid-event", f"the event lacks {exc}"[:300]) from None
    await pool.execute("INSERT INTO billing_stripe_events (event_id, type) VALUES ($1, $2) "
                       "ON CONFLICT (event_id) DO NOTHING", event_id, kind)
    return json_response({"event": event_id, "applied": applied, "replay": False})


async def _apply(services: CardServices, kind: str, obj: Any) -> bool:
    if kind.startswith("payment_intent."):
        return (await services.topups.apply_intent(obj) is not None
                or await services.postpaid.apply_intent(obj) is not None)
    if kind == "setup_intent.succeeded" and obj.payment_method:
        reg = await services.cards.confirmed(str(obj.id), str(obj.payment_method))
        if reg is None:
            return False
        await services.links.charge(reg)     # a top-up link's amount, charged once
        return True
    return False


_ID = {"type": "integer", "minimum": 1}
_YEN = {"type": "integer"}
_TEXT = {"type": "string"}
STRIPE_DOWN = {503: (*UNAVAILABLE[503], "stripe-unavailable")}
REGISTRATION: Schema = {
    "type": "object",
    "required": ["id", "account", "customer", "setup_intent", "client_secret", "state"],
    "properties": {
        "id": _ID, "account": _TEXT, "customer": _TEXT, "setup_intent": _TEXT,
        "client_secret": {"type": "string",
                          "description": "for Stripe.js on the card page (confirmCardSetup)"},
        "publishable_key": nullable(_TEXT),
        "link": nullable({"type": "string",
                           "description": "the card page for this registration, to send: "
                                          "in the reply that makes it only (the site "
                                          "keeps the token's SHA-256 alone)"}),
        "requested_at": TIMESTAMP, "state": {"enum": ["awaiting-card", "on-file"]},
        "payment_method": nullable(_TEXT), "confirmed_at": nullable(TIMESTAMP)}}
TOPUP: Schema = {
    "type": "object", "required": ["id", "account", "amount_yen", "state"],
    "properties": {"id": _ID, "account": _TEXT, "amount_yen": _YEN, "requested_by": _TEXT,
                   "state": {"enum": ["pending", "succeeded", "failed", "abandoned"]},
                   "payment_intent": nullable(_TEXT), "failure": nullable(_TEXT),
                   "transaction_id": nullable(_ID)}}
CHARGE: Schema = {
    "type": "object", "required": ["id", "consultation_id", "total_yen", "state"],
    "properties": {"id": _ID, "account": _TEXT, "consultation_id": _TEXT, "talk_s": _YEN,
                   "billed_s": _YEN, "total_yen": _YEN, "tax_yen": _YEN,
                   "requested_at": TIMESTAMP, "attempts": _YEN,
                   "state": {"enum": ["pending", "paid", "failed", "closed"]},
                   "payment_intent": nullable(_TEXT), "failure": nullable(_TEXT),
                   "closed": nullable({"enum": list(CLOSURES)})}}
#: a card page link's token
TOKEN_PARAM = Param("token", "path", string(128, 16))
BY_BODY: Schema = {"type": "object", "additionalProperties": False, "required": ["by"],
                   "properties": {"by": string(128, description="who asks")}}
TOPUP_BODY: Schema = {
    "type": "object", "additionalProperties": False, "required": ["amount_yen", "by"],
    "properties": {"amount_yen": {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT_YEN},
                   "by": string(128, description="who asks")}}
CLOSE_BODY: Schema = {
    "type": "object", "additionalProperties": False, "required": ["how", "by", "reason"],
    "properties": {"how": {"enum": list(CLOSURES)}, "by": string(128, description="who"),
                   "reason": string(500, description="why")}}
WEBHOOK_REPLY: Schema = {"type": "object", "required": ["event", "applied", "replay"],
                         "properties": {"event": _TEXT, "applied": {"type": "boolean"},
                                        "replay": {"type": "boolean"}}}

OPERATIONS = tuple(replace(op, handler=database_errors_as_503(op.handler)) for op in (
    Operation("POST", "/v1/billing/accounts/{account}/cards", post_card,
              "Register a card on file (a Stripe SetupIntent)", TAG,
              {201: Reply("the registration, with what the card page needs",
                          REGISTRATION)},
              access=MERCHANT, params=(ACCOUNT_PARAM,), body=BY_BODY,
              errors={400: ("invalid-field",), **STRIPE_DOWN}),
    Operation("GET", "/v1/billing/card-registrations/{registration_id}", get_registration,
              "A card registration", TAG, {200: Reply("the registration", REGISTRATION)},
              access=MERCHANT, params=(Param("registration_id", "path", _ID),),
              errors={404: ("not-found",), **UNAVAILABLE}),
    Operation("POST", "/v1/billing/card-registrations/{registration_id}/confirm",
              post_confirm, "Put the card on file once its SetupIntent succeeded", TAG,
              {200: Reply("the registration, on file", REGISTRATION)}, access=MERCHANT,
              params=(Param("registration_id", "path", _ID),), body_required=False,
              errors={404: ("not-found",), 409: ("setup-not-succeeded",), **STRIPE_DOWN}),
    Operation("GET", "/v1/billing/card-setup/{token}", get_card_setup,
              "What the card page behind a registration's link needs", TAG,
              {200: Reply("the SetupIntent's client secret", {
                  "type": "object", "required": ["client_secret", "state"],
                  "properties": {"client_secret": _TEXT, "publishable_key": nullable(_TEXT),
                                 "state": {"enum": ["awaiting-card", "on-file"]}}})},
              params=(TOKEN_PARAM,),
              errors={400: ("invalid-field",), 404: ("not-found",), **UNAVAILABLE}),
    Operation("POST", "/v1/billing/card-setup/{token}/confirm", post_card_setup_confirm,
              "The card page's SetupIntent confirmed: ask Stripe, put the card on file", TAG,
              {200: Reply("the card is on file", {
                  "type": "object", "required": ["state"],
                  "properties": {"state": {"enum": ["on-file"]}}})},
              params=(TOKEN_PARAM,), body_required=False,
              errors={400: ("invalid-field",), 404: ("not-found",),
                      409: ("setup-not-succeeded",), **STRIPE_DOWN}),
    Operation("POST", "/v1/billing/accounts/{account}/card-topups", post_topup,
              "Top the prepaid balance up from the card on file", TAG,
              {201: Reply("charged (succeeded, with its deposit) or failed", TOPUP),
               202: Reply("recorded; Stripe's answer not known yet", TOPUP)},
              access=MERCHANT, params=(ACCOUNT_PARAM,), body=TOPUP_BODY,
              errors={400: ("invalid-field",), 409: ("no-card",), **UNAVAILABLE}),
    Operation("GET", "/v1/billing/card-topups/{topup_id}", get_topup, "A card top-up", TAG,
              {200: Reply("its state", TOPUP)}, access=MERCHANT,
              params=(Param("topup_id", "path", _ID),),
              errors={404: ("not-found",), **UNAVAILABLE}),
    Operation("GET", "/v1/billing/accounts/{account}/postpaid", get_postpaid,
              "A postpaid account's card, unpaid charges and dunning", TAG,
              {200: Reply("the standing and the charges", {
                  "type": "object",
                  "required": ["account", "has_card", "unpaid", "in_dunning", "charges"],
                  "properties": {"account": _TEXT, "has_card": {"type": "boolean"},
                                 "unpaid": _YEN, "in_dunning": {"type": "boolean"},
                                 "charges": {"type": "array", "items": CHARGE}}})},
              access=MERCHANT, params=(ACCOUNT_PARAM,), errors=UNAVAILABLE),
    Operation("POST", "/v1/billing/postpaid-charges/{charge_id}/retry", post_retry,
              "Try a charge in dunning again now", TAG,
              {200: Reply("the charge after the attempt", CHARGE)}, access=MERCHANT,
              params=(Param("charge_id", "path", _ID),), body_required=False,
              errors={404: ("not-found",), **STRIPE_DOWN}),
    Operation("POST", "/v1/billing/postpaid-charges/{charge_id}/close", post_close,
              "Close a charge in dunning (paid another way, or written off)", TAG,
              {200: Reply("the charge, closed", CHARGE)}, access=MERCHANT,
              params=(Param("charge_id", "path", _ID),), body=CLOSE_BODY,
              errors={400: ("invalid-field",), 404: ("not-found",),
                      409: ("charge-not-in-dunning",), **UNAVAILABLE}),
    Operation("GET", "/v1/billing/notices", get_notices, "Dunning notices", TAG,
              {200: Reply("oldest first", {
                  "type": "object", "required": ["items", "next_after_id"],
                  "properties": {"items": {"type": "array", "items": {
                      "type": "object", "properties": {
                          "id": _ID, "account": _TEXT,
                          "kind": {"enum": ["charge-failed", "charge-recovered"]},
                          "charge_id": _ID, "detail": _TEXT, "created_at": TIMESTAMP}}},
                      "next_after_id": {"type": "integer"}}})},
              access=MERCHANT,
              params=(Param("after_id", "query", {"type": "integer", "minimum": 0}),
                      Param("limit", "query", {"type": "integer", "minimum": 1,
                                               "maximum": 1000})),
              errors=UNAVAILABLE),
    Operation("POST", "/v1/billing/stripe/webhook", post_webhook, "Stripe's events", TAG,
              {200: Reply("applied, or a replay of an event already applied",
                          WEBHOOK_REPLY)},
              params=(Param("Stripe-Signature", "header", _TEXT,
                            "t=<unix>,v1=<HMAC-SHA256 of t.payload with the secret>",
                            required=True),),
              body={"type": "object", "description": "a Stripe event"},
              errors={400: ("invalid-signature", "invalid-event"), 404: ("webhook-disabled",),
                      **UNAVAILABLE}),
))
