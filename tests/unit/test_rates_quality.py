"""Carrier quality moves a carrier down the ranking, with the reason (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from routing_rates.carriers import Carrier
from routing_rates.decision import RouteQuote
from routing_rates.index import Row
from routing_rates.quality import Stats, demote, destination_of, verdict
from routing_rates.service import RatingService
from routing_rates.tariff import Terms
from shared.config import CarrierQuality
from shared.money import FxTable
from shared.phone import E164

D = Decimal
AT = datetime(2026, 12, 4, 3, tzinfo=UTC)
MOBILE = E164("819012345678")
FLOOR = CarrierQuality(min_asr=D("0.5"), max_pdd_s=D(4), min_calls=10)


def _quotes() -> RatingService:
    def usd(rate: str) -> Terms:
        return Terms(D(rate), 60, 60, 60, D(0), D(0), "USD", 4)

    carriers = [Carrier(c, c, dial_string=f"PJSIP/{{digits}}@{c}") for c in ("a", "b", "c")]
    return RatingService.from_rows(carriers, {
        "a": [Row("8190", "m", usd("0.1398"))], "b": [Row("8190", "m", usd("0.1368"))],
        "c": [Row("8190", "m", usd("0.1500"))]}, FxTable.from_mapping("JPY", {"USD": "150"}))


def test_the_verdict_names_each_figure_below_the_floor() -> None:
    poor = Stats(calls=20, answered=5, talk_s=D(500), pdd_calls=20, pdd_total_s=D(120))
    assert (poor.asr, poor.acd_s, poor.pdd_s) == (D("0.25"), D(100), D(6))
    assert verdict(poor, FLOOR) == "ASR 0.250 < 0.5, PDD 6.00 s > 4 s over 20 calls"
    assert verdict(poor, CarrierQuality(min_asr=D("0.2"))) is None
    assert verdict(Stats(9, 0, D(0), 0, D(0)), FLOOR) is None        # too few calls
    assert verdict(None, FLOOR) is None
    no_pdd = Stats(calls=20, answered=15, talk_s=D(900), pdd_calls=0, pdd_total_s=D(0))
    assert no_pdd.pdd_s is None and verdict(no_pdd, FLOOR) is None


def test_a_demoted_carrier_comes_after_the_others_with_its_reason() -> None:
    rates = _quotes()
    quotes = rates.rank(MOBILE, AT)
    assert [q.carrier_id for q in quotes] == ["b", "a", "c"]
    board = {("b", "mobile"): Stats(20, 5, D(500), 20, D(40)),
             ("a", "mobile"): Stats(30, 24, D(2400), 30, D(60)),
             ("b", "fixed_line"): Stats(50, 50, D(5000), 50, D(50))}
    ranked = demote(quotes, board, destination_of(MOBILE.digits), FLOOR)
    assert [q.carrier_id for q in ranked] == ["a", "c", "b"]
    assert ranked[2].demoted == "ASR 0.250 < 0.5 over 20 calls to mobile"
    assert ranked[2].explain["demoted"] == ranked[2].demoted
    assert ranked[2].explain["quality"] == {
        "destination": "mobile", "calls": 20, "answered": 5, "asr": "0.250",
        "acd_s": "100.0", "pdd_s": "2.00", "pdd_calls": 20}
    assert not ranked[0].demoted and "demoted" not in ranked[0].explain
    # the fixed-line figures are another destination's
    assert [q.carrier_id for q in demote(quotes, board, "fixed_line", FLOOR)] == [
        "b", "a", "c"]


def test_destinations_are_the_plans_number_types() -> None:
    assert destination_of("819012345678") == "mobile"
    assert destination_of("816012345678") == "mobile"
    assert destination_of("81312345678") == "fixed_line"
    assert destination_of("815012345678") == "voip"
    assert destination_of("442071234567") == "other"


def test_a_carrier_is_judged_on_its_rows_range_once_it_has_the_calls_else_the_type() -> None:
    """Carrier b, the cheapest, fails on 070 numbers only: it moves down for a 070 caller,
    not for a 090 caller whose range has figures of its own; with too few 090 legs the
    090 caller is judged on all of b's mobile legs. A 060 number that b's deck prices at
    the country's row (a gap) is judged on the type."""
    def usd(rate: str) -> Terms:
        return Terms(D(rate), 60, 60, 60, D(0), D(0), "USD", 4)

    carriers = [Carrier(c, c, dial_string=f"PJSIP/{{digits}}@{c}") for c in ("a", "b")]
    rates = RatingService.from_rows(carriers, {
        c: [Row("81", "JP", usd("0.0385")), Row("8170", "070", usd(rate)),
            Row("8190", "090", usd(rate))] for c, rate in (("a", "0.1398"), ("b", "0.1368"))},
        FxTable.from_mapping("JPY", {"USD": "150"}))
    m070, m090, m060 = E164("817012345678"), E164("819012345678"), E164("816012345678")
    board = {("b", "8170"): Stats(20, 4, D(400), 0, D(0)),
             ("b", "8190"): Stats(40, 36, D(3600), 0, D(0)),
             ("b", "mobile"): Stats(60, 40, D(4000), 0, D(0))}

    def first(number: E164, figures: dict[tuple[str, str], Stats]) -> RouteQuote:
        return demote(rates.rank(number, AT), figures, destination_of(number.digits),
                      FLOOR)[0]

    assert first(m090, board).carrier_id == "b"
    moved = demote(rates.rank(m070, AT), board, "mobile", FLOOR)
    assert [q.carrier_id for q in moved] == ["a", "b"]
    assert moved[1].demoted == "ASR 0.200 < 0.5 over 20 calls to 8170"
    assert moved[1].explain["quality"]["destination"] == "8170"
    # too few 090 legs: judged on every mobile leg of b (ASR 13/29 = 0.448)
    few = board | {("b", "8190"): Stats(9, 9, D(900), 0, D(0)),
                   ("b", "mobile"): Stats(29, 13, D(1300), 0, D(0))}
    assert first(m090, few).carrier_id == "a"
    assert demote(rates.rank(m090, AT), few, "mobile", FLOOR)[1].demoted.endswith(
        "over 29 calls to mobile")
    # the 060 gap: priced at b's mobile rate, judged on b's mobile legs, not 070's
    gap = rates.rank(m060, AT)[0]
    assert gap.carrier_id == "b" and gap.gap is not None
    assert first(m060, board).carrier_id == "b"
