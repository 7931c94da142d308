"""Ranking carriers and the call-back-or-not decision, pure (no I/O).

Rule: call back only when the expected cost of calling back (the edge leg,
plus the cheapest carrier leg) is *strictly* lower than the expected cost of
keeping the toll-free call. Expected costs are E[cost(d)] over a duration
distribution, converted into one comparison currency with the FX table.

* Edge leg: 0 s in ``early_media`` mode (a call rejected after 183 is not
  billed); in ``answer`` mode the announcement is billed on the inbound tariff.
* Every decision carries ``explain``: both paths, the rows and terms behind
  each number, the alternatives, the carriers dropped and why.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from routing_rates.carriers import Carrier
from routing_rates.duration import DurationModel
from routing_rates.index import Row
from routing_rates.numbering import Gap
from shared.money import FxTable, Money

RULE = "call back only if edge leg + cheapest carrier leg < expected direct (toll-free) cost"
ANNOUNCE_MODES = ("early_media", "answer")


@dataclass(frozen=True, slots=True)
class RouteQuote:
    carrier_id: str
    endpoint_template: str       # the carrier's dial string template
    endpoint: str                # formatted for this number
    expected_cost: Money         # E[cost(d)] in the comparison currency
    native_cost: Money           # E[cost(d)] in the deck's currency
    rate: Money                  # price per ``row.terms.unit_s`` seconds
    prefix: str
    destination: str
    row: Row
    deck_id: int | None
    explain: dict[str, Any] = field(default_factory=dict)
    gap: Gap | None = None       # priced at its number type's rate, not the matched row's
    demoted: str = ""            # why it was moved down the ranking (routing_rates.quality)


@dataclass(frozen=True, slots=True)
class Dropped:
    carrier_id: str
    reason: str                  # see DROP_REASONS
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    callback: bool
    reason: str                  # stable id, see REASONS
    callback_cost: Money
    direct_cost: Money
    explain: dict[str, Any]
    route: RouteQuote | None = None

    @property
    def saving(self) -> Money:
        return self.direct_cost - self.callback_cost

    def to_json(self) -> dict[str, Any]:
        return {"callback": self.callback, "reason": self.reason,
                "callback_cost": self.callback_cost.to_json(),
                "direct_cost": self.direct_cost.to_json(),
                "carrier": self.route.carrier_id if self.route else None,
                "endpoint": self.route.endpoint if self.route else None,
                "explain": self.explain}


DROP_REASONS = ("disabled", "no-deck", "no-route", "channel-cap", "above-max-cost",
                "above-max-rate")

REASONS = {
    "callback-cheaper": "calling back is expected to cost less than keeping the call",
    "direct-cheaper": "keeping the call is expected to cost no more than calling back",
    "no-carrier-route": "no enabled carrier with free channels prices this number",
    "no-carrier-within-max-rate": "every carrier pricing this number costs more per minute "
                                  "than the merchant's maximum; keep the call",
    "no-direct-tariff": "the inbound tariff has no rate for this caller; keep the call",
}


def _money(m: Money, places: int = 4) -> str:
    return str(m.quantize(places).amount)


def quote_route(carrier: Carrier, row: Row, digits: str, model: DurationModel,
                fx: FxTable, currency: str, deck_id: int | None, period: str,
                gap: Gap | None = None) -> RouteQuote:
    native = model.expected_cost(row.terms)
    converted = fx.convert(native, currency)
    explain: dict[str, Any] = {
        "carrier": carrier.id, "deck_id": deck_id, "prefix": row.prefix,
        "destination": row.destination, "terms": row.terms.describe(),
        "origins": " ".join(row.origins), "period": row.period or period or "",
        "expected_native": _money(native), "expected": _money(converted),
        "currency": currency,
    }
    if gap is not None:
        explain["gap"] = gap.to_json()
    return RouteQuote(carrier.id, carrier.dial_string, carrier.endpoint(digits), converted,
                      native, Money(row.terms.rate, row.terms.currency), row.prefix,
                      row.destination, row, deck_id, explain, gap)


def rank_routes(candidates: Sequence[tuple[Carrier, Row | None, int | None, str]],
                digits: str, model: DurationModel, fx: FxTable, currency: str, *,
                busy: Mapping[str, int] | None = None, max_cost: Money | None = None,
                no_deck: Collection[str] = (), gaps: Mapping[str, Gap] | None = None,
                max_rate: Money | None = None,
                ) -> tuple[list[RouteQuote], list[Dropped]]:
    """Rank (carrier, row, deck_id, period) candidates by expected cost; drop filtered ones.

    ``no_deck``: the carriers holding no deck version in force (never one guessed).
    ``gaps``: per carrier, its row is the number type's rate, not the matched prefix's.
    ``max_rate``: the most a carrier may cost per minute (the merchant's maximum).
    Ties go to the carrier listed first (stable sort)."""
    quotes: list[RouteQuote] = []
    dropped: list[Dropped] = []
    limit = fx.convert(max_cost, currency) if max_cost is not None else None
    rate_limit = fx.convert(max_rate, currency) if max_rate is not None else None
    for carrier, row, deck_id, period in candidates:
        if not carrier.enabled:
            dropped.append(Dropped(carrier.id, "disabled"))
            continue
        if carrier.id in no_deck:
            dropped.append(Dropped(carrier.id, "no-deck", "no deck version in force on this "
                                                          "site (none received yet)"))
            continue
        if row is None:
            dropped.append(Dropped(carrier.id, "no-route", "no prefix of the number in deck"))
            continue
        in_use = (busy or {}).get(carrier.id, 0)
        if carrier.max_channels is not None and in_use >= carrier.max_channels:
            dropped.append(Dropped(carrier.id, "channel-cap",
                                   f"{in_use} of {carrier.max_channels} channels in use"))
            continue
        if rate_limit is not None:
            per_minute = fx.convert(row.terms.per_minute, currency)
            if per_minute > rate_limit:
                dropped.append(Dropped(carrier.id, "above-max-rate",
                                       f"{_money(per_minute)} > {_money(rate_limit)} "
                                       f"{currency}/min"))
                continue
        q = quote_route(carrier, row, digits, model, fx, currency, deck_id, period,
                        (gaps or {}).get(carrier.id))
        if limit is not None and q.expected_cost > limit:
            dropped.append(Dropped(carrier.id, "above-max-cost",
                                   f"{_money(q.expected_cost)} > {_money(limit)} {currency}"))
            continue
        quotes.append(q)
    quotes.sort(key=lambda q: q.expected_cost.amount)
    return quotes, dropped


def decide(*, routes: Sequence[RouteQuote], dropped: Sequence[Dropped],
           direct_row: Row | None, direct_tariff: str, direct_deck: int | None,
           model: DurationModel, fx: FxTable, currency: str,
           announce_mode: str, announce_s: Decimal, number: str, at: str,
           lengths: Mapping[str, str] | None = None) -> Decision:
    """The decision and its explanation (``lengths``: where the distribution came from)."""
    if announce_mode not in ANNOUNCE_MODES:
        raise ValueError(f"announce_mode must be one of {ANNOUNCE_MODES}")
    zero = Money.zero(currency)
    explain: dict[str, Any] = {
        "number": number, "at": at, "rule": RULE, "currency": currency,
        "distribution": {"name": model.name, "mean_s": str(model.mean.quantize(Decimal(1))),
                         **(lengths or {})},
        "alternatives": [q.explain for q in routes],
        "dropped": [{"carrier": d.carrier_id, "reason": d.reason, "detail": d.detail}
                    for d in dropped],
    }
    if direct_row is None:
        explain["direct"] = {"tariff": direct_tariff, "deck_id": direct_deck,
                             "error": "no rate for this caller"}
        return Decision(False, "no-direct-tariff", zero, zero, explain,
                        routes[0] if routes else None)
    direct_native = model.expected_cost(direct_row.terms)
    direct = fx.convert(direct_native, currency)
    explain["direct"] = {
        "tariff": direct_tariff, "deck_id": direct_deck, "prefix": direct_row.prefix,
        "destination": direct_row.destination, "terms": direct_row.terms.describe(),
        "expected_native": _money(direct_native), "expected": _money(direct)}
    edge_seconds = Decimal(0) if announce_mode == "early_media" else announce_s
    edge_native = direct_row.terms.cost(edge_seconds)
    edge = fx.convert(edge_native, currency)
    explain["edge_leg"] = {"mode": announce_mode, "seconds": str(edge_seconds),
                           "cost_native": _money(edge_native), "cost": _money(edge),
                           "why": "rejected after early media: not billed"
                           if announce_mode == "early_media"
                           else "announcement after answer is billed on the inbound tariff"}
    if not routes:
        explain["callback"] = None
        capped = any(d.reason == "above-max-rate" for d in dropped)
        return Decision(False, "no-carrier-within-max-rate" if capped else "no-carrier-route",
                        edge, direct, explain, None)
    best = routes[0]
    callback = edge + best.expected_cost
    explain["callback"] = {"carrier": best.carrier_id, "carrier_leg": _money(best.expected_cost),
                           "edge_leg": _money(edge), "total": _money(callback)}
    explain["saving"] = _money(direct - callback)
    if callback < direct:
        return Decision(True, "callback-cheaper", callback, direct, explain, best)
    return Decision(False, "direct-cheaper", callback, direct, explain, best)
