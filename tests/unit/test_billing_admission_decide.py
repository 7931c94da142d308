"""billing.admission.decide (pure): prepaid by the balance at the price and policy,
postpaid by the card on file, dunning and the unpaid limit."""

from __future__ import annotations

from billing.admission import Admission, Facts, decide
from billing.rating import Terms, rate
from billing.standing import Standing

TERMS = Terms(200, unit_s=60, minimum_yen=300, max_talk_s=3600)
NO_STANDING = Standing(False, 0, False)


def prepaid(available_yen: int) -> Facts:
    return Facts(False, available_yen, NO_STANDING)


def test_prepaid_talks_what_the_balance_pays_for_up_to_what_is_wanted() -> None:
    answer = decide(prepaid(1000), TERMS, 3600)
    assert answer == Admission(True, 300, "ok", 1000, 300)
    assert rate(300, TERMS).total_yen <= 1000 < rate(301, TERMS).total_yen
    assert decide(prepaid(1000), TERMS, 120).max_talk_s == 120
    assert decide(prepaid(10**9), TERMS, 10**6).max_talk_s == 3600   # the policy's longest


def test_prepaid_below_the_minimum_charge_is_refused() -> None:
    assert decide(prepaid(299), TERMS, 600) == Admission(False, 0, "balance-too-low", 299, 300)
    assert decide(prepaid(-50), TERMS, 600) == Admission(False, 0, "balance-too-low", 0, 300)
    assert decide(prepaid(300), TERMS, 600).allowed
    grace = Terms(200, grace_s=60)  # as the ledger's reserve: the free start alone is refused
    assert decide(prepaid(0), grace, 600) == Admission(False, 0, "balance-too-low", 0, 200)


def test_postpaid_needs_a_card_no_dunning_and_fewer_unpaid_than_the_limit() -> None:
    def ask(standing: Standing, limit: int = 2) -> Admission:
        return decide(Facts(True, 0, standing), TERMS, 7200, max_unpaid_charges=limit)

    assert ask(Standing(True, 0, False)) == Admission(True, 3600, "ok")
    assert ask(Standing(True, 1, False)) == Admission(True, 3600, "ok")
    assert ask(Standing(True, 2, False)) == Admission(False, 0, "unpaid-limit")
    assert ask(Standing(True, 1, False), limit=1).reason == "unpaid-limit"
    assert ask(Standing(True, 1, True)) == Admission(False, 0, "in-dunning")
    assert ask(Standing(False, 0, False)) == Admission(False, 0, "no-card")
    assert decide(Facts(True, 0, Standing(True, 0, False)), TERMS, 90).max_talk_s == 90
