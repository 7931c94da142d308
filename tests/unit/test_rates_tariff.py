from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from routing_rates.carriers import Carrier, from_json_checked
from routing_rates.duration import DEFAULT_DURATION, DurationModel
from routing_rates.index import Row
from routing_rates.service import RatingService
from routing_rates.tariff import Period, TariffError, Terms, billed_seconds, period_at
from shared.money import FxTable, Money
from shared.phone import E164

D = Decimal


def terms(rate: str = "0.1398", unit: int = 60, x: int = 60, y: int = 60, connect: str = "0",
          minimum: str = "0", currency: str = "USD", decimals: int = 4) -> Terms:
    return Terms(D(rate), unit, x, y, D(connect), D(minimum), currency, decimals)


@pytest.mark.parametrize(("d", "x", "y", "billed"), [
    (0, 60, 60, 0), (1, 60, 60, 60), (60, 60, 60, 60), (61, 60, 60, 120), (120, 60, 60, 120),
    (121, 60, 60, 180), (0, 30, 6, 0), (30, 30, 6, 30), (31, 30, 6, 36), (36, 30, 6, 36),
    (37, 30, 6, 42), (1, 1, 1, 1), (59, 1, 1, 59), (5, 0, 6, 6), (6, 0, 6, 6), (7, 0, 6, 12),
    (20, 20, 20, 20), (21, 20, 20, 40), (180, 180, 180, 180), (181, 180, 180, 360),
])
def test_billed_seconds_at_the_boundaries(d: int, x: int, y: int, billed: int) -> None:
    assert billed_seconds(d, x, y) == billed


def test_fractional_durations_round_up_to_the_second() -> None:
    assert billed_seconds(D("60.001"), 60, 60) == 120
    assert billed_seconds(D("0.2"), 1, 1) == 1
    assert billed_seconds(D("-3"), 60, 60) == 0


def test_plivo_jp_mobile_60_60() -> None:
    t = terms()
    assert t.cost(0) == Money.of("0", "USD")
    assert t.cost(1) == Money.of("0.1398", "USD")
    assert t.cost(60) == Money.of("0.1398", "USD")
    assert t.cost(61) == Money.of("0.2796", "USD")
    assert t.cost(300) == Money.of("0.6990", "USD")


def test_ntt_freedial_mobile_is_10_jpy_per_20_s_exactly() -> None:
    mobile = terms("10", unit=20, x=20, y=20, currency="JPY", decimals=1)
    assert mobile.cost(1).amount == D("10")
    assert mobile.cost(20).amount == D("10")
    assert mobile.cost(21).amount == D("20")
    assert mobile.cost(30).amount == D("20")      # the research note's 30-second call
    assert mobile.cost(300).amount == D("150")    # 5 minutes: 15 units
    assert mobile.per_minute == Money.of("30", "JPY")


def test_ntt_freedial_fixed_is_8_5_jpy_per_180_s() -> None:
    fixed = terms("8.5", unit=180, x=180, y=180, currency="JPY", decimals=1)
    assert fixed.cost(1).amount == D("8.5")
    assert fixed.cost(180).amount == D("8.5")
    assert fixed.cost(181).amount == D("17.0")


def test_cost_rounds_up_to_the_deck_decimals() -> None:
    # 0.0385 USD/min billed 1/1 for 7 s = 0.004491666... -> 0.0045
    t = terms("0.0385", x=1, y=1)
    assert t.cost(7).amount == D("0.0045")
    assert terms("0.0385", x=1, y=1, decimals=2).cost(7).amount == D("0.01")
    # an exact value is not bumped
    assert terms("0.06", x=1, y=1).cost(1).amount == D("0.0010")


def test_connect_fee_and_minimum_cost() -> None:
    t = terms("0.06", x=1, y=1, connect="0.01", minimum="0.02")
    assert t.cost(0).amount == D("0")               # never answered: nothing at all
    assert t.cost(1).amount == D("0.0200")          # 0.001 + 0.01 < minimum 0.02
    assert t.cost(60).amount == D("0.0700")         # 0.06 + 0.01


def test_per_second_rate_unit() -> None:
    t = terms("0.00308", unit=1, x=60, y=60, decimals=5)
    assert t.cost(30).amount == D("0.18480")
    assert t.per_minute.amount == D("0.18480")


def test_terms_refuse_nonsense() -> None:
    with pytest.raises(TariffError):
        terms("-1")
    with pytest.raises(TariffError):
        terms(y=0)


def test_expected_cost_is_not_cost_of_expected_duration() -> None:
    t = terms()  # 60/60
    model = DurationModel.from_histogram("two", {30: 1, 90: 1})   # mean 60 s
    assert model.mean == 60
    assert t.cost(60).amount == D("0.1398")
    # half the calls bill 1 min, half bill 2 min
    assert model.expected_cost(t).amount == D("0.2097")


def test_default_distribution_mean_is_about_155_s() -> None:
    assert abs(DEFAULT_DURATION.mean - 155) < 2
    assert sum(p for _, p in DEFAULT_DURATION.points) == 1


def test_learned_distribution_from_samples() -> None:
    model = DurationModel.from_samples("cdr", [D("10.2"), 11, 30, 30])
    assert dict(model.points) == {11: D("0.5"), 30: D("0.5")}


PEAK = Period.parse("peak", ["mon", "tue", "wed", "thu", "fri"], "08:00", "19:00")
NIGHT = Period.parse("night", ["fri"], "22:00", "06:00")
TOKYO = ZoneInfo("Asia/Tokyo")


@pytest.mark.parametrize(("utc", "expected"), [
    ("2026-11-23T23:00:00", "peak"),    # Tue 08:00 Tokyo
    ("2026-11-23T22:59:59", ""),        # Tue 07:59:59 Tokyo
    ("2026-11-24T10:00:00", ""),        # Tue 19:00 Tokyo: end is exclusive
    ("2026-11-27T13:30:00", "night"),   # Fri 22:30 Tokyo
    ("2026-11-27T20:00:00", "night"),   # Sat 05:00 Tokyo: Friday's night window
    ("2026-11-28T20:00:00", ""),        # Sun 05:00 Tokyo
])
def test_periods_in_the_carrier_timezone(utc: str, expected: str) -> None:
    at = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    assert period_at((PEAK, NIGHT), at, TOKYO) == expected


def test_whole_day_period() -> None:
    weekend = Period.parse("offpeak", ["sat", "sun"], "00:00", "00:00")
    at = datetime(2026, 11, 28, 14, 59, tzinfo=UTC)  # Sat 23:59 Tokyo
    assert period_at((weekend,), at, TOKYO) == "offpeak"


def test_a_holiday_period_holds_on_new_years_day_not_on_a_weekday() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    peak = Period.parse("peak", ["mon", "tue", "wed", "thu", "fri"], "08:00", "20:00")
    holiday = Period.parse("holiday", ["sun", "hol"], "00:00", "00:00")
    assert holiday.holidays and not peak.holidays
    new_year = datetime(2027, 1, 1, 12, tzinfo=tokyo)         # a Friday, 元日
    weekday = datetime(2027, 1, 8, 12, tzinfo=tokyo)          # the Friday after
    assert period_at((peak, holiday), new_year, tokyo) == "holiday"
    assert period_at((peak, holiday), weekday, tokyo) == "peak"
    # the small hours after a holiday evening belong to the holiday
    assert period_at((Period.parse("night", ["hol"], "22:00", "06:00"),),
                     datetime(2027, 1, 2, 3, tzinfo=tokyo), tokyo) == "night"
    assert period_at((Period.parse("night", ["hol"], "22:00", "06:00"),),
                     datetime(2027, 1, 9, 3, tzinfo=tokyo), tokyo) == ""

    b = Carrier("b", "b", timezone="Asia/Tokyo", periods=(peak, holiday),
                dial_string="PJSIP/{digits}@b")
    assert from_json_checked(b.to_json()) == b              # as the edge receives it

    def usd(rate: str) -> Terms:
        return Terms(Decimal(rate), 60, 6, 6, Decimal(0), Decimal(0), "USD", 4)

    rates = RatingService.from_rows([b], {"b": [
        Row("8190", "mobile", usd("0.1368")),
        Row("8190", "mobile (holidays)", usd("0.1100"), period="holiday")]},
        FxTable.from_mapping("JPY", {"USD": "150"}))
    mobile = E164("819012345678")
    assert rates.rank(mobile, new_year)[0].rate.amount == Decimal("0.1100")
    assert rates.rank(mobile, new_year)[0].explain["period"] == "holiday"
    assert rates.rank(mobile, weekday)[0].rate.amount == Decimal("0.1368")


def test_an_unknown_day_names_hol_in_the_error() -> None:
    with pytest.raises(TariffError, match="mon..sun or hol"):
        Period.parse("x", ["feast"], "00:00", "00:00")
