"""The billing API (JSON; the merchant's bearer token, :func:`shared.http.
authenticated_merchant`, selects the tenant).

* ``POST /v1/billing/bank-transfers``: enter a bank transfer as a deposit (201)
* ``GET /v1/billing/bank-transfers?after_id=&limit=``: the transfers entered, oldest first
* ``GET /v1/billing/reports/daily?date=``: a day's charges (tax per rate), money in and out
* ``GET /v1/billing/reservations/live``, ``POST /v1/billing/reservations/{id}/settle``:
  reservations not settled, and an operator settling one a call left live
* ``GET /v1/billing/consultations/{consultation_id}``: what billing made of a consultation
  (its prepaid reservation and settlement, its postpaid charge): the revenue beside the
  consultation record
* ``GET|PUT /v1/billing/groups/{group_id}/policy``: the fields an advisor group overrides
  of the merchant's policy (null: the merchant's) and the policy in force for it
* ``GET|PUT /v1/billing/policy``: the billing unit, grace, minimum, maximum length, tax
* ``POST /v1/billing/accounts/{account}/adjustments``: an operator's correction (201)
* ``POST /v1/billing/accounts/{account}/refunds``: charges given back (201)
* ``GET /v1/billing/accounts/{account}/balance``: available, held, total yen
* ``GET /v1/billing/accounts/{account}/ledger?after_id=&limit=``: the movements with legs

Error ids: ``invalid-field`` (400, with ``field``), ``invalid-json`` (400), ``not-found``
(404: no such account), ``duplicate-reference`` (409, field ``bank_reference``),
``insufficient-balance``, ``refund-exceeds-charges`` and ``already-settled`` (409),
``auth-*`` (401), ``billing-unavailable`` (503 before the database is connected),
``database-unavailable`` (503 while it is away).

:func:`install` mounts the routes and, in ``cleanup_ctx`` after the site's database, the
ledger on its pool, and sends the billing records whose customer leg's CDR did not come
within ``customer_leg_wait_s`` (:func:`billing.records.send_overdue`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import asyncpg
from aiohttp import web

from billing import policy, records, reports, transfers
from billing.consultation_charges import consultation_charges
from billing.ledger import (
    Balance,
    Ledger,
    LiveReservation,
    Movement,
    parse_correction,
    parse_operator_settle,
    settlement_json,
)
from billing.metrics import BILLING_STATE
from billing.metrics import billing as billing_metrics
from billing.settings import CUSTOMER_LEG_WAIT_S
from shared.http import (
    ApiError,
    InvalidField,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    query_int,
    read_json_object,
    started,
)
from shared.metrics_http import READINGS_KEY
from shared.money import FxTable
from shared.openapi import (
    MERCHANT,
    TIMESTAMP,
    Operation,
    Param,
    Reply,
    Schema,
    add_operations,
    string,
)
from shared.site import background

LEDGER_KEY = web.AppKey("billing_ledger", Ledger)
MAX_PAGE = 1000
MAX_ID = 10**18


def install(app: web.Application, pool: Callable[[web.Application], asyncpg.Pool], *,
            fx: FxTable | None = None,
            customer_leg_wait_s: int = CUSTOMER_LEG_WAIT_S) -> None:
    """``fx``: the site's FX table, for the billing records of settlements made here;
    ``customer_leg_wait_s``: how long a record waits for its customer leg's CDR
    (:func:`billing.records.send_overdue`, run in the background)."""
    add_operations(app, OPERATIONS)
    billing_metrics()  # its families are on /metrics before the first consultation
    if READINGS_KEY in app:  # the site serves /metrics
        app[READINGS_KEY].append(BILLING_STATE)

    async def billing_ctx(app: web.Application) -> AsyncIterator[None]:
        app[LEDGER_KEY] = Ledger(pool(app), fx=fx)
        async with background(records.send_overdue_forever(pool(app), customer_leg_wait_s),
                              "billing records past their customer leg's wait"):
            yield

    app.cleanup_ctx.append(billing_ctx)


def _ledger(request: web.Request) -> tuple[Ledger, str]:
    """The ledger and the caller's merchant (401 first, then 503 if not started)."""
    merchant_id = authenticated_merchant(request)
    return started(request, LEDGER_KEY, "billing-unavailable"), merchant_id


def account_param(request: web.Request) -> str:
    """The ``{account}`` of the path (400 ``invalid-field`` past 64 characters)."""
    account = request.match_info["account"]
    if not 1 <= len(account) <= 64:
        raise InvalidField("account", "expected 1..64 characters")
    return account


def id_param(request: web.Request, name: str) -> int:
    """A positive integer id of the path (400 ``invalid-field`` naming it otherwise)."""
    text = request.match_info[name]
    if not (text.isascii() and text.isdigit() and 0 < len(text) < 19 and int(text) > 0):
        raise InvalidField(name, "expected a positive integer id")
    return int(text)


def _page(query: Mapping[str, str]) -> tuple[int, int]:
    return (query_int(query, "after_id", low=0, high=MAX_ID, default=0),
            query_int(query, "limit", low=1, high=MAX_PAGE, default=100))


def balance_json(account: str, balance: Balance) -> dict[str, Any]:
    return {"account": account, "available_yen": balance.available_yen,
            "held_yen": balance.held_yen, "total_yen": balance.total_yen}


def movement_json(m: Movement) -> dict[str, Any]:
    return {"id": m.id, "kind": m.kind, "amount_yen": m.amount_yen, "by": m.by,
            "reason": m.reason, "reservation_id": m.reservation_id, "at": m.at.isoformat(),
            "legs": m.legs}


async def post_bank_transfer(request: web.Request) -> web.Response:
    """Enter a bank transfer from the statement as a deposit to the account (opened by its
    first deposit). The bank reference is entered once per merchant; the entry records
    who entered it (``entered_by``) and when."""
    ledger, merchant = _ledger(request)
    transfer = transfers.parse(await read_json_object(request), transfers.tokyo_today())
    recorded = await transfers.record(ledger.pool, merchant, transfer)
    balance = await ledger.balance(merchant, transfer.account)
    return json_response({**recorded.to_json(), "balance": balance_json(transfer.account,
                                                                        balance)}, status=201)


async def get_bank_transfers(request: web.Request) -> web.Response:
    """The merchant's bank transfers, in the order they were entered."""
    ledger, merchant = _ledger(request)
    after_id, limit = _page(request.query)
    items = await transfers.listed(ledger.pool, merchant, after_id=after_id, limit=limit)
    return json_response({"items": [r.to_json() for r in items],
                          "next_after_id": items[-1].id if items else after_id})


async def post_adjustment(request: web.Request) -> web.Response:
    """Correct the account's available balance up or down (``delta_yen``), saying who
    (``by``) and why (``reason``); never below zero. Entries are never edited: a mistake
    is corrected by another movement."""
    return await _correct(request, "adjustment")


async def post_refund(request: web.Request) -> web.Response:
    """Give charged money back to the account's available balance (at most what its
    charges came to, less earlier refunds), saying who and why."""
    return await _correct(request, "refund")


async def _correct(request: web.Request, kind: Literal["adjustment", "refund"]
                   ) -> web.Response:
    ledger, merchant = _ledger(request)
    account = account_param(request)
    correction = parse_correction(await read_json_object(request), kind)
    txn = await ledger.correct(merchant, account, correction)
    return json_response({"transaction_id": txn, "balance": balance_json(
        account, await ledger.balance(merchant, account))}, status=201)


async def get_policy(request: web.Request) -> web.Response:
    """The merchant's billing policy in force (the defaults until one is set) and who set
    it when."""
    ledger, merchant = _ledger(request)
    return json_response((await policy.current(ledger.pool, merchant)).to_json())


async def put_policy(request: web.Request) -> web.Response:
    """Change the fields given (and say who: ``by``); consultations reserved from now on
    are rated with it, those already reserved keep the terms they were reserved with."""
    ledger, merchant = _ledger(request)
    data = await read_json_object(request)
    wanted = policy.changed(await policy.current(ledger.pool, merchant), data)
    return json_response((await policy.set_policy(ledger.pool, merchant, wanted)).to_json())


async def get_group_policy(request: web.Request) -> web.Response:
    """A group's billing policy: the fields it overrides (null: the merchant's) and the
    policy in force for consultations through it."""
    ledger, merchant = _ledger(request)
    group_id = id_param(request, "group_id")
    async with ledger.pool.acquire() as conn:
        return json_response((await policy.current_group(conn, merchant, group_id)).to_json(
            await policy.current(conn, merchant)))


async def put_group_policy(request: web.Request) -> web.Response:
    """Override fields of the merchant's policy for the group (an integer), or give them
    back to the merchant's (null); ``by`` says who. Consultations through the group
    reserved from now on are rated with it."""
    ledger, merchant = _ledger(request)
    group_id = id_param(request, "group_id")
    data = await read_json_object(request)
    async with ledger.pool.acquire() as conn:
        merchant_policy = await policy.current(conn, merchant)
        wanted = policy.group_changed(await policy.current_group(conn, merchant, group_id),
                                      merchant_policy, data)
        return json_response((await policy.set_group_policy(conn, merchant, wanted)).to_json(
            merchant_policy))


async def get_daily_report(request: web.Request) -> web.Response:
    """The merchant's day (``date``, Asia/Tokyo; default today): consultations charged by
    tax rate with the tax of each rate's total, money in by source, refunds, adjustments,
    the customers' funds at the end of the day; revenue, carrier cost and margin. As CSV
    with ``format=csv`` or ``Accept: text/csv`` (``format=json`` asks for JSON)."""
    ledger, merchant = _ledger(request)
    day = transfers.parse_day(request.query.get("date"), "date",
                              default=transfers.tokyo_today())
    wanted = request.query.get("format")
    if wanted not in (None, "json", "csv"):
        raise InvalidField("format", "expected json or csv")
    report = await reports.daily(ledger.pool, merchant, day)
    if wanted == "csv" or (wanted is None and "text/csv" in request.headers.get("Accept", "")):
        return web.Response(text=report.to_csv(), content_type="text/csv", charset="utf-8")
    return json_response(report.to_json())


def live_json(live: LiveReservation) -> dict[str, Any]:
    r = live.reservation
    return {"id": r.id, "account": live.account, "consultation_id": r.consultation_id,
            "held_yen": r.held_yen, "allowed_s": r.allowed_s,
            "created_at": live.created_at.isoformat(),
            "price_per_minute_yen": r.terms.price_per_minute_yen}


async def get_live_reservations(request: web.Request) -> web.Response:
    """Reservations not settled, oldest first: consultations in progress, or ones a call
    that crashed left live, whose funds stay held until they are settled."""
    ledger, merchant = _ledger(request)
    older = query_int(request.query, "older_than_s", low=0, high=10**7, default=0)
    limit = query_int(request.query, "limit", low=1, high=MAX_PAGE, default=100)
    items = await ledger.live(merchant, older_than_s=older, limit=limit)
    return json_response({"items": [live_json(x) for x in items]})


async def get_consultation(request: web.Request) -> web.Response:
    """A consultation's prepaid reservation (live or settled: the charge and what was
    released) and postpaid charge, and the billing records of its settlements (revenue,
    the legs' costs in yen, margin); 404 when billing has none."""
    ledger, merchant = _ledger(request)
    consultation_id = request.match_info["consultation_id"]
    if not 1 <= len(consultation_id) <= 128:
        raise InvalidField("consultation_id", "expected 1..128 characters")
    items = await consultation_charges(ledger.pool, merchant, consultation_id)
    if not items:
        raise ApiError(404, "not-found", f"no charge for consultation {consultation_id!r}")
    return json_response({"consultation_id": consultation_id, "items": items,
                          "billing_records": await records.consultation_records(
                              ledger.pool, merchant, consultation_id)})


async def post_settle(request: web.Request) -> web.Response:
    """Settle a reservation a call left live, with its talk time, who and why: the charge
    is rated with the reservation's terms, the rest of the hold released."""
    ledger, merchant = _ledger(request)
    reservation_id = id_param(request, "reservation_id")
    wanted = parse_operator_settle(await read_json_object(request))
    settled = await ledger.settle(merchant, reservation_id, wanted.talk_s, by=wanted.by,
                                  reason=wanted.reason)
    return json_response(settlement_json(settled))


async def get_balance(request: web.Request) -> web.Response:
    """The account's balance: available (free to spend), held (reserved by consultations
    in progress) and their total."""
    ledger, merchant = _ledger(request)
    account = account_param(request)
    return json_response(balance_json(account, await ledger.balance(merchant, account)))


async def get_ledger(request: web.Request) -> web.Response:
    """The account's movements, oldest first: kind, amount, who, why and the legs by book
    (they sum to zero)."""
    ledger, merchant = _ledger(request)
    account = account_param(request)
    after_id, limit = _page(request.query)
    await ledger.balance(merchant, account)      # 404 for an account that does not exist
    items = await ledger.movements(merchant, account, after_id=after_id, limit=limit)
    return json_response({"account": account, "items": [movement_json(m) for m in items],
                          "next_after_id": items[-1].id if items else after_id})


_YEN = {"type": "integer"}
_ID = {"type": "integer", "minimum": 1}
TRANSFER_BODY: Schema = {
    "type": "object", "additionalProperties": False, "required": list(transfers.FIELDS),
    "properties": {
        "account": string(64), "amount_yen": {"type": "integer", "minimum": 1,
                                              "maximum": 1_000_000_000},
        "transferred_on": {"type": "string", "format": "date",
                           "description": "the day the money arrived (Asia/Tokyo); not "
                                          "in the future"},
        "payer_name": string(100, description="the payer as the bank shows it"),
        "bank_reference": string(64, description="the bank's reference; once per merchant"),
        "entered_by": string(128, description="the operator entering it")}}
BALANCE: Schema = {
    "type": "object", "required": ["account", "available_yen", "held_yen", "total_yen"],
    "properties": {"account": {"type": "string"}, "available_yen": _YEN, "held_yen": _YEN,
                   "total_yen": _YEN}}
TRANSFER: Schema = {"type": "object",
            "required": [*transfers.FIELDS, "id", "entered_at", "transaction_id"],
            "properties": {**TRANSFER_BODY["properties"], "id": _ID,
                           "entered_at": TIMESTAMP, "transaction_id": _ID}}
MOVEMENT: Schema = {"type": "object", "required": ["id", "kind", "amount_yen", "by", "reason", "at",
                                           "legs"],
            "properties": {
                "id": _ID, "kind": {"enum": ["deposit", "charge", "refund", "adjustment",
                                             "hold", "release"]},
                "amount_yen": {"type": "integer", "minimum": 1}, "by": {"type": "string"},
                "reason": {"type": "string"}, "reservation_id": {"type": ["integer", "null"]},
                "at": TIMESTAMP,
                "legs": {"type": "object", "description": "book → signed yen; sums to 0",
                         "additionalProperties": _YEN}}}
_WHO_WHY: Schema = {"by": string(128, description="who makes the correction"),
                    "reason": string(500, description="why")}
ADJUSTMENT_BODY: Schema = {
    "type": "object", "additionalProperties": False, "required": ["delta_yen", "by", "reason"],
    "properties": {"delta_yen": {"type": "integer", "minimum": -1_000_000_000,
                                 "maximum": 1_000_000_000, "not": {"const": 0}},
                   **_WHO_WHY}}
REFUND_BODY: Schema = {
    "type": "object", "additionalProperties": False, "required": ["amount_yen", "by", "reason"],
    "properties": {"amount_yen": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
                   **_WHO_WHY}}
CORRECTED: Schema = {"type": "object", "required": ["transaction_id", "balance"],
                     "properties": {"transaction_id": _ID, "balance": BALANCE}}
_POLICY_FIELDS: Schema = {
    "unit_s": {"type": "integer", "minimum": 1, "maximum": 3600,
               "description": "billing unit: every started one is billed whole"},
    "grace_s": {"type": "integer", "minimum": 0, "maximum": 3600,
                "description": "free seconds at the start"},
    "minimum_yen": {"type": "integer", "minimum": 0, "maximum": 1_000_000,
                    "description": "the least charge once anything is billed"},
    "max_talk_s": {"type": "integer", "minimum": 1, "maximum": 86_400,
                   "description": "the longest consultation"},
    "tax_percent": {"type": "integer", "minimum": 0, "maximum": 100}}
POLICY: Schema = {"type": "object", "required": [*policy.FIELDS, "changed_by", "changed_at"],
                  "properties": {**_POLICY_FIELDS, "changed_by": {"type": ["string", "null"]},
                                 "changed_at": {"anyOf": [TIMESTAMP, {"type": "null"}]}}}
POLICY_BODY: Schema = {"type": "object", "additionalProperties": False, "required": ["by"],
                       "properties": {**_POLICY_FIELDS, "by": string(128)}}
_OVERRIDE = {n: {"anyOf": [f, {"type": "null"}]} for n, f in _POLICY_FIELDS.items()}
GROUP_POLICY: Schema = {
    "type": "object",
    "required": ["group_id", *policy.FIELDS, "in_force", "changed_by", "changed_at"],
    "properties": {"group_id": _ID, **_OVERRIDE,
                   "in_force": {"type": "object", "required": list(policy.FIELDS),
                                "properties": _POLICY_FIELDS},
                   "changed_by": {"type": ["string", "null"]},
                   "changed_at": {"anyOf": [TIMESTAMP, {"type": "null"}]}}}
GROUP_POLICY_BODY: Schema = {"type": "object", "additionalProperties": False,
                             "required": ["by"], "properties": {**_OVERRIDE, "by": string(128)}}
_RATE_LINE: Schema = {"type": "object", "properties": {
    n: _YEN for n in ("tax_percent", "consultations", "talk_s", "billed_s", "total_yen",
                      "tax_yen")}}
_MINUTES: Schema = {"type": "string", "pattern": r"^[0-9]+\.[0-9]{2}$"}
_EXACT_YEN: Schema = {"type": "string", "description": "exact decimal yen (may be negative)"}
DAILY_REPORT: Schema = {
    "type": "object",
    "required": ["merchant_id", "date", "charges", "charged_yen", "bank_transfers_yen",
                 "card_topups_yen", "refunds_yen", "adjustments_yen", "customer_funds_yen"],
    "properties": {"merchant_id": {"type": "string"}, "date": {"type": "string",
                                                               "format": "date"},
                   "charges": {"type": "array", "items": _RATE_LINE},
                   "postpaid_charges": {"type": "array", "items": _RATE_LINE},
                   "postpaid_charged_yen": _YEN, "postpaid_paid_yen": _YEN,
                   "talk_minutes": _MINUTES, "billed_minutes": _MINUTES,
                   "carrier_cost_yen": _EXACT_YEN, "margin_yen": _EXACT_YEN,
                   **{n: _YEN for n in ("consultations", "talk_s", "billed_s", "tax_yen",
                                        "revenue_yen", "charged_yen", "bank_transfers_yen",
                                        "card_topups_yen", "refunds_yen", "adjustments_yen",
                                        "customer_funds_yen")}}}
LIVE: Schema = {"type": "object", "properties": {
    "id": _ID, "account": {"type": "string"}, "consultation_id": {"type": "string"},
    "held_yen": _YEN, "allowed_s": _YEN, "created_at": TIMESTAMP,
    "price_per_minute_yen": _YEN}}
SETTLE_BODY: Schema = {
    "type": "object", "additionalProperties": False, "required": ["talk_s", "by", "reason"],
    "properties": {"talk_s": {"type": "integer", "minimum": 0, "maximum": 86_400},
                   "by": string(128), "reason": string(400)}}
SETTLEMENT: Schema = {"type": "object", "properties": {
    n: _YEN for n in ("reservation_id", "talk_s", "billed_s", "total_yen", "tax_yen",
                      "released_yen", "overrun_yen")}}
_OPT_YEN = {"type": ["integer", "null"]}
CONSULTATION_CHARGE: Schema = {
    "type": "object", "required": ["kind", "id", "account", "state", "total_yen"],
    "properties": {
        "kind": {"enum": ["prepaid", "postpaid"]}, "id": _ID, "account": {"type": "string"},
        "state": {"enum": ["live", "settled", "pending", "paid", "failed", "closed"]},
        **{n: _OPT_YEN for n in ("price_per_minute_yen", "held_yen", "allowed_s", "talk_s",
                                 "billed_s", "total_yen", "tax_yen", "released_yen")}}}
_PAGE = (Param("after_id", "query", {"type": "integer", "minimum": 0},
               "only what comes after this id (the reply's next_after_id)"),
         Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}))
ACCOUNT_PARAM = Param("account", "path", string(64), "the customer's account")
UNAVAILABLE = {503: ("billing-unavailable", "database-unavailable")}
TAG = "billing"

OPERATIONS = tuple(replace(op, handler=database_errors_as_503(op.handler)) for op in (
    Operation("POST", "/v1/billing/bank-transfers", post_bank_transfer,
              "Enter a bank transfer as a deposit", TAG,
              {201: Reply("the transfer entered, with the account's balance after it",
                          {**TRANSFER, "properties": {**TRANSFER["properties"],
                                                      "balance": BALANCE}})},
              access=MERCHANT, body=TRANSFER_BODY,
              errors={400: ("invalid-field",), 409: ("duplicate-reference",), **UNAVAILABLE}),
    Operation("GET", "/v1/billing/bank-transfers", get_bank_transfers,
              "Bank transfers entered", TAG,
              {200: Reply("a page of transfers", {
                  "type": "object", "required": ["items", "next_after_id"],
                  "properties": {"items": {"type": "array", "items": TRANSFER},
                                 "next_after_id": {"type": "integer"}}})},
              access=MERCHANT, params=_PAGE, errors=UNAVAILABLE),
    Operation("GET", "/v1/billing/reports/daily", get_daily_report, "A day in billing", TAG,
              {200: Reply("the day's figures", DAILY_REPORT, also={"text/csv": {
                  "type": "string", "description": "a header row, then the day's row: "
                  + ", ".join(reports.CSV_COLUMNS)}})}, access=MERCHANT,
              params=(Param("date", "query", {"type": "string", "format": "date"},
                            "YYYY-MM-DD, Asia/Tokyo (default: today)"),
                      Param("format", "query", {"type": "string", "enum": ["json", "csv"]},
                            "csv: text/csv (as Accept: text/csv asks); default json"),),
              errors=UNAVAILABLE),
    Operation("GET", "/v1/billing/reservations/live", get_live_reservations,
              "Reservations not settled", TAG, {200: Reply("oldest first", {
                  "type": "object", "required": ["items"],
                  "properties": {"items": {"type": "array", "items": LIVE}}})},
              access=MERCHANT,
              params=(Param("older_than_s", "query", {"type": "integer", "minimum": 0},
                            "only those made longer ago than this"), _PAGE[1]),
              errors=UNAVAILABLE),
    Operation("POST", "/v1/billing/reservations/{reservation_id}/settle", post_settle,
              "Settle a reservation a call left live", TAG,
              {200: Reply("the settlement", SETTLEMENT)}, access=MERCHANT,
              params=(Param("reservation_id", "path", _ID),), body=SETTLE_BODY,
              errors={404: ("not-found",), 409: ("already-settled",), **UNAVAILABLE}),
    Operation("GET", "/v1/billing/consultations/{consultation_id}", get_consultation,
              "What billing made of a consultation", TAG,
              {200: Reply("its reservations and charges, and its billing records (revenue, "
                          "cost, margin), oldest first", {
                  "type": "object", "required": ["consultation_id", "items", "billing_records"],
                  "properties": {"consultation_id": {"type": "string"},
                                 "items": {"type": "array", "items": CONSULTATION_CHARGE},
                                 "billing_records": {"type": "array",
                                                     "items": records.LISTED}}})},
              access=MERCHANT, params=(Param("consultation_id", "path", string(128)),),
              errors={400: ("invalid-field",), 404: ("not-found",), **UNAVAILABLE}),
    Operation("GET", "/v1/billing/policy", get_policy, "The billing policy in force", TAG,
              {200: Reply("the policy", POLICY)}, access=MERCHANT, errors=UNAVAILABLE),
    Operation("PUT", "/v1/billing/policy", put_policy, "Change the billing policy", TAG,
              {200: Reply("the policy now in force", POLICY)}, access=MERCHANT,
              body=POLICY_BODY, errors={400: ("invalid-field",), **UNAVAILABLE}),
    Operation("GET", "/v1/billing/groups/{group_id}/policy", get_group_policy,
              "An advisor group's billing policy", TAG,
              {200: Reply("the fields the group overrides and the policy in force for it",
                          GROUP_POLICY)}, access=MERCHANT,
              params=(Param("group_id", "path", _ID, "the advisors' group id"),),
              errors={400: ("invalid-field",), **UNAVAILABLE}),
    Operation("PUT", "/v1/billing/groups/{group_id}/policy", put_group_policy,
              "Override the billing policy for an advisor group", TAG,
              {200: Reply("the group's policy now", GROUP_POLICY)}, access=MERCHANT,
              params=(Param("group_id", "path", _ID, "the advisors' group id"),),
              body=GROUP_POLICY_BODY, errors={400: ("invalid-field",), **UNAVAILABLE}),
    Operation("POST", "/v1/billing/accounts/{account}/adjustments", post_adjustment,
              "Correct an account's balance", TAG, {201: Reply("the movement", CORRECTED)},
              access=MERCHANT, params=(ACCOUNT_PARAM,), body=ADJUSTMENT_BODY,
              errors={404: ("not-found",), 409: ("insufficient-balance",), **UNAVAILABLE}),
    Operation("POST", "/v1/billing/accounts/{account}/refunds", post_refund,
              "Refund charges to an account's balance", TAG,
              {201: Reply("the movement", CORRECTED)}, access=MERCHANT, params=(ACCOUNT_PARAM,),
              body=REFUND_BODY,
              errors={404: ("not-found",), 409: ("refund-exceeds-charges",), **UNAVAILABLE}),
    Operation("GET", "/v1/billing/accounts/{account}/balance", get_balance,
              "An account's balance", TAG, {200: Reply("the balance", BALANCE)},
              access=MERCHANT, params=(ACCOUNT_PARAM,),
              errors={404: ("not-found",), **UNAVAILABLE}),
    Operation("GET", "/v1/billing/accounts/{account}/ledger", get_ledger,
              "An account's movements", TAG,
              {200: Reply("a page of movements", {
                  "type": "object", "required": ["account", "items", "next_after_id"],
                  "properties": {"account": {"type": "string"},
                                 "items": {"type": "array", "items": MOVEMENT},
                                 "next_after_id": {"type": "integer"}}})},
              access=MERCHANT, params=(ACCOUNT_PARAM, *_PAGE),
              errors={404: ("not-found",), **UNAVAILABLE}),
))
