"""A snapshot's rankings, kept per matched rows: every number gets the answer ranking it
afresh gives, with its own dial strings; a new quality board or duration model is ranked
afresh (a reload's new snapshot: tests/integration/test_rates_service.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from callback_server.routing import Routing
from routing_rates.carriers import Carrier
from routing_rates.duration import DurationModel
from routing_rates.index import Row
from routing_rates.quality import QualityBoard, Stats
from routing_rates.service import RatingService
from routing_rates.tariff import Period, Terms
from shared.config import CarrierQuality
from shared.money import FxTable, Money
from shared.phone import E164

D = Decimal
FX = FxTable.from_mapping("JPY", {"USD": "150"})
AT = datetime(2026, 12, 4, 3, tzinfo=UTC)          # a Friday, noon in Tokyo
FLOOR = CarrierQuality(min_asr=D("0.5"), min_calls=10)
PEAK = Period.parse("peak", ["mon", "tue", "wed", "thu", "fri"], "08:00", "19:00")


def _terms(rate: str, unit: int = 60, initial: int = 60, increment: int = 60) -> Terms:
    return Terms(D(rate), unit, initial, increment, D(0), D(0), "USD", 4)


def _service() -> RatingService:
    carriers = [Carrier("a", "a", dial_string="PJSIP/{digits}@a"),
                Carrier("b", "b", dial_string="PJSIP/{e164}@b", timezone="Asia/Tokyo",
                        periods=(PEAK,)),
                Carrier("c", "c", dial_string="PJSIP/{digits}@c", max_channels=0),
                Carrier("d", "d", dial_string="PJSIP/{digits}@d", enabled=False)]
    return RatingService.from_rows(carriers, {
        "a": [Row("81", "JP", _terms("0.0385", 1, 1, 1)), Row("8190", "m", _terms("0.1398")),
              Row("81901", "m1", _terms("0.1200")), Row("8180", "m", _terms("0.1300"))],
        "b": [Row("81", "JP", _terms("0.0355", 60, 6, 6)),
              Row("8190", "m", _terms("0.1368", 60, 6, 6)),
              Row("8190", "m peak", _terms("0.1600", 60, 6, 6), period="peak"),
              Row("8170", "m", _terms("0.1368", 60, 6, 6))],
        "c": [Row("8190", "m", _terms("0.1000"))],
        "d": [Row("81", "JP", _terms("0.0100"))]}, FX)


NUMBERS = st.builds(lambda head, tail: E164(head + tail),
                    st.sampled_from(["8190", "8180", "8170", "8160", "813", "8150", "4420"]),
                    st.text("0123456789", min_size=7, max_size=8))
TIMES = st.integers(0, 7 * 24).map(lambda h: AT + timedelta(hours=h))
LIMITS = st.sampled_from([None, Money.of("20.6", "JPY"), Money.of("0.13", "USD")])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NUMBERS, TIMES, LIMITS), min_size=2, max_size=12))
def test_every_number_gets_the_ranking_it_would_get_alone(
        calls: list[tuple[E164, datetime, Money | None]]) -> None:
    shared = _service()
    for number, at, max_rate in calls:
        alone = _service().quote(number, at, max_rate=max_rate)   # its first ranking
        assert shared.quote(number, at, max_rate=max_rate) == alone, (number, at, max_rate)


async def test_numbers_of_one_prefix_share_a_ranking_each_with_its_own_dial_string() -> None:
    service = _service()
    routing = Routing(service, ())
    first = await routing.routes(E164("819022221111"), AT)
    second = await routing.routes(E164("819033334444"), AT)
    assert len(service.snapshot.ranked) == 1
    assert [(r.carrier_id, r.endpoint) for r in second] == [
        ("b", "PJSIP/+819033334444@b"), ("a", "PJSIP/819033334444@a")]
    assert [r.carrier_id for r in first] == [r.carrier_id for r in second]
    # another prefix (its own row at carrier a) is its own ranking
    await routing.routes(E164("819013334444"), AT)
    assert len(service.snapshot.ranked) == 2


def test_a_refreshed_quality_board_or_new_call_lengths_are_ranked_afresh() -> None:
    service = _service()
    service.quality_board = QualityBoard(pool=None)
    mobile = E164("819022221111")
    assert [q.carrier_id for q in service.rank(mobile, AT, quality=FLOOR)] == ["b", "a"]
    # the board's refresh swaps in new figures: carrier b is now below the floor
    service.quality_board.board = {("b", "mobile"): Stats(20, 2, D(100), 0, D(0))}
    ranked = service.rank(E164("819055556666"), AT, quality=FLOOR)
    assert [(q.carrier_id, q.demoted) for q in ranked] == [
        ("a", ""), ("b", "ASR 0.100 < 0.5 over 20 calls to mobile")]
    # a merchant's new call lengths (a new model): the 6/6 carrier's peak rate is dearer
    # per minute, so it is the cheaper for short calls only
    short = DurationModel("short", ((1, D(1)),))
    assert [q.carrier_id for q in service.rank(mobile, AT, duration=short)] == ["b", "a"]
    long = DurationModel("long", ((3600, D(1)),))
    assert [q.carrier_id for q in service.rank(mobile, AT, duration=long)] == ["a", "b"]
