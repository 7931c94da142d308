"""Call back or keep the call direct: adapters from ``routing_rates`` to the flow.

:class:`RatesDecider` wraps ``routing_rates.RatingService.decide`` (see
docs/CONTRACTS.md) behind the flow's :class:`~edge_server.stasis.Decider`
Protocol, passing the merchant, so the decision assumes that merchant's call
lengths for the caller's number class (learned, configured or the default) and
leaves out the carriers above its ``max_cost_per_minute`` (none left: the call is
kept, reason ``no-carrier-within-max-rate``); with its ``carrier_quality`` floor, the
carriers below it on the edge's own CDRs come last, so the decision prices the carrier
the callback site will dial first.
Anything that goes wrong while rating (no deck for the number, a
tariff missing, a bug) becomes ``DecisionUnavailable`` and the flow falls back
to the merchant's ``callback_when_unrated``. :class:`FixedDecider` stands in
when no rates are configured.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from edge_server.flow_messages import Decided, DecisionUnavailable, RequestDecision
from edge_server.metrics import child
from edge_server.metrics import edge as edge_metrics
from shared.config import CarrierQuality
from shared.money import Money
from shared.phone import E164

log = logging.getLogger("edge.decide")


class DecisionLike(Protocol):
    @property
    def callback(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def saving(self) -> Money: ...
    @property
    def explain(self) -> Mapping[str, Any]: ...


class SupportsDecide(Protocol):
    """The slice of ``routing_rates.RatingService`` the edge needs."""

    def decide(self, number: E164, at: datetime, *, inbound_tariff: str = ...,
               announce_mode: str = ..., announce_s: Decimal = ...,
               merchant: str | None = ..., max_rate: Money | None = ...,
               quality: CarrierQuality | None = ...) -> DecisionLike: ...


class RatesDecider:
    def __init__(self, rates: SupportsDecide, inbound_tariffs: Mapping[str, str],
                 announce_s: Decimal = Decimal("5"),
                 max_rates: Mapping[str, Money | None] | None = None,
                 quality: Mapping[str, CarrierQuality | None] | None = None) -> None:
        self.rates = rates
        self.inbound_tariffs = inbound_tariffs  # merchant id -> routing_rates deck id
        self.announce_s = announce_s
        self.max_rates = max_rates or {}        # merchant id -> max_cost_per_minute
        self.quality = quality or {}            # merchant id -> [merchants.carrier_quality]

    async def decide(self, cmd: RequestDecision, at: datetime
                     ) -> Decided | DecisionUnavailable:
        tariff = self.inbound_tariffs.get(cmd.merchant_id, "ntt-freedial")
        try:
            decision = self.rates.decide(cmd.caller, at, inbound_tariff=tariff,
                                         announce_mode=cmd.announce_mode.value,
                                         announce_s=self.announce_s,
                                         merchant=cmd.merchant_id,
                                         max_rate=self.max_rates.get(cmd.merchant_id),
                                         quality=self.quality.get(cmd.merchant_id))
        except Exception as exc:  # the flow must get an answer whatever rating does
            log.warning("no decision for %s (%s): %s: %s", cmd.caller, cmd.merchant_id,
                        type(exc).__name__, exc)
            unrated(cmd.merchant_id, "unavailable")
            return DecisionUnavailable(f"{type(exc).__name__}: {exc}"[:200])
        counted(cmd.merchant_id, decision)
        return Decided(bool(decision.callback), str(decision.reason))


class FixedDecider:
    """No routing data configured: every call is unrated (merchant default applies)."""

    def __init__(self, reason: str = "routing_rates not configured") -> None:
        self.reason = reason

    async def decide(self, cmd: RequestDecision, at: datetime
                     ) -> Decided | DecisionUnavailable:
        unrated(cmd.merchant_id, "not_configured")
        return DecisionUnavailable(self.reason)


def counted(merchant_id: str, decision: DecisionLike) -> None:
    """``cbgw_edge_decisions_total``, the carriers it went without for want of a deck in
    force (``cbgw_edge_decisions_no_deck_total``), and the expected saving (or loss) in yen
    (a comparison currency other than JPY is counted, its amount left out)."""
    kind = "callback" if decision.callback else "keep"
    m = edge_metrics()
    child(m.decisions, merchant_id, kind, str(decision.reason)).inc()
    for dropped in decision.explain.get("dropped", ()):
        if dropped.get("reason") == "no-deck":
            child(m.no_deck, merchant_id, str(dropped.get("carrier"))).inc()
    saving = decision.saving
    if saving.currency == "JPY":
        amount = float(saving.amount)
        if amount > 0:
            child(m.saving, merchant_id, kind).inc(amount)
        elif amount < 0:
            child(m.loss, merchant_id, kind).inc(-amount)


def unrated(merchant_id: str, reason: str) -> None:
    child(edge_metrics().decisions, merchant_id, "unrated", reason).inc()
