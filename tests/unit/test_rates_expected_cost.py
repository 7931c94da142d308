"""The cached expected cost (billed profiles per X/Y, the linear path) equals the sum over
every point of the distribution, for any terms and distribution."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_rates.duration import BUILTIN, DistributionError, DurationModel, load_distributions
from routing_rates.tariff import Terms

D = Decimal
EXACT = D("1e-18")

terms_st = st.builds(
    Terms,
    rate=st.decimals(min_value=0, max_value=50, places=4),
    unit_s=st.sampled_from([1, 6, 20, 60, 180]),
    initial_s=st.sampled_from([0, 1, 6, 20, 30, 60, 180]),
    increment_s=st.sampled_from([1, 6, 20, 60, 180]),
    connect_fee=st.decimals(min_value=0, max_value=5, places=3),
    min_cost=st.decimals(min_value=0, max_value=3, places=2),
    currency=st.just("JPY"),
    decimals=st.integers(min_value=0, max_value=5))
models_st = st.one_of(
    st.sampled_from(list(BUILTIN.values())),
    st.dictionaries(st.integers(min_value=0, max_value=7200),
                    st.integers(min_value=1, max_value=1000), min_size=1, max_size=60)
    .map(lambda w: DurationModel.from_histogram("h", w)))


@settings(max_examples=300, deadline=None)
@given(terms_st, models_st)
def test_cached_expected_cost_equals_the_sum_over_every_point(terms: Terms,
                                                              model: DurationModel) -> None:
    want = model.expected_cost_by_points(terms).amount.quantize(EXACT)
    assert model.expected_cost(terms).amount.quantize(EXACT) == want
    assert model.expected_cost(terms).amount.quantize(EXACT) == want   # from the memo


def test_rounding_and_the_minimum_are_billed_per_call() -> None:
    ntt_fixed = Terms(D("8.5"), 180, 180, 180, D(0), D(0), "JPY", 0)  # rounds 8.5 up to 9
    floor = Terms(D("1"), 60, 1, 1, D(0), D("2"), "JPY", 2)          # 2 yen for up to 120 s
    model = DurationModel.from_histogram("h", {30: 1, 200: 1})
    assert model.expected_cost(ntt_fixed).amount == D("13")   # (9 + 17) / 2
    assert model.expected_cost(floor).amount == D("2.67")     # (2 + 3.34) / 2


def test_a_log_normal_has_the_configured_mean_and_refuses_nonsense() -> None:
    text = "[distributions.quick]\nlognormal_mean_s = 25\nlognormal_sigma = 0.8\n"
    model = load_distributions(text, "d.toml")["quick"]
    assert abs(model.mean - 25) < 1          # whole-second buckets, mass at the upper end
    with pytest.raises(DistributionError, match=r"d.toml: \[distributions.quick\]: .*sigma"):
        load_distributions(text.replace("0.8", "-1"), "d.toml")
    with pytest.raises(DistributionError, match="exactly one of"):
        load_distributions(text + "exponential_mean_s = 3\n", "d.toml")
