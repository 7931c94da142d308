"""billing.admission.Admissions over a real PostgreSQL: a prepaid customer's answer takes
the other live consultations' holds and the merchant's policy into account; a postpaid
customer is refused without a card, while a charge is unpaid past the limit, and in
dunning."""

from __future__ import annotations

import asyncpg
import pytest

from billing import policy
from billing.admission import Admission, Admissions, Answer, Ask
from billing.ledger import Ledger
from billing.postpaid import Postpaid
from billing.rating import Terms, TermsError
from tests.integration import billing_db
from tests.integration.localstripe import client_for
from tests.integration.test_edge_app import free_port

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()


async def test_prepaid_is_what_the_balance_pays_less_live_reservations(
        clean: asyncpg.Pool) -> None:
    admissions = Admissions(clean)
    assert await admissions.ask("acme", "member-42", 100, 3600) == Admission(
        False, 0, "balance-too-low", 0, 100)
    ledger = Ledger(clean)
    await ledger.deposit("acme", "member-42", 1000, "op", "bank transfer")
    assert await admissions.ask("acme", "member-42", 100, 3600) == Admission(
        True, 600, "ok", 1000, 100)
    await ledger.reserve("acme", "member-42", "consult-1", Terms(100), at_most_s=420)
    assert await admissions.ask("acme", "member-42", 100, 3600) == Admission(
        True, 180, "ok", 300, 100)
    await policy.set_policy(clean, "acme", policy.Policy(minimum_yen=500, changed_by="op"))
    assert await admissions.ask("acme", "member-42", 100, 3600) == Admission(
        False, 0, "balance-too-low", 300, 500)
    assert (await admissions.ask("other", "member-42", 100, 60)).reason == "balance-too-low"


async def card_on_file(db: asyncpg.Pool, merchant_id: str, account: str) -> None:
    """A card on file for a new billing account, as ``Cards.confirm`` records it (the
    Stripe ids its own, so that several accounts may have one)."""
    async with db.acquire() as conn, conn.transaction():
        acc = await conn.fetchval("INSERT INTO billing_accounts (merchant_id, account) "
                                  "VALUES ($1, $2) RETURNING id", merchant_id, account)
        reg = await conn.fetchval(
            """INSERT INTO billing_card_registrations (merchant_id, account_id, customer,
                   setup_intent, client_secret, link_sha256, requested_by)
               VALUES ($1, $2, $3, $4, $4 || '_secret', sha256($5::bytea), 'op')
               RETURNING id""", merchant_id, acc, f"cus_{acc}", f"seti_{acc}",
            account.encode())
        await conn.execute("INSERT INTO billing_cards VALUES ($1, $2)", reg, f"pm_{acc}")


async def test_postpaid_needs_a_card_and_nothing_unpaid_beyond_the_limit(
        clean: asyncpg.Pool) -> None:
    admissions = Admissions(clean, postpaid_merchants=frozenset({"acme"}),
                            max_unpaid_charges=2)
    assert await admissions.ask("acme", "member-42", 100, 7200) == Admission(
        False, 0, "no-card")
    await card_on_file(clean, "acme", "member-42")
    assert await admissions.ask("acme", "member-42", 100, 7200) == Admission(
        True, 7200, "ok")
    assert (await admissions.ask("acme", "member-42", 100, 99999)).max_talk_s == 10800
    postpaid = Postpaid(clean, client_for(free_port()))       # recorded, not yet charged
    for n in (1, 2):
        await postpaid.record("acme", "member-42", f"consult-{n}", 60, Terms(100), by="calls")
        expected = "ok" if n == 1 else "unpaid-limit"
        assert (await admissions.ask("acme", "member-42", 100, 60)).reason == expected
    async with clean.acquire() as conn:     # the first one declined
        attempt = await conn.fetchval("SELECT min(id) FROM billing_postpaid_attempts")
        await conn.execute("INSERT INTO billing_postpaid_outcomes (attempt_id, outcome, "
                           "failure) VALUES ($1, 'failed', 'card_declined')", attempt)
    assert await admissions.ask("acme", "member-42", 100, 60) == Admission(
        False, 0, "in-dunning")
    assert (await admissions.ask("acme", "member-7", 100, 60)).reason == "no-card"


async def test_many_asks_answered_by_one_statement_as_each_alone(clean: asyncpg.Pool) -> None:
    """A batch of asks (prepaid funded and not, postpaid without a card, another
    merchant's policy, a price the rating refuses) answered together: each answer is what
    asking alone answers; the refused price fails only its own ask."""
    admissions = Admissions(clean, postpaid_merchants=frozenset({"post"}))
    await Ledger(clean).deposit("acme", "member-42", 1000, "op", "bank transfer")
    await policy.set_policy(clean, "other", policy.Policy(minimum_yen=500, changed_by="op"))
    await Ledger(clean).deposit("other", "member-42", 400, "op", "bank transfer")
    asks = [Ask("acme", "member-42", 100, wanted_s=3600), Ask("acme", "member-7", 100),
            Ask("post", "member-42", 100, wanted_s=60), Ask("other", "member-42", 100),
            Ask("acme", "member-42", -5)]
    *answers, refused = await admissions.answer_all(clean, asks)
    assert isinstance(refused, TermsError) and refused.field == "price_per_minute_yen"
    assert [a.admission for a in answers if isinstance(a, Answer)] == [
        Admission(True, 600, "ok", 1000, 100), Admission(False, 0, "balance-too-low", 0, 100),
        Admission(False, 0, "no-card"), Admission(False, 0, "balance-too-low", 400, 500)]
    for ask, answer in zip(asks, answers, strict=False):
        assert isinstance(answer, Answer)
        assert answer.admission == await admissions.ask(
            ask.merchant_id, ask.account, ask.price_per_minute_yen,
            answer.terms.max_talk_s if ask.wanted_s is None else ask.wanted_s)
