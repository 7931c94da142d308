from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from routing_rates.index import RateIndex, Row, brute_force
from routing_rates.tariff import Terms

T1 = Terms(Decimal("0.1"), 60, 60, 60, Decimal(0), Decimal(0), "USD", 4)
T2 = Terms(Decimal("0.2"), 60, 1, 1, Decimal(0), Decimal(0), "USD", 4)
T3 = Terms(Decimal("0.3"), 1, 6, 6, Decimal(0), Decimal(0), "EUR", 5)
AT = datetime(2026, 11, 22, tzinfo=UTC)

digits = st.text(alphabet="1289", min_size=1, max_size=5)
row_strategy = st.builds(
    Row,
    prefix=digits,
    destination=st.just("x"),
    terms=st.sampled_from([T1, T2, T3]),
    origins=st.one_of(st.just(()), st.lists(st.text(alphabet="129", min_size=1, max_size=2),
                                            min_size=1, max_size=3).map(tuple)),
    period=st.sampled_from(["", "", "peak"]),
    valid_from=st.sampled_from([None, None, AT - timedelta(days=1), AT + timedelta(days=1)]),
)


def _unique(rows: list[Row]) -> list[Row]:
    """Decks have one row per key (the importer enforces it)."""
    seen: set[tuple[object, ...]] = set()
    out = []
    for r in rows:
        key = (r.prefix, r.origins, r.period, r.valid_from)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


@settings(max_examples=300, deadline=None)
@given(decks=st.lists(st.lists(row_strategy, max_size=25), min_size=1, max_size=4),
       numbers=st.lists(st.text(alphabet="12890", min_size=1, max_size=8), min_size=1,
                        max_size=20),
       origin=st.sampled_from(["", "1", "12", "93", "2"]),
       period=st.sampled_from(["", "peak", "offpeak"]),
       at=st.sampled_from([None, AT]))
def test_index_agrees_with_brute_force(decks: list[list[Row]], numbers: list[str],
                                       origin: str, period: str,
                                       at: datetime | None) -> None:
    decks_by_id = {f"c{i}": _unique(rows) for i, rows in enumerate(decks)}
    index = RateIndex(decks_by_id)
    periods = [period] * len(decks_by_id)
    for number in numbers:
        got = index.match(number, origin, periods, at)
        want = tuple(brute_force(rows, number, origin, period, at)
                     for rows in decks_by_id.values())
        assert got == want, number
        for i, cid in enumerate(decks_by_id):
            assert index.match_one(cid, number, origin, period, at) == want[i]


def test_longest_prefix_per_carrier_independently() -> None:
    a = [Row("81", "JP", T1), Row("8190", "JP mobile", T2)]
    b = [Row("81", "JP", T3)]
    index = RateIndex({"a": a, "b": b})
    assert index.match("819012345678") == (a[1], b[0])
    assert index.match("81312345678") == (a[0], b[0])
    assert index.match("4420") == (None, None)
    assert index.match("8") == (None, None)


def test_origin_specific_row_beats_generic_at_the_same_prefix() -> None:
    generic = Row("971", "UAE", T1)
    morocco = Row("971", "UAE from Morocco", T2, origins=("212",))
    index = RateIndex({"a": [generic, morocco]})
    assert index.match("97150")[0] is generic
    assert index.match("97150", origin="212600")[0] is morocco
    assert index.match("97150", origin="33")[0] is generic


def test_origin_only_row_falls_back_to_shorter_prefix() -> None:
    short = Row("97", "short", T1)
    only = Row("971", "UAE from Morocco", T2, origins=("212",))
    index = RateIndex({"a": [short, only]})
    assert index.match("97150", origin="44")[0] is short
    assert index.match("97150", origin="2125")[0] is only


def test_period_row_applies_only_in_its_period() -> None:
    anytime = Row("8190", "mobile", T1)
    offpeak = Row("8190", "mobile off-peak", T2, period="offpeak")
    index = RateIndex({"b": [anytime, offpeak]})
    assert index.match("819012345678", periods=[""])[0] is anytime
    assert index.match("819012345678", periods=["offpeak"])[0] is offpeak


def test_row_validity_dates() -> None:
    old = Row("1", "US until tomorrow", T1, valid_to=AT + timedelta(days=1))
    index = RateIndex({"c": [old]})
    assert index.match("1202", at=AT)[0] is old
    assert index.match("1202", at=AT + timedelta(days=2))[0] is None
