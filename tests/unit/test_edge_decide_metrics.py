"""The edge's decisions are counted by merchant, decision and reason, and their expected
saving (or loss) summed in yen (edge_server.decide)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from edge_server.decide import FixedDecider, RatesDecider
from edge_server.flow_messages import AnnounceMode, RequestDecision
from shared.money import Money
from shared.phone import E164
from tests import prom

CMD = RequestDecision(E164("819012345678"), "acme", AnnounceMode.EARLY_MEDIA)
AT = datetime(2026, 12, 4, tzinfo=UTC)


@dataclass(frozen=True)
class Decision:
    callback: bool
    reason: str
    saving: Money
    explain: Mapping[str, Any] = field(default_factory=dict)


class Rates:
    """Answers each ``decide`` with the next of ``answers`` (an exception is raised)."""

    def __init__(self, *answers: Decision | Exception) -> None:
        self.answers = list(answers)

    def decide(self, number: E164, at: datetime, **_: object) -> Decision:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _decisions(decision: str, reason: str) -> float:
    return prom.sample("cbgw_edge_decisions_total", merchant="acme", decision=decision,
                       reason=reason)


def _yen(decision: str) -> tuple[float, float]:
    return (prom.sample("cbgw_edge_expected_saving_yen_total", merchant="acme",
                        decision=decision),
            prom.sample("cbgw_edge_expected_loss_yen_total", merchant="acme",
                        decision=decision))


async def test_decisions_and_their_saving_in_yen_are_counted() -> None:
    series = [("callback", "callback_cheaper"), ("keep", "direct_cheaper"),
              ("unrated", "unavailable"), ("unrated", "not_configured")]
    before = [_decisions(*s) for s in series]
    yen_before = {d: _yen(d) for d in ("callback", "keep")}
    decider = RatesDecider(Rates(
        Decision(True, "callback_cheaper", Money(Decimal("42.5"), "JPY")),
        Decision(False, "direct_cheaper", Money(Decimal("-3"), "JPY")),
        Decision(True, "callback_cheaper", Money(Decimal("1"), "USD")),  # not yen: counted
        LookupError("no deck")), {})
    for _ in range(4):
        await decider.decide(CMD, AT)
    await FixedDecider().decide(CMD, AT)
    assert [_decisions(*s) - b for s, b in zip(series, before, strict=True)] == [2, 1, 1, 1]
    yen = {d: tuple(a - b for a, b in zip(_yen(d), yen_before[d], strict=True))
           for d in ("callback", "keep")}
    assert yen == {"callback": (42.5, 0.0), "keep": (0.0, 3.0)}  # (saving, loss)


async def test_a_carrier_without_a_deck_in_force_is_counted() -> None:
    """The edge decided without carrier-b (no version received yet): it says so."""
    def no_deck(carrier: str) -> float:
        return prom.sample("cbgw_edge_decisions_no_deck_total", merchant="acme",
                           carrier=carrier)

    before = no_deck("carrier-b"), no_deck("carrier-a")
    explain = {"dropped": [{"carrier": "carrier-b", "reason": "no-deck", "detail": ""},
                           {"carrier": "carrier-a", "reason": "no-route", "detail": ""}]}
    decider = RatesDecider(Rates(
        Decision(False, "direct-cheaper", Money(Decimal("-1"), "JPY"), explain)), {})
    await decider.decide(CMD, AT)
    assert (no_deck("carrier-b") - before[0], no_deck("carrier-a") - before[1]) == (1, 0)
