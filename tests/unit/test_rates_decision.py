from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from routing_rates.carriers import Carrier
from routing_rates.duration import DurationModel
from routing_rates.index import Row
from routing_rates.service import RatingService, UnknownTariff
from routing_rates.tariff import Terms
from shared.money import FxTable, Money
from shared.phone import E164

D = Decimal
FX = FxTable.from_mapping("JPY", {"USD": "150"})
AT = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)   # Tue 12:00 Tokyo
MOBILE = E164("819012345678")
FIXED = E164("81312345678")


def usd(rate: str, x: int = 60, y: int = 60) -> Terms:
    return Terms(D(rate), 60, x, y, D(0), D(0), "USD", 4)


NTT_MOBILE = Terms(D(10), 20, 20, 20, D(0), D(0), "JPY", 1)
NTT_FIXED = Terms(D("8.5"), 180, 180, 180, D(0), D(0), "JPY", 1)
NTT = [Row("81", "fixed", NTT_FIXED), Row("8190", "mobile", NTT_MOBILE)]
INBOUND = Carrier("ntt-freedial", "NTT", kind="inbound", currency="JPY", timezone="Asia/Tokyo")


def carrier(cid: str, **kw: object) -> Carrier:
    return Carrier(cid, cid, dial_string=f"PJSIP/{{digits}}@{cid}", **kw)  # type: ignore[arg-type]


def service(*decks: tuple[Carrier, list[Row]]) -> RatingService:
    carriers = [c for c, _ in decks] + [INBOUND]
    rows = {c.id: r for c, r in decks} | {"ntt-freedial": NTT}
    return RatingService.from_rows(carriers, rows, FX)


@pytest.mark.parametrize(("rate", "callback"), [("0.1999", True), ("0.2000", False),
                                                ("0.2001", False)])
def test_decision_around_break_even(rate: str, callback: bool) -> None:
    # One-minute calls: direct = 3 x 10 JPY = 30 JPY; carrier = rate x 150 JPY.
    svc = service((carrier("a"), [Row("8190", "mobile", usd(rate))]))
    d = svc.decide(MOBILE, AT, duration=DurationModel.fixed(60))
    assert d.direct_cost == Money.of("30", "JPY")
    assert d.callback_cost.amount == D(rate) * 150
    assert d.callback is callback
    assert d.reason == ("callback-cheaper" if callback else "direct-cheaper")


def test_answer_mode_adds_the_billed_announcement() -> None:
    svc = service((carrier("a"), [Row("8190", "mobile", usd("0.1398"))]))
    early = svc.decide(MOBILE, AT, duration=DurationModel.fixed(300))
    answer = svc.decide(MOBILE, AT, duration=DurationModel.fixed(300), announce_mode="answer",
                        announce_s=D(5))
    assert early.direct_cost.amount == D(150)
    assert early.callback_cost.amount == D("104.85")          # 5 min x 0.1398 x 150
    assert answer.callback_cost.amount == D("114.85")         # + one 10 JPY unit
    assert early.callback and answer.callback
    assert early.explain["edge_leg"]["cost"] == "0.0000"


def test_thirty_second_call_with_60_60_loses_but_1_1_wins() -> None:
    thirty = DurationModel.fixed(30)
    a = service((carrier("a"), [Row("8190", "mobile", usd("0.1398"))]))
    d = service((carrier("d"), [Row("8190", "mobile", usd("0.085", 1, 1))]))
    assert not a.decide(MOBILE, AT, duration=thirty).callback     # 20.97 vs 20 JPY
    assert d.decide(MOBILE, AT, duration=thirty).callback         # 6.375 vs 20 JPY


def test_fixed_line_callers_are_kept() -> None:
    svc = service((carrier("a"), [Row("81", "fixed", usd("0.0385"))]))
    d = svc.decide(FIXED, AT)
    assert not d.callback
    assert d.explain["direct"]["prefix"] == "81"


def test_ranking_and_filters() -> None:
    svc = service(
        (carrier("a", max_channels=2), [Row("8190", "m", usd("0.1398"))]),
        (carrier("b"), [Row("8190", "m", usd("0.1368", 6, 6))]),
        (carrier("c", enabled=False), [Row("8190", "m", usd("0.01"))]),
        (carrier("e"), [Row("44", "uk", usd("0.01"))]),
        (carrier("f"), [Row("8190", "m", usd("0.185"))]),
    )
    routes, dropped = svc.quote(MOBILE, AT, busy={"a": 1},
                                max_cost=Money.of("0.5", "USD"))
    assert [r.carrier_id for r in routes] == ["b", "a"]
    assert routes[0].endpoint == "PJSIP/819012345678@b"
    assert {(x.carrier_id, x.reason) for x in dropped} == {
        ("c", "disabled"), ("e", "no-route"), ("f", "above-max-cost")}
    routes, dropped = svc.quote(MOBILE, AT, busy={"a": 2})
    assert ("a", "channel-cap") in {(x.carrier_id, x.reason) for x in dropped}


def test_no_route_and_unknown_tariff() -> None:
    svc = service((carrier("a"), [Row("44", "uk", usd("0.01"))]))
    d = svc.decide(MOBILE, AT)
    assert not d.callback and d.reason == "no-carrier-route"
    with pytest.raises(UnknownTariff):
        svc.decide(MOBILE, AT, inbound_tariff="nope")


def test_period_pricing_in_carrier_timezone() -> None:
    from routing_rates.tariff import Period

    offpeak = Period.parse("offpeak", ["mon", "tue", "wed", "thu", "fri"], "20:00", "08:00")
    b = carrier("b", timezone="Asia/Tokyo", periods=(offpeak,))
    svc = service((b, [Row("8190", "m", usd("0.1368")),
                       Row("8190", "m off-peak", usd("0.1250"), period="offpeak")]))
    noon = svc.rank(MOBILE, AT)[0]
    night = svc.rank(MOBILE, datetime(2026, 11, 24, 13, 0, tzinfo=UTC))[0]  # 22:00 Tokyo
    assert noon.rate.amount == D("0.1368")
    assert night.rate.amount == D("0.1250")


def test_cost_of_one_leg() -> None:
    svc = service((carrier("a"), [Row("8190", "mobile", usd("0.1398"))]))
    assert svc.cost("a", MOBILE, AT, 61) == Money.of("0.2796", "USD")
    assert svc.billed_seconds("a", MOBILE, AT, 61) == 120
    assert svc.cost("ntt-freedial", MOBILE, AT, 61) == Money.of("40", "JPY")
    with pytest.raises(LookupError):
        svc.cost("a", E164("4420123456"), AT, 61)
