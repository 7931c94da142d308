"""The intake statement's destination policy (``callback_intake``, migration 1020) is
decided in Python before the statement for each listing that can change it
(:class:`callback_server.guard.intake.PolicyParts`); chosen by the listing, it is what
:meth:`shared.destination.Policy.evaluate` says with that listing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from callback_server.guard.brake import BrakeSettings
from callback_server.guard.intake import limits_param, policy_parts
from callback_server.guard.reasons import Refusal
from callback_server.guard.testing import irsf_corpus
from callback_server.guard.velocity import Limits, VelocitySettings
from shared.destination import Listing, Policy, PolicySettings, classify_raw
from shared.phone import E164, NumberType

CORPUS = [n for n in (classify_raw(raw) for raw in irsf_corpus(200)) if isinstance(n, E164)]
PREFIXES = st.lists(st.sampled_from(["81", "8190", "8112", "8199", "44", "1", "8150"]),
                    max_size=2).map(tuple)
policies = st.builds(
    PolicySettings,
    countries=st.frozensets(st.sampled_from(["JP", "US", "GB"]), min_size=1),
    number_types=st.frozensets(st.sampled_from(list(NumberType)), min_size=1),
    allow_prefixes=PREFIXES, deny_prefixes=PREFIXES)
numbers = st.one_of(
    st.sampled_from(CORPUS),
    st.builds(lambda cc, rest: E164(cc + rest), st.sampled_from(["81", "1", "44", "882"]),
              st.text("0123456789", min_size=6, max_size=11)))
listings = st.builds(Listing, blocked=st.booleans(), allowed=st.booleans(),
                     block_reason=st.sampled_from(["", "fraud"]))


def malformed(digits: str) -> E164:
    """A number E164's own check lets through nowhere now, made as the policy still
    guards against it (Unicode digits)."""
    number = object.__new__(E164)
    object.__setattr__(number, "digits", digits)
    return number


@settings(max_examples=400, deadline=None)
@given(policy=policies, number=numbers, listing=listings)
def test_the_parts_chosen_by_the_listing_are_the_policys_verdict(
        policy: PolicySettings, number: E164, listing: Listing) -> None:
    rules = Policy(policy)
    assert policy_parts(rules, number).verdict(listing) == rules.evaluate(number, listing)


@given(listing=listings)
def test_a_malformed_number_is_refused_before_the_lists(listing: Listing) -> None:
    rules = Policy(PolicySettings())
    number = malformed("81９0１2345678")
    parts = policy_parts(rules, number)
    assert parts.first and parts.plain is not None
    assert parts.plain.reason is Refusal.DESTINATION_MALFORMED
    assert parts.verdict(listing) == rules.evaluate(number, listing)


def test_the_limits_are_in_the_order_the_statement_reads_them() -> None:
    velocity = VelocitySettings(known=Limits(1, 2, 3, 4), unknown=Limits(5, 6, 7, 8))
    assert limits_param(velocity, BrakeSettings(threshold=9, window_s=10)) == list(
        range(1, 11))
