"""Rating a consultation (billing.rating): examples of each rule, then properties
(hypothesis): the charge grows with talk time, the tax is floor(total × 10/110), and
seconds_affordable is the exact inverse of rate for a balance."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import billing
from billing.rating import (
    Charge,
    Terms,
    TermsError,
    rate,
    seconds_affordable,
    tax_included,
    whole_units_s,
)


def test_per_started_minute_with_tax_inside_the_total() -> None:
    terms = Terms(price_per_minute_yen=330)
    assert rate(0, terms) == Charge(0, 0, 0, 0, False)
    assert rate(1, terms) == Charge(330, 30, 60, 1, False)
    assert rate(60, terms) == Charge(330, 30, 60, 60, False)
    assert rate(61, terms) == Charge(660, 60, 120, 61, False)
    assert rate(155, terms).net_yen == 990 - 90


def test_tax_is_floor_of_ten_elevenths_of_the_total() -> None:
    assert [tax_included(t) for t in (0, 10, 11, 109, 110, 219, 220, 1000)] == [
        0, 0, 1, 9, 10, 19, 20, 90]
    assert tax_included(108, 8) == 8      # the reduced rate: floor(108 × 8/108)


def test_a_unit_costing_a_fraction_of_a_yen_is_rounded_once_down() -> None:
    terms = Terms(price_per_minute_yen=100, unit_s=7)   # 11.67 yen per unit
    assert rate(7, terms).total_yen == 11
    assert rate(14, terms).total_yen == 23             # not 2 × 11
    assert rate(13, terms).billed_s == 14


def test_grace_period_is_free_and_deducted() -> None:
    terms = Terms(price_per_minute_yen=300, unit_s=10, grace_s=30)
    assert rate(30, terms) == Charge(0, 0, 0, 30, False)
    assert rate(31, terms) == Charge(50, 4, 10, 31, False)
    assert rate(90, terms).billed_s == 60


def test_minimum_charge_once_anything_is_billed() -> None:
    terms = Terms(price_per_minute_yen=200, unit_s=10, grace_s=5, minimum_yen=500)
    assert rate(5, terms).total_yen == 0
    assert rate(6, terms).total_yen == 500
    assert rate(5 + 150, terms).total_yen == 500
    assert rate(5 + 160, terms).total_yen == 533
    assert terms.first_unit_yen() == 500


def test_talk_past_the_maximum_is_not_billed() -> None:
    terms = Terms(price_per_minute_yen=600, max_talk_s=1200)
    assert rate(1200, terms) == Charge(12_000, 1090, 1200, 1200, False)
    assert rate(5000, terms) == Charge(12_000, 1090, 1200, 5000, True)


def test_affordable_seconds_examples() -> None:
    terms = Terms(price_per_minute_yen=300, unit_s=60, grace_s=30, max_talk_s=3600)
    assert seconds_affordable(0, terms) == 30
    assert seconds_affordable(299, terms) == 30
    assert seconds_affordable(300, terms) == 90
    assert seconds_affordable(1000, terms) == 30 + 3 * 60
    assert seconds_affordable(10**9, terms) == 3600
    assert seconds_affordable(5, Terms(price_per_minute_yen=0, max_talk_s=99)) == 99
    with_minimum = Terms(price_per_minute_yen=60, unit_s=1, minimum_yen=100)
    assert seconds_affordable(99, with_minimum) == 0
    assert seconds_affordable(100, with_minimum) == 100


@pytest.mark.parametrize("field, value", [
    ("price_per_minute_yen", -1), ("unit_s", 0), ("grace_s", 3601), ("minimum_yen", -5),
    ("max_talk_s", 0), ("tax_percent", 101), ("unit_s", True), ("minimum_yen", "10")])
def test_bad_terms_name_the_field(field: str, value: object) -> None:
    with pytest.raises(TermsError) as caught:
        Terms(**{"price_per_minute_yen": 100, field: value})  # type: ignore[arg-type]
    assert caught.value.field == field


def test_negative_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        rate(-1, Terms(100))
    with pytest.raises(ValueError):
        seconds_affordable(-1, Terms(100))


terms_st = st.builds(
    Terms,
    price_per_minute_yen=st.integers(0, 5000),
    unit_s=st.sampled_from([1, 6, 7, 10, 15, 20, 30, 60, 90]),
    grace_s=st.integers(0, 120),
    minimum_yen=st.integers(0, 3000),
    max_talk_s=st.integers(1, 4 * 3600),
    tax_percent=st.sampled_from([8, 10]))


@settings(max_examples=2000, deadline=None)
@given(terms_st, st.integers(0, 6 * 3600), st.integers(0, 6 * 3600))
def test_charge_never_shrinks_with_more_talk(terms: Terms, a: int, b: int) -> None:
    short, long = rate(min(a, b), terms), rate(max(a, b), terms)
    assert short.total_yen <= long.total_yen and short.billed_s <= long.billed_s
    assert long.tax_yen == tax_included(long.total_yen, terms.tax_percent)
    assert 0 <= long.tax_yen <= long.total_yen
    billable = max(0, min(max(a, b), terms.max_talk_s) - terms.grace_s)
    assert long.billed_s % terms.unit_s == 0
    assert billable <= long.billed_s < billable + terms.unit_s


@settings(max_examples=3000, deadline=None)
@given(terms_st, st.integers(0, 200_000))
def test_affordable_seconds_is_the_inverse_of_rate(terms: Terms, balance: int) -> None:
    affordable = seconds_affordable(balance, terms)
    assert affordable >= min(terms.grace_s, terms.max_talk_s)
    assert rate(affordable, terms).total_yen <= balance
    if affordable < terms.max_talk_s:
        # one more second starts another billing unit, and that one the balance can't pay
        assert rate(affordable + 1, terms).total_yen > balance
        assert rate(affordable + terms.unit_s, terms).total_yen > balance


def test_no_float_in_billing() -> None:
    """Money is integer yen or Decimal: no float literal, float() or true division of
    amounts anywhere in the package."""
    offences = []
    for path in sorted(Path(billing.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, float):
                offences.append(f"{path.name}:{node.lineno}: float literal {node.value}")
            elif isinstance(node, ast.Name) and node.id == "float":
                offences.append(f"{path.name}:{node.lineno}: float")
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                offences.append(f"{path.name}:{node.lineno}: true division (/)")
    assert offences == []


def test_whole_units_examples() -> None:
    terms = Terms(100, unit_s=60, grace_s=30, max_talk_s=600)
    assert [whole_units_s(t, terms) for t in (0, 1, 30, 31, 90, 91, 599, 9999)] == [
        0, 30, 30, 90, 90, 150, 600, 600]


@settings(max_examples=2000, deadline=None)
@given(terms_st, st.integers(1, 6 * 3600))
def test_whole_units_cost_what_the_started_unit_costs(terms: Terms, talk: int) -> None:
    """Rounded up to its unit's end, a talk costs the same and is at least as long
    (within the maximum); one second more costs more or is past the maximum."""
    whole = whole_units_s(talk, terms)
    assert whole >= min(talk, terms.max_talk_s)
    assert rate(whole, terms).total_yen == rate(min(talk, terms.max_talk_s), terms).total_yen
    assert whole == terms.max_talk_s or whole == terms.grace_s or (
        (whole - terms.grace_s) % terms.unit_s == 0)


@settings(max_examples=2000, deadline=None)
@given(terms_st, st.integers(0, 4 * 3600), st.integers(0, 5000))
def test_a_hold_at_a_dearer_price_pays_at_least_as_long_at_a_cheaper_one(
        terms: Terms, allowed: int, cheaper: int) -> None:
    """What ``Ledger.reprice`` rests on: a reservation holding ``rate(allowed)`` at the
    dearest member's price, priced at the answering member's (not dearer), pays at
    least as much talk at their price, and that talk never costs more than the hold."""
    cheaper = min(cheaper, terms.price_per_minute_yen)
    held = rate(allowed, terms).total_yen
    at_theirs = replace(terms, price_per_minute_yen=cheaper)
    longer = max(allowed, seconds_affordable(held, at_theirs))
    assert longer >= allowed
    assert rate(longer, at_theirs).total_yen <= held
