"""Number-type gaps: a range a deck prices at another type's row (060 mobile at 81)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from routing_rates.carriers import Carrier
from routing_rates.duration import DurationModel
from routing_rates.index import Row
from routing_rates.numbering import JAPAN, deck_gaps, prefix_type, typed_rows
from routing_rates.service import RatingService
from routing_rates.tariff import Period, Terms
from shared.money import FxTable, Money
from shared.phone import E164, NumberType

D = Decimal
FX = FxTable.from_mapping("JPY", {"USD": "150"})
AT = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)   # Tue 12:00 Tokyo
MOBILE_060 = E164("816012345678")
MOBILE_090 = E164("819012345678")
FIXED = E164("81312345678")
NTT = [Row("81", "fixed", Terms(D("8.5"), 180, 180, 180, D(0), D(0), "JPY", 1)),
       Row("8160", "mobile", Terms(D(10), 20, 20, 20, D(0), D(0), "JPY", 1))]
INBOUND = Carrier("ntt-freedial", "NTT", kind="inbound", currency="JPY", timezone="Asia/Tokyo")


def usd(rate: str, minimum: str = "0") -> Terms:
    return Terms(D(rate), 60, 60, 60, D(0), D(minimum), "USD", 4)


PLIVO_LIKE = [Row("81", "Japan", usd("0.0385")), Row("8150", "Japan - IP", usd("0.1110")),
              Row("8170", "Japan - Mobile", usd("0.1398")),
              Row("8180", "Japan - Mobile", usd("0.1398")),
              Row("8190", "Japan - Mobile", usd("0.1398"))]


def service(*decks: tuple[Carrier, list[Row]]) -> RatingService:
    carriers = [c for c, _ in decks] + [INBOUND]
    return RatingService.from_rows(carriers, {c.id: r for c, r in decks} | {
        "ntt-freedial": NTT}, FX)


def carrier(cid: str, **kw: object) -> Carrier:
    return Carrier(cid, cid, dial_string=f"PJSIP/{{digits}}@{cid}", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("national", ["0601234567" + "8", "07012345678", "08012345678",
                                      "09012345678", "0312345678", "0612345678",
                                      "05012345678", "0120123456", "0570123456"])
def test_the_plan_agrees_with_libphonenumber(national: str) -> None:
    number = E164("81" + national[1:])
    kind = number.number_type
    if kind is NumberType.FIXED_LINE_OR_MOBILE:
        kind = NumberType.FIXED_LINE
    assert prefix_type(number.digits) is kind


def test_row_types_come_from_the_plan() -> None:
    assert prefix_type("81") is NumberType.FIXED_LINE        # the country row
    assert prefix_type("816") is NumberType.FIXED_LINE       # 06 Osaka
    assert prefix_type("81601") is NumberType.MOBILE
    assert prefix_type("8150") is NumberType.VOIP
    assert prefix_type("44") is None                          # no plan: no gaps
    assert set(JAPAN.values()) >= {NumberType.MOBILE, NumberType.VOIP, NumberType.TOLL_FREE}


def test_060_is_priced_at_the_mobile_rate_and_says_so() -> None:
    svc = service((carrier("a"), PLIVO_LIKE))
    routes, _ = svc.quote(MOBILE_060, AT, duration=DurationModel.fixed(60))
    (a,) = routes
    assert a.rate.amount == D("0.1398")            # not 81's 0.0385
    assert a.prefix == "8170" and a.gap is not None
    assert a.gap.matched_prefix == "81" and a.gap.number_type == "mobile"
    assert a.explain["gap"]["detail"].startswith("no mobile row for this range: the deck "
                                                 "prices it at 81 (Japan, fixed_line)")
    d = svc.decide(MOBILE_060, AT, duration=DurationModel.fixed(60))
    assert d.callback_cost.amount == D("0.1398") * 150
    assert d.explain["alternatives"][0]["gap"]["typed_prefix"] == "8170"


def test_no_gap_for_numbers_of_the_rows_type() -> None:
    svc = service((carrier("a"), PLIVO_LIKE))
    assert svc.rank(FIXED, AT)[0].gap is None
    assert svc.rank(FIXED, AT)[0].prefix == "81"
    assert svc.rank(MOBILE_090, AT)[0].gap is None


def test_a_deck_without_rows_of_the_type_has_no_gap() -> None:
    svc = service((carrier("a"), [Row("81", "Japan", usd("0.05"))]))
    (a,) = svc.rank(MOBILE_060, AT)
    assert a.gap is None and a.prefix == "81"


def test_the_types_rate_is_the_most_common_terms_then_the_higher() -> None:
    rows = [Row("8170", "m", usd("0.00308")), Row("8180", "m", usd("0.00308")),
            Row("8190", "m", usd("0.00308", "0.01"))]
    assert typed_rows(rows) == {("81", NumberType.MOBILE): "8170"}
    tie = [Row("8170", "m", usd("0.10")), Row("8190", "m", usd("0.20"))]
    assert typed_rows(tie) == {("81", NumberType.MOBILE): "8190"}


def test_a_gap_keeps_the_period_of_the_types_rows() -> None:
    offpeak = Period.parse("offpeak", ["mon", "tue", "wed", "thu", "fri"], "20:00", "08:00")
    b = carrier("b", timezone="Asia/Tokyo", periods=(offpeak,))
    svc = service((b, [Row("81", "fixed", usd("0.0355")), Row("8190", "m", usd("0.1368")),
                       Row("8190", "m off-peak", usd("0.1250"), period="offpeak")]))
    night = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)      # 22:00 Tokyo
    assert svc.rank(MOBILE_060, AT)[0].rate.amount == D("0.1368")
    assert svc.rank(MOBILE_060, night)[0].rate.amount == D("0.1250")


def test_import_report_names_the_ranges() -> None:
    assert deck_gaps(r.prefix for r in PLIVO_LIKE) == [("8160", "mobile", "81")]
    assert deck_gaps(["81", "8160", "8170", "8190", "8180", "8150"]) == []
    assert deck_gaps(["81"]) == []          # no mobile rows at all: a flat deck
    assert deck_gaps(["1", "44"]) == []


def test_max_rate_drops_carriers_above_it() -> None:
    svc = service((carrier("a"), PLIVO_LIKE),
                  (carrier("b"), [Row("8190", "m", usd("0.1368"))]))
    routes, dropped = svc.quote(MOBILE_090, AT, max_rate=Money.of("20.6", "JPY"))
    assert [r.carrier_id for r in routes] == ["b"]            # 0.1368 x 150 = 20.52
    assert [(x.carrier_id, x.reason) for x in dropped] == [("a", "above-max-rate")]
    assert dropped[0].detail == "20.9700 > 20.6000 JPY/min"


def test_max_rate_leaving_none_keeps_the_call_and_says_why() -> None:
    svc = service((carrier("a"), PLIVO_LIKE))
    d = svc.decide(MOBILE_060, AT, duration=DurationModel.fixed(600),
                   max_rate=Money.of("20", "JPY"))
    assert not d.callback and d.route is None
    assert d.reason == "no-carrier-within-max-rate"
    assert d.explain["dropped"] == [{"carrier": "a", "reason": "above-max-rate",
                                     "detail": "20.9700 > 20.0000 JPY/min"}]
    unlimited = svc.decide(MOBILE_060, AT, duration=DurationModel.fixed(600))
    assert unlimited.callback                  # 10 min: 209.7 JPY against 300 JPY
