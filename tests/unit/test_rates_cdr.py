"""CdrRater.rate_all (the inlined 200k/s loop) against a plain reference built from
DeckHistory.deck_at, RateIndex.match_one, period_at and Terms.cost."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from routing_rates.carriers import Carrier
from routing_rates.cdr import Cdr, CdrRater, DeckHistory
from routing_rates.index import RateIndex, Row
from routing_rates.tariff import Period, Terms, period_at
from shared.money import FxTable, Money
from shared.phone import E164

FX = FxTable.from_mapping("JPY", {"USD": "150"})
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _terms(rate: str, x: int, y: int, currency: str = "USD", connect: str = "0",
           minimum: str = "0") -> Terms:
    return Terms(Decimal(rate), 60, x, y, Decimal(connect), Decimal(minimum), currency, 4)


PEAK = Period("peak", frozenset(range(5)), time(8), time(20))
DECKS: dict[int, list[Row]] = {
    1: [Row("81", "japan", _terms("0.05", 60, 60)),
        Row("8190", "mobile", _terms("0.12", 60, 60, connect="0.01"))],
    2: [Row("81", "japan", _terms("0.04", 30, 6)),
        Row("8190", "mobile", _terms("0.10", 30, 6, minimum="0.03")),
        Row("8190", "mobile", _terms("0.20", 30, 6), period="peak"),
        Row("8180", "mobile", _terms("0.09", 1, 1),
            valid_from=T0 + timedelta(days=12), valid_to=T0 + timedelta(days=14))],
    3: [Row("1", "nanp", _terms("0.01", 6, 6))],
    9: [Row("81", "fixed", Terms(Decimal("8.5"), 180, 180, 180, Decimal(0), Decimal(0),
                                 "JPY", 1)),
        Row("8190", "mobile", Terms(Decimal(10), 20, 20, 20, Decimal(0), Decimal(0),
                                    "JPY", 1))],
}
HISTORY = DeckHistory({"carrier-a": [(T0, 1), (T0 + timedelta(days=10), 2)],
                       "carrier-b": [(T0 + timedelta(days=5), 3)],
                       "ntt-freedial": [(T0, 9)]})
CARRIERS = {
    "carrier-a": Carrier("carrier-a", "A", dial_string="x{digits}", timezone="Asia/Tokyo",
                         periods=(PEAK,)),
    "carrier-b": Carrier("carrier-b", "B", dial_string="x{digits}"),
    "ntt-freedial": Carrier("ntt-freedial", "NTT", kind="inbound", currency="JPY",
                            timezone="Asia/Tokyo"),
}


def _reference(tariff: str, digits: str, at: datetime, seconds: Decimal
               ) -> tuple[int | None, Row | None, int, Money | None]:
    deck = HISTORY.deck_at(tariff, at)
    if deck is None:
        return None, None, 0, None
    carrier = CARRIERS[tariff]
    period = period_at(carrier.periods, at, carrier.tz)
    row = RateIndex({tariff: DECKS[deck]}).match_one(tariff, digits, "", period, at)
    if row is None:
        return deck, None, 0, None
    return deck, row, row.terms.billed(seconds), row.terms.cost(seconds)


def test_rate_all_agrees_with_the_plain_reference() -> None:
    rng = random.Random(7)
    numbers = ["819012345678", "818012345678", "81312345678", "12125550100", "4420712345"]
    cdrs = [Cdr(f"c{i}", rng.choice(["customer", "agent"]), "acme",
                E164(rng.choice(numbers)), rng.choice(["carrier-a", "carrier-b", None]),
                T0 + timedelta(hours=rng.randint(-24, 24 * 20), minutes=rng.randint(0, 59)),
                Decimal(rng.choice([0, 1, 6, 29, 30, 31, 59, 60, 61, 120, 121, 599]))
                + Decimal(rng.choice(["0", "0.4"])))
            for i in range(3000)]
    rater = CdrRater(CARRIERS, HISTORY, DECKS.__getitem__, FX)
    rated = rater.rate_all(cdrs)
    assert [r.cdr for r in rated] == cdrs
    problems = 0
    for r, c in zip(rated, cdrs, strict=True):
        tariff = c.carrier or c.inbound_tariff
        deck, row, billed, cost = _reference(tariff, c.destination.digits, c.started_at,
                                             c.duration_s)
        assert (r.tariff_id, r.deck_id) == (tariff, deck)
        if row is None:
            problems += 1
            assert r.problem is not None and r.cost == Money.zero("JPY")
            continue
        assert r.problem is None and cost is not None
        assert (r.prefix, r.billed_s, r.cost) == (row.prefix, billed, cost), c
        assert r.cost_base == cost.amount * FX.rate(cost.currency, "JPY")
        if c.leg == "customer":
            _, drow, _, direct = _reference("ntt-freedial", c.destination.digits,
                                            c.started_at, c.duration_s)
            assert r.direct_cost == direct
            assert r.direct_base == (direct.amount if direct else None)
        else:
            assert r.direct_tariff is None and r.direct_cost is None
    assert 0 < problems < len(cdrs)   # the mix has calls before any deck and unrated numbers


def test_rate_one_is_rate_all_of_one_and_reasons_are_worded() -> None:
    rater = CdrRater(CARRIERS, HISTORY, DECKS.__getitem__, FX)
    early = Cdr("c1", "customer", "acme", E164("12125550100"), "carrier-b", T0,
                Decimal(30))
    assert rater.rate(early).problem == \
        f"no deck of carrier-b in force at {T0.isoformat()}"
    unrated = Cdr("c2", "customer", "acme", E164("4420712345"), "carrier-b",
                  T0 + timedelta(days=6), Decimal(30))
    assert rater.rate(unrated).problem == "carrier-b deck 3 has no rate for +4420712345"
    # peak (Tokyo 10:00 on a Monday) vs off-peak mobile on deck 2
    monday_10_jst = datetime(2026, 3, 16, 1, 0, tzinfo=UTC)
    peak = rater.rate(Cdr("c3", "customer", "acme", E164("819012345678"), "carrier-a",
                          monday_10_jst, Decimal(60)))
    off = rater.rate(Cdr("c4", "customer", "acme", E164("819012345678"), "carrier-a",
                         monday_10_jst + timedelta(hours=12), Decimal(60)))
    assert (peak.cost, off.cost) == (Money.of("0.2000", "USD"), Money.of("0.1000", "USD"))
