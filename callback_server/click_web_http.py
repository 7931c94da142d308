"""The public routes behind the customer's click-to-call page (``GET
/m/{merchant}/advisors``, :mod:`web.click_page`). No merchant token: the page is public,
so the site never rings a number its holder has not shown they hold.

* ``GET /v1/m/{merchant}/advisors``: the merchant's advisors as customers see them: id,
  display name, price per minute (tax included, yen) and ``available`` (standby with a
  free line), ``talking`` (a call in progress) or ``offline`` (anything else)
* ``POST /v1/m/{merchant}/phone-codes`` ``{"number"}``: a one-time code to the number by
  SMS, a Japanese mobile only (:mod:`callback_server.click_verify`: rate-limited per
  number and per client address; 202)
* ``POST /v1/m/{merchant}/phone-verifications`` ``{"number", "code"}``: the right code sets
  the caller cookie :data:`COOKIE` (HttpOnly, SameSite=Strict, Secure over TLS) of a
  verified session and answers its CSRF token; three wrong ones lock the number
* ``POST /v1/m/{merchant}/calls`` ``{"advisor_id"}`` (the cookie, ``X-CSRF-Token``): the
  verified number's call with the advisor, through the path ``POST /v1/consultations``
  takes (:func:`callback_server.click_http.click_to_call`: the advisor, the guard,
  billing's admission; its 4xx as they are), rate-limited per number and client (202)
* ``GET /v1/m/{merchant}/calls/{callback_id}`` (the cookie): the call's progress:
  ``calling`` (the customer's phone is being rung), ``connecting`` (the advisor's),
  ``talking``, ``ended`` (with the consultation's ``end_reason`` once recorded)

Errors besides those of :mod:`callback_server.click_verify` and ``click_http``: 404
``not-found`` (no such merchant here), 401 ``verification-required`` (no verified
session for this merchant), 403 ``csrf-invalid``, 403 ``cross-site-request`` (a POST
another site's page made: it would spend the SMS of a code from its visitors' addresses,
or open a session in their browsers; :func:`shared.browser_session.refuse_cross_site`),
503 ``sms-unavailable`` (no ``[sms]``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from aiohttp import web

from advisors.live import utcnow
from advisors.records import MAX_INT
from advisors.store import AdvisorStore
from callback_server.click_http import (
    CLICK_KEY,
    ClickIntake,
    ClickRequest,
    click_to_call,
    consultation_id,
    parse_advisor_id,
)
from callback_server.click_verify import VERIFIED_S, PhoneCodes, Verified
from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_store import check_message
from shared.browser_session import CROSS_SITE, refuse_cross_site
from shared.client_address import client_address
from shared.config import Merchant
from shared.http import (
    ApiError,
    InvalidField,
    ServiceUnavailable,
    database_errors_as_503,
    json_response,
    read_json_object,
    started,
)
from shared.language import Language
from shared.openapi import Operation, Param, Reply, Schema, add_operations, string
from shared.phone import E164, InvalidNumber, normalise

COOKIE = "cbgw_caller"
CSRF_HEADER = "X-CSRF-Token"
#: the only numbers a code is sent to: the customers are in Japan, and a page that sent
#: codes anywhere would pay for SMS to numbers abroad whose operators share the fee
SMS_REGION = "JP"
SMS_KEY: web.AppKey[SmsSettings | None] = web.AppKey("click_web_sms")
#: what the SMS says ({merchant}, {code})
SMS_TEXT = {Language.JAPANESE: "【{merchant}】確認コード: {code}（5分間有効）",
            Language.ENGLISH: "{merchant}: your code is {code} (valid 5 minutes)"}


def install(app: web.Application, sms: SmsSettings | None) -> None:
    """The routes, on an app with :func:`callback_server.click_http.install`."""
    app[SMS_KEY] = sms
    add_operations(app, OPERATIONS)


def merchant_of(request: web.Request) -> tuple[ClickIntake, Merchant]:
    intake = started(request, CLICK_KEY, "database-unavailable")
    merchant = intake.merchants.get(request.match_info["merchant"])
    if merchant is None:
        raise ApiError(404, "not-found", "no such merchant")
    return intake, merchant


def _number(data: dict[str, Any]) -> E164:
    number = data.get("number")
    if not isinstance(number, str) or len(number) > 32:
        raise InvalidField("number", "expected a phone number")
    try:
        return normalise(number)
    except InvalidNumber as exc:
        raise InvalidField("number", str(exc)) from None


def _only(data: dict[str, Any], fields: tuple[str, ...]) -> None:
    unknown = set(data) - set(fields)
    if unknown:
        raise InvalidField(min(unknown), "unknown field")


async def verified_of(request: web.Request, intake: ClickIntake, merchant: Merchant
                      ) -> Verified:
    token = request.cookies.get(COOKIE, "")
    verified = await PhoneCodes(intake.store.pool).verified(merchant.id, token, utcnow()) \
        if token else None
    if verified is None:
        raise ApiError(401, "verification-required", "verify your phone number first")
    return verified


def availability(state: str, takes_offer: bool) -> str:
    if takes_offer:
        return "available"
    return "talking" if state in ("ringing", "talking") else "offline"


async def advisors_of(intake: ClickIntake, merchant: Merchant) -> list[dict[str, Any]]:
    """The merchant's advisors as customers see them."""
    return [{"id": a.id, "display_name": a.display_name,
             "price_per_minute_yen": a.price_per_minute_yen,
             "availability": availability(p.state.value, p.takes_offer())}
            for a, p in await AdvisorStore(intake.store.pool).advisors(merchant.id)]


async def get_advisors(request: web.Request) -> web.Response:
    """The merchant's advisors, their prices and whether they take a call now."""
    intake, merchant = merchant_of(request)
    return json_response({"advisors": await advisors_of(intake, merchant)},
                         headers={"Cache-Control": "no-store"})


async def post_phone_code(request: web.Request) -> web.Response:
    """Send a one-time code to the number by SMS."""
    refuse_cross_site(request)
    intake, merchant = merchant_of(request)
    data = await read_json_object(request)
    _only(data, ("number",))
    number = _number(data)
    sms = request.app[SMS_KEY]
    if sms is None:
        raise ServiceUnavailable("sms-unavailable", "no SMS provider configured", 60)
    if number.region != SMS_REGION:     # SMS pumping: codes to dear foreign numbers
        raise InvalidField("number", "a Japanese mobile number is expected")
    text = SMS_TEXT[merchant.language].replace("{merchant}", merchant.name)
    try:
        check_message(number, text)
    except ValueError as exc:       # a number that takes no SMS (a landline)
        raise InvalidField("number", str(exc)) from None
    await PhoneCodes(intake.store.pool).send(
        merchant.id, number, client_address(request), str(sms.sender_for(merchant.id)),
        text, "twilio", utcnow())
    return json_response({"number": str(number), "sent": True}, 202)


async def post_verification(request: web.Request) -> web.Response:
    """The code sent: a verified session (cookie) and its CSRF token."""
    refuse_cross_site(request)
    intake, merchant = merchant_of(request)
    data = await read_json_object(request)
    _only(data, ("number", "code"))
    number = _number(data)
    code = data.get("code")
    if not isinstance(code, str) or not (code.isascii() and code.isdigit()
                                         and len(code) == 6):
        raise InvalidField("code", "expected the 6 digits sent")
    opened = await PhoneCodes(intake.store.pool).verify(merchant.id, number, code, utcnow())
    response = json_response({"number": str(number), "csrf": opened.verified.csrf_token,
                              "expires_at": opened.verified.expires_at.isoformat()})
    response.set_cookie(COOKIE, opened.token, max_age=VERIFIED_S, path="/", httponly=True,
                        secure=request.secure, samesite="Strict")
    return response


async def post_call(request: web.Request) -> web.Response:
    """The verified number's call with the advisor (as ``POST /v1/consultations``)."""
    refuse_cross_site(request)
    intake, merchant = merchant_of(request)
    verified = await verified_of(request, intake, merchant)
    if not verified.csrf_ok(request.headers.get(CSRF_HEADER, "")):
        raise ApiError(403, "csrf-invalid", f"{CSRF_HEADER} is missing or wrong")
    data = await read_json_object(request)
    _only(data, ("advisor_id",))
    advisor_id = parse_advisor_id(data.get("advisor_id"))
    codes, client, now = PhoneCodes(intake.store.pool), client_address(request), utcnow()
    asked = await codes.call_asked(verified, client, now)
    stored = await click_to_call(intake, merchant, ClickRequest(
        verified.number, advisor_id, None, None))
    await codes.called(asked, stored.callback_id)
    return json_response({"callback_id": stored.callback_id,
                          "consultation_id": consultation_id(stored.callback_id),
                          "advisor_id": stored.advisor_id, "progress": "calling"}, 202)


_PROGRESS = """
    SELECT r.status, c.end_reason, p.sessions
    FROM callback_requests r
    JOIN click_to_call_requests k ON k.callback_id = r.callback_id
    LEFT JOIN consultations c ON c.consultation_id = $2
    LEFT JOIN advisor_presence p ON p.advisor_id = k.advisor_id
    WHERE r.callback_id = $1"""


def progress(status: str, end_reason: str | None, sessions: list[dict[str, Any]],
             consultation: str) -> str:
    """calling, connecting, talking or ended, from the job, the advisor's sessions and
    the consultation's record."""
    if end_reason is not None or status in ("completed", "failed"):
        return "ended"
    mine = [s for s in sessions if s["consultation_id"] == consultation]
    if mine:
        return "talking" if mine[0]["answered"] else "connecting"
    return "calling"


async def get_call(request: web.Request) -> web.Response:
    """How the verified number's call is going."""
    intake, merchant = merchant_of(request)
    verified = await verified_of(request, intake, merchant)
    callback_id = request.match_info["callback_id"]
    codes = PhoneCodes(intake.store.pool)
    if len(callback_id) > 64 or not await codes.call_of(verified, callback_id):
        raise ApiError(404, "not-found", "no such call of this number")
    consultation = consultation_id(callback_id)
    row = await intake.store.pool.fetchrow(_PROGRESS, callback_id, consultation)
    if row is None:
        raise ApiError(404, "not-found", "no such call of this number")
    sessions = row["sessions"]
    if isinstance(sessions, str):
        sessions = json.loads(sessions)
    return json_response({"callback_id": callback_id,
                          "progress": progress(row["status"], row["end_reason"],
                                               sessions or [], consultation),
                          "end_reason": row["end_reason"]})


# --- declarations --------------------------------------------------------------------------

_MERCHANT = Param("merchant", "path", string(64))
_T = "click-to-call page"
_NUMBER = string(32)
ADVISORS: Schema = {"type": "object", "properties": {"advisors": {"type": "array", "items": {
    "type": "object", "properties": {
        "id": {"type": "integer"}, "display_name": {"type": "string"},
        "price_per_minute_yen": {"type": "integer", "description": "tax included"},
        "availability": {"enum": ["available", "talking", "offline"]}}}}}}
PROGRESS: Schema = {"type": "object", "properties": {
    "callback_id": {"type": "string"},
    "progress": {"enum": ["calling", "connecting", "talking", "ended"]},
    "end_reason": {"type": ["string", "null"]}}}
_VERIFY = {401: ("verification-required",)}
OPERATIONS = tuple(replace(op, handler=database_errors_as_503(op.handler)) for op in (
    Operation("GET", "/v1/m/{merchant}/advisors", get_advisors,
              "The merchant's advisors as customers see them", _T,
              {200: Reply("the advisors", ADVISORS)}, params=(_MERCHANT,),
              errors={404: ("not-found",), 503: ("database-unavailable",)}),
    Operation("POST", "/v1/m/{merchant}/phone-codes", post_phone_code,
              "Send a one-time code to the customer's number by SMS", _T,
              {202: Reply("queued for sending", {"type": "object"})}, params=(_MERCHANT,),
              body={"type": "object", "required": ["number"],
                    "properties": {"number": _NUMBER}},
              errors={400: ("invalid-field",), 403: (CROSS_SITE,), 404: ("not-found",),
                      423: ("number-locked",), 429: ("rate-limited",),
                      503: ("sms-unavailable", "database-unavailable")}),
    Operation("POST", "/v1/m/{merchant}/phone-verifications", post_verification,
              "Verify the number with the code sent (sets the caller cookie)", _T,
              {200: Reply("verified: the CSRF token", {"type": "object", "properties": {
                  "number": {"type": "string"}, "csrf": {"type": "string"},
                  "expires_at": {"type": "string"}}})}, params=(_MERCHANT,),
              body={"type": "object", "required": ["number", "code"],
                    "properties": {"number": _NUMBER,
                                   "code": {"type": "string", "pattern": "^[0-9]{6}$"}}},
              errors={400: ("invalid-field", "code-wrong"), 403: (CROSS_SITE,),
                      404: ("not-found",),
                      410: ("code-expired",), 423: ("number-locked",),
                      503: ("database-unavailable",)}),
    Operation("POST", "/v1/m/{merchant}/calls", post_call,
              "Ask for a call between the verified number and an advisor", _T,
              {202: Reply("stored; the site calls the customer", {"type": "object"})},
              params=(_MERCHANT, Param(CSRF_HEADER, "header", string(64),
                                       "the verification's csrf")),
              body={"type": "object", "required": ["advisor_id"],
                    "properties": {"advisor_id": {"type": "integer", "minimum": 1,
                                                  "maximum": MAX_INT}}},
              errors={**_VERIFY, 400: ("invalid-field",), 402: ("billing-refused",),
                      403: ("csrf-invalid", "number-refused", CROSS_SITE),
                      404: ("not-found",),
                      409: ("advisor-unavailable",), 429: ("rate-limited",),
                      503: ("database-unavailable",)}),
    Operation("GET", "/v1/m/{merchant}/calls/{callback_id}", get_call,
              "How the verified number's call is going", _T,
              {200: Reply("its progress", PROGRESS)},
              params=(_MERCHANT, Param("callback_id", "path", string(64))),
              errors={**_VERIFY, 404: ("not-found",), 503: ("database-unavailable",)}),
))
