"""Web click-to-call in: ``POST /v1/consultations`` (the merchant's bearer token).

The body names the customer's number and the advisor picked, by id or 4-digit code::

    {"customer_number": "+819012345678", "advisor_id": 7}
    {"customer_number": "+819012345678", "advisor_code": "1234"}

Checked in this order, each refusal a 4xx JSON error naming the field or the reason:
the body (400 ``invalid-field``), the advisor (404 ``not-found``; 409
``advisor-unavailable`` with ``reason`` ``talking``, ``offline`` or ``away`` unless they
are in standby with a free line: :meth:`AdvisorDesk.choose`), the toll-fraud guard on the
customer's number (403 ``number-refused`` with the guard's ``reason``: lists, policy,
lock, brake, as before a round), billing's admission at the advisor's price (402
``billing-refused`` with ``reason``, ``available_yen``, ``needed_yen``). Then the request
is stored as a call-back job (:mod:`callback_server.store.click_store`) and answered 202
``{"consultation_id", "callback_id", "advisor_id", "status": "queued"}`` after the
commit: a worker claims it at once, and a restart before it dials still dials it (the job
stays queued, or its lease expires and it is rescued). ``Idempotency-Key`` (header, up to
128 printable characters): the same key again answers the first request's ids (and its
current ``status``) and queues nothing.

The round (:mod:`callback_server.click_runner`) dials both parties; the consultation's
record (method ``click_to_call``) is ``GET /v1/consultations/{consultation_id}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from advisors.records import MAX_INT
from callback_server.advisor_desk import AdvisorDesk, Unavailable
from callback_server.consult_billing import BillingPort
from callback_server.guard.service import Guard
from callback_server.store.click_store import ClickStore, StoredClick
from shared.config import Merchant
from shared.http import (
    ApiError,
    InvalidField,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    read_json_object,
    started,
)
from shared.openapi import MERCHANT, Operation, Param, Reply, Schema, add_operations
from shared.phone import E164, InvalidNumber

log = logging.getLogger("callback.click")

IDEMPOTENCY_KEY = re.compile(r"\A[\x21-\x7e]{1,128}\Z")
ADVISOR_CODE = re.compile(r"\A[0-9]{4}\Z")


@dataclass(frozen=True, slots=True)
class ClickIntake:
    """What the route checks with and stores into (the site's, once started)."""

    store: ClickStore
    desk: AdvisorDesk
    guard: Guard | None
    billing: BillingPort | None
    merchants: dict[str, Merchant]


@dataclass(frozen=True, slots=True)
class ClickRequest:
    customer: E164
    advisor_id: int | None
    advisor_code: str | None
    idempotency_key: str | None


CLICK_KEY: web.AppKey[ClickIntake] = web.AppKey("click_intake")


def install(app: web.Application, make: Callable[[web.Application], ClickIntake]) -> None:
    """The route, and (in ``cleanup_ctx``, after the database and the routing it uses)
    its :class:`ClickIntake`: 503 ``database-unavailable`` until then."""
    async def click_ctx(app: web.Application) -> AsyncIterator[None]:
        app[CLICK_KEY] = make(app)
        yield

    app.cleanup_ctx.append(click_ctx)
    add_operations(app, OPERATIONS)


def parse_advisor_id(value: object) -> int:
    """A body's ``advisor_id``: 400 ``invalid-field`` unless an integer 1..MAX_INT (one
    past it is no bigint for the database)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        raise InvalidField("advisor_id", f"expected an advisor id 1..{MAX_INT}")
    return value


def parse(data: dict[str, Any], idempotency_key: str | None) -> ClickRequest:
    unknown = set(data) - {"customer_number", "advisor_id", "advisor_code"}
    if unknown:
        raise InvalidField(min(unknown), "unknown field")
    number = data.get("customer_number")
    if not isinstance(number, str):
        raise InvalidField("customer_number", "expected an E.164 number")
    try:
        customer = E164.parse(number)
    except InvalidNumber as exc:
        raise InvalidField("customer_number", str(exc)) from None
    advisor_id, code = data.get("advisor_id"), data.get("advisor_code")
    if (advisor_id is None) == (code is None):
        raise InvalidField("advisor_id", "give exactly one of advisor_id and advisor_code")
    if advisor_id is not None:
        advisor_id = parse_advisor_id(advisor_id)
    if code is not None and (not isinstance(code, str) or not ADVISOR_CODE.match(code)):
        raise InvalidField("advisor_code", "expected the advisor's 4-digit code")
    if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
        raise InvalidField("Idempotency-Key", "1 to 128 printable ASCII characters")
    return ClickRequest(customer, advisor_id, code, idempotency_key)


async def request_click_to_call(request: web.Request) -> web.Response:
    merchant_id = authenticated_merchant(request)
    data = await read_json_object(request)
    click = parse(data, request.headers.get("Idempotency-Key"))
    intake = started(request, CLICK_KEY, "database-unavailable")
    merchant = intake.merchants.get(merchant_id)
    if merchant is None:
        raise ApiError(404, "not-found", f"merchant {merchant_id} is not configured here")
    stored = await click_to_call(intake, merchant, click)
    return json_response({"consultation_id": consultation_id(stored.callback_id),
                          "callback_id": stored.callback_id, "advisor_id": stored.advisor_id,
                          "status": stored.status}, status=202)


async def click_to_call(intake: ClickIntake, merchant: Merchant, click: ClickRequest
                        ) -> StoredClick:
    """The request checked (advisor, guard, billing: the 4xx saying which) and stored as
    a queued job; a repeat of its ``Idempotency-Key``: the first's."""
    stored = await _known(intake, merchant, click)
    if stored is None:
        try:
            advisor_id, known = await _admit(intake, merchant, click)
        except ApiError:
            # a repeat racing its first request is refused by what the first did (the
            # guard's count of it, the advisor rung): it gets the first's answer
            stored = await _known(intake, merchant, click)
            if stored is None:
                raise
        else:
            stored = await intake.store.store_click(merchant, click.customer, advisor_id,
                                                    click.idempotency_key, known)
        log.info("click-to-call %s %s: advisor %d", stored.callback_id,
                 "repeated" if stored.repeat else "queued", stored.advisor_id)
    return stored


async def _known(intake: ClickIntake, merchant: Merchant, click: ClickRequest
                 ) -> StoredClick | None:
    """The request stored under the request's ``Idempotency-Key`` (None: none, no key)."""
    if click.idempotency_key is None:
        return None
    return await intake.store.known_click(merchant.id, click.idempotency_key)


def consultation_id(callback_id: str) -> str:
    """The consultation of a click-to-call job: its round's one consultation (the
    ``ConsultRunner``'s first, ``<callback_id>-c1``)."""
    return f"{callback_id}-c1"


async def _admit(intake: ClickIntake, merchant: Merchant, click: ClickRequest
                 ) -> tuple[int, bool | None]:
    """The advisor's id, if they take calls now, the guard lets the number be dialled and
    billing admits the consultation at the advisor's price; else the 4xx saying which.
    With it, whether the guard knows the number (None: no guard here)."""
    field = "advisor_id" if click.advisor_id is not None else "advisor_code"
    chosen = await intake.desk.choose(merchant.id, code=click.advisor_code, group=None,
                                      advisor_id=click.advisor_id)
    if isinstance(chosen, Unavailable):
        if chosen.reason == "unknown":
            raise ApiError(404, "not-found", "no such advisor", field=field)
        raise ApiError(409, "advisor-unavailable",
                       f"the advisor does not take calls now ({chosen.reason})",
                       field=field, reason=chosen.reason)
    known: bool | None = None
    if intake.guard is not None:
        screening = await intake.guard.screen_click(click.customer, merchant.id)
        verdict, known = screening.verdict, screening.known
        if verdict is not None:
            raise ApiError(403, "number-refused",
                           f"the customer's number may not be called ({verdict.reason})",
                           field="customer_number", reason=str(verdict.reason))
    if intake.billing is not None:
        plan = await intake.billing.admit(merchant.id, click.customer,
                                          chosen.price_per_minute_yen)
        if not plan.admission.allowed:
            raise ApiError(402, "billing-refused",
                           f"billing does not admit the consultation ({plan.admission.reason})",
                           field="customer_number", reason=plan.admission.reason,
                           available_yen=plan.admission.available_yen,
                           needed_yen=plan.admission.needed_yen)
    assert chosen.advisor_id is not None
    return chosen.advisor_id, known


BODY: Schema = {
    "type": "object", "required": ["customer_number"], "additionalProperties": False,
    "properties": {"customer_number": {"type": "string", "pattern": r"^\+[1-9][0-9]{6,14}$"},
                   "advisor_id": {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                   "advisor_code": {"type": "string", "pattern": "^[0-9]{4}$"}},
    "oneOf": [{"required": ["advisor_id"]}, {"required": ["advisor_code"]}]}

QUEUED: Schema = {
    "type": "object", "required": ["consultation_id", "callback_id", "advisor_id", "status"],
    "additionalProperties": False,
    "properties": {"consultation_id": {"type": "string"}, "callback_id": {"type": "string"},
                   "advisor_id": {"type": "integer"},
                   "status": {"enum": ["queued", "dialing", "completed", "failed"]}}}

OPERATIONS = [
    Operation("POST", "/v1/consultations", database_errors_as_503(request_click_to_call),
              "Web click-to-call: dial the customer and the advisor picked, then bridge them",
              "advisors", {202: Reply("stored; the callback site dials both parties", QUEUED)},
              access=MERCHANT, body=BODY,
              params=(Param("Idempotency-Key", "header", {"type": "string", "maxLength": 128},
                            "the same key again answers the first request, queues nothing"),),
              errors={402: ("billing-refused",), 403: ("number-refused",),
                      404: ("not-found",), 409: ("advisor-unavailable",),
                      503: ("database-unavailable",)}),
]
