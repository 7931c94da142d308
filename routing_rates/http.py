"""HTTP equivalents of ``quote`` and ``decide``, mounted by the callback server.

    add_operations(app, routing_rates.http.routes(rates))

``GET /v1/rates/quote?number=+819012345678[&duration=S|&distribution=NAME][&at=ISO]
[&origin=...]`` and ``GET /v1/rates/decide?number=...[&inbound_tariff=ntt-freedial]
[&announce_mode=early_media|answer][&announce_s=5]``; ``POST /v1/rates/simulate`` with
``{"calls": [{"time", "caller", "talk_s"}, ...], "merchant"?, "inbound_tariff"?,
"announce_mode"?, "announce_s"?, "worst"?}`` (at most 10,000 calls; the CLI replays
any number): the what-if of ``routing_rates.simulate``. Bad input answers 400 (or
404 for an unknown tariff) with ``{"error": {"id": ..., "message": ...}}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from routing_rates import simulate as whatif
from routing_rates.decision import ANNOUNCE_MODES
from routing_rates.duration import DurationModel
from routing_rates.service import RatingService, UnknownTariff
from shared.config import Merchant
from shared.http import read_json_object
from shared.openapi import TIMESTAMP, Operation, Param, Reply
from shared.phone import E164, InvalidNumber, normalise
from shared.timeutil import TimestampError, parse_timestamp


class RatesHttpError(Exception):
    def __init__(self, status: int, error_id: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.message = message


def _error(exc: RatesHttpError) -> web.Response:
    return web.json_response({"error": {"id": exc.error_id, "message": exc.message}},
                             status=exc.status)


def _number(request: web.Request, name: str, required: bool = True) -> E164 | None:
    text = request.query.get(name, "")
    if not text:
        if required:
            raise RatesHttpError(400, "rates-number-missing", f"query parameter {name} is "
                                 "required")
        return None
    try:
        return normalise(text)
    except InvalidNumber as exc:
        raise RatesHttpError(400, "rates-number-invalid", str(exc)) from exc


def _at(request: web.Request) -> datetime:
    text = request.query.get("at")
    if not text:
        return datetime.now(UTC)
    try:
        # a "+" in an unencoded zone offset arrives as a space
        return parse_timestamp(text.replace(" ", "+"), "at")
    except TimestampError as exc:
        raise RatesHttpError(400, "rates-time-invalid", str(exc)) from None


def _decimal(request: web.Request, name: str, default: str) -> Decimal:
    text = request.query.get(name, default)
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0 or value > 86400:
        raise RatesHttpError(400, "rates-parameter-invalid",
                             f"{name} must be seconds between 0 and 86400: {text!r}")
    return value


def _model(request: web.Request, rates: RatingService) -> DurationModel:
    if "duration" in request.query:
        return DurationModel.fixed(_decimal(request, "duration", "0"))
    name = request.query.get("distribution", "default")
    try:
        return rates.distribution(name)
    except LookupError as exc:
        raise RatesHttpError(400, "rates-distribution-unknown", str(exc)) from exc


def routes(source: RatingService | Callable[[], RatingService | None],
           merchants: Mapping[str, Merchant] | None = None) -> list[Operation]:
    """``GET /v1/rates/quote``, ``/v1/rates/decide`` and ``POST /v1/rates/simulate``.

    ``source`` is the service, or a callable returning it (a server mounts the routes
    before its rating service has started); until it has, they answer 503.
    ``merchants``: what ``?merchant=`` may name (its maximum cost per minute, its carrier
    quality floor).
    """
    known = merchants or {}

    def merchant_of(request: web.Request) -> Merchant | None:
        name = request.query.get("merchant")
        if name is None:
            return None
        if name not in known:
            raise RatesHttpError(400, "rates-parameter-invalid",
                                 f"merchant: unknown merchant {name!r}")
        return known[name]

    def service() -> RatingService:
        rates = source() if callable(source) else source
        if rates is None:
            raise RatesHttpError(503, "rates-unavailable", "routing_rates is not loaded")
        return rates

    async def quote(request: web.Request) -> web.Response:
        try:
            rates = service()
            number = _number(request, "number")
            assert number is not None
            merchant = merchant_of(request)
            quotes, dropped = rates.quote(
                number, _at(request), duration=_model(request, rates),
                origin=_number(request, "origin", required=False),
                max_rate=merchant.max_cost_per_minute if merchant else None,
                quality=merchant.carrier_quality if merchant else None)
        except RatesHttpError as exc:
            return _error(exc)
        body: dict[str, Any] = {
            "number": str(number), "currency": rates.currency,
            "routes": [q.explain | {"endpoint": q.endpoint} for q in quotes],
            "dropped": [{"carrier": d.carrier_id, "reason": d.reason, "detail": d.detail}
                        for d in dropped]}
        return web.json_response(body)

    async def decide(request: web.Request) -> web.Response:
        try:
            rates = service()
            number = _number(request, "number")
            assert number is not None
            mode = request.query.get("announce_mode", "early_media")
            if mode not in ANNOUNCE_MODES:
                raise RatesHttpError(400, "rates-parameter-invalid",
                                     f"announce_mode must be one of {', '.join(ANNOUNCE_MODES)}")
            merchant = merchant_of(request)
            decision = rates.decide(
                number, _at(request),
                inbound_tariff=request.query.get("inbound_tariff", "ntt-freedial"),
                announce_mode=mode, announce_s=_decimal(request, "announce_s", "5"),
                duration=_model(request, rates),
                origin=_number(request, "origin", required=False),
                merchant=merchant.id if merchant else None,
                max_rate=merchant.max_cost_per_minute if merchant else None,
                quality=merchant.carrier_quality if merchant else None)
        except RatesHttpError as exc:
            return _error(exc)
        except UnknownTariff as exc:
            return _error(RatesHttpError(404, "rates-tariff-unknown", str(exc)))
        return web.json_response(decision.to_json())

    return [
        Operation("GET", "/v1/rates/quote", quote, "Carriers ranked by expected cost", "rates",
                  {200: Reply("the routes, cheapest first, and the carriers left out", QUOTE)},
                  params=_COMMON, errors=_ERRORS),
        Operation("GET", "/v1/rates/decide", decide, "Call back, or keep the call?", "rates",
                  {200: Reply("the decision and both paths' expected costs", DECISION)},
                  params=(*_COMMON, *_DECIDE),
                  errors={**_ERRORS, 404: ("rates-tariff-unknown",)}),
        Operation("POST", "/v1/rates/simulate", _simulate(service), "What-if: replay a call log",
                  "rates", {200: Reply("keep all, call back all, as decided, regret",
                                       SIMULATION)},
                  body=SIMULATE_BODY,
                  errors={400: ("rates-parameter-invalid",), 503: ("rates-unavailable",),
                          404: ("rates-tariff-unknown",)}),
    ]


def _simulate(service: Callable[[], RatingService]
              ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def simulate(request: web.Request) -> web.Response:
        try:
            rates = service()
            body = await read_json_object(request)
            log, options = _simulation(body)
            result = await asyncio.to_thread(whatif.simulate, rates, log, **options)
        except RatesHttpError as exc:
            return _error(exc)
        except whatif.SimulationError as exc:
            return _error(RatesHttpError(400, "rates-parameter-invalid", str(exc)))
        except UnknownTariff as exc:
            return _error(RatesHttpError(404, "rates-tariff-unknown", str(exc)))
        return web.json_response(_result_json(result))

    return simulate


MAX_HTTP_CALLS = 10_000
_OPTIONS = {"merchant", "inbound_tariff", "announce_mode", "announce_s", "worst"}


def _simulation(body: Mapping[str, Any]) -> tuple[whatif.CallLog, dict[str, Any]]:
    """The call log and the options of a ``POST /v1/rates/simulate`` body."""
    unknown = sorted(set(body) - _OPTIONS - {"calls"})
    if unknown:
        raise RatesHttpError(400, "rates-parameter-invalid", f"{unknown[0]}: unknown field")
    calls = body.get("calls")
    if not isinstance(calls, list) or not 1 <= len(calls) <= MAX_HTTP_CALLS:
        raise RatesHttpError(400, "rates-parameter-invalid",
                             f"calls must be a list of 1 to {MAX_HTTP_CALLS:,} calls")
    builder = whatif.CallLogBuilder()
    for i, call in enumerate(calls):
        try:
            if not isinstance(call, dict) or set(call) != {"time", "caller", "talk_s"}:
                raise ValueError("needs exactly time, caller and talk_s")
            when, caller, talk = call["time"], call["caller"], call["talk_s"]
            if not isinstance(when, str) or not isinstance(caller, str) \
                    or isinstance(talk, bool) or not isinstance(talk, int):
                raise ValueError("time and caller are strings, talk_s whole seconds")
            builder.add(when, caller, talk)
        except ValueError as exc:
            raise RatesHttpError(400, "rates-parameter-invalid", f"calls[{i}]: {exc}") from None
    merchant, tariff = body.get("merchant"), body.get("inbound_tariff", "ntt-freedial")
    mode, worst = body.get("announce_mode", "early_media"), body.get("worst", 20)
    announce = body.get("announce_s", 5)
    if merchant is not None and not isinstance(merchant, str) or not isinstance(tariff, str):
        raise RatesHttpError(400, "rates-parameter-invalid",
                             "merchant and inbound_tariff are strings")
    if mode not in ANNOUNCE_MODES:
        raise RatesHttpError(400, "rates-parameter-invalid",
                             f"announce_mode must be one of {', '.join(ANNOUNCE_MODES)}")
    if isinstance(worst, bool) or not isinstance(worst, int) or not 0 <= worst <= 1000:
        raise RatesHttpError(400, "rates-parameter-invalid", "worst must be 0 to 1000")
    if isinstance(announce, bool) or not isinstance(announce, int | float) \
            or not 0 <= announce <= 86400:
        raise RatesHttpError(400, "rates-parameter-invalid",
                             "announce_s must be seconds between 0 and 86400")
    return builder.log(), {"merchant": merchant, "inbound_tariff": tariff,
                           "announce_mode": mode, "announce_s": Decimal(str(announce)),
                           "worst": worst}


def _result_json(r: whatif.Result) -> dict[str, Any]:
    def totals(calls: int, keep: Decimal, project: Decimal) -> dict[str, Any]:
        return {"calls": calls, "keep": str(keep), "project": str(project),
                "saving": str(keep - project)}

    return {"currency": r.currency, "calls": r.calls, "keep": str(r.keep),
            "callback": str(r.callback), "project": str(r.project), "saving": str(r.saving),
            "regret": str(r.regret), "regret_calls": r.regret_calls,
            "hindsight": str(r.hindsight), "hindsight_calls": r.hindsight_calls,
            "by_class": {c: totals(*t) for c, t in r.by_class.items()},
            "by_hour": [totals(*t) for t in r.by_hour],
            "worst": [{"call": i, "hindsight": str(amount)} for i, amount in r.worst]}


_SECONDS = {"type": "number", "minimum": 0, "maximum": 86400}
_COMMON = (
    Param("number", "query", {"type": "string"}, "the number to price (E.164 or national)",
          required=True),
    Param("duration", "query", _SECONDS, "a fixed call length in seconds"),
    Param("distribution", "query", {"type": "string"}, "a configured length distribution "
          "(default: default); ignored with duration"),
    Param("at", "query", TIMESTAMP, "the time of the call (default: now)"),
    Param("origin", "query", {"type": "string"}, "the calling number, for origin-based rates"),
    Param("merchant", "query", {"type": "string"}, "as for this merchant: no carrier above "
          "its max_cost_per_minute, those below its carrier_quality floor last"))
_DECIDE = (
    Param("inbound_tariff", "query", {"type": "string"}, "default ntt-freedial"),
    Param("announce_mode", "query", {"enum": sorted(ANNOUNCE_MODES)}, "default early_media"),
    Param("announce_s", "query", _SECONDS, "announcement seconds (default 5)"))
_ERRORS = {400: ("rates-number-missing", "rates-number-invalid", "rates-time-invalid",
                 "rates-parameter-invalid", "rates-distribution-unknown"),
           503: ("rates-unavailable",)}
_MONEY_TEXT = {"type": "object", "required": ["amount", "currency"],
               "properties": {"amount": {"type": "string"}, "currency": {"type": "string"}}}
SIMULATE_BODY = {
    "type": "object", "required": ["calls"], "additionalProperties": False,
    "properties": {
        "calls": {"type": "array", "minItems": 1, "maxItems": MAX_HTTP_CALLS, "items": {
            "type": "object", "required": ["time", "caller", "talk_s"],
            "additionalProperties": False,
            "properties": {"time": TIMESTAMP, "caller": {"type": "string", "maxLength": 32},
                           "talk_s": {"type": "integer", "minimum": 0,
                                      "maximum": whatif.MAX_TALK_S}}}},
        "merchant": {"type": "string", "maxLength": 64},
        "inbound_tariff": {"type": "string", "maxLength": 64},
        "announce_mode": {"enum": sorted(ANNOUNCE_MODES)},
        "announce_s": {"type": "number", "minimum": 0, "maximum": 86400},
        "worst": {"type": "integer", "minimum": 0, "maximum": 1000}}}
_TOTALS = {"type": "object", "required": ["calls", "keep", "project", "saving"],
           "properties": {"calls": {"type": "integer"}, "keep": {"type": "string"},
                          "project": {"type": "string"}, "saving": {"type": "string"}}}
SIMULATION = {
    "type": "object",
    "required": ["currency", "calls", "keep", "callback", "project", "saving", "regret",
                 "regret_calls", "hindsight", "hindsight_calls", "by_class", "by_hour",
                 "worst"],
    "properties": {
        "currency": {"type": "string"}, "calls": {"type": "integer"},
        "keep": {"type": "string"}, "callback": {"type": "string"},
        "project": {"type": "string"}, "saving": {"type": "string"},
        "regret": {"type": "string"}, "regret_calls": {"type": "integer"},
        "hindsight": {"type": "string"}, "hindsight_calls": {"type": "integer"},
        "by_class": {"type": "object", "additionalProperties": _TOTALS},
        "by_hour": {"type": "array", "items": _TOTALS},
        "worst": {"type": "array", "items": {
            "type": "object", "required": ["call", "hindsight"],
            "properties": {"call": {"type": "integer"}, "hindsight": {"type": "string"}}}}}}
QUOTE = {"type": "object", "required": ["number", "currency", "routes", "dropped"],
         "properties": {
             "number": {"type": "string"}, "currency": {"type": "string"},
             "routes": {"type": "array", "items": {
                 "type": "object", "required": ["carrier", "endpoint", "expected", "currency"],
                 "properties": {"carrier": {"type": "string"}, "endpoint": {"type": "string"},
                                "expected": {"type": "string"},
                                "currency": {"type": "string"}}}},
             "dropped": {"type": "array", "items": {
                 "type": "object", "required": ["carrier", "reason", "detail"],
                 "properties": {"carrier": {"type": "string"}, "reason": {"type": "string"},
                                "detail": {"type": "string"}}}}}}
DECISION = {"type": "object",
            "required": ["callback", "reason", "callback_cost", "direct_cost", "carrier",
                         "endpoint", "explain"],
            "properties": {
                "callback": {"type": "boolean"}, "reason": {"type": "string"},
                "callback_cost": _MONEY_TEXT, "direct_cost": _MONEY_TEXT,
                "carrier": {"type": ["string", "null"]},
                "endpoint": {"type": ["string", "null"]}, "explain": {"type": "object"}}}
