"""Card top-ups through Stripe PaymentIntents against a real localstripe process and a real
PostgreSQL: charged once and recorded with its deposit; a declined card deposits nothing;
a crash between Stripe's answer and the record, or before the call, is reconciled by the
PaymentIntent's metadata and never charges twice (localstripe ignores Idempotency-Key, so
the project's own record carries the guarantee); Stripe unreachable leaves it pending."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import stripe

from billing.card_topups import METADATA_KEY, CardTopUps, Pending, Result
from billing.ledger import Balance, Ledger
from billing.reports import daily
from tests.integration import billing_db
from tests.integration.localstripe import card, client_for, localstripe_fixture
from tests.integration.localstripe import intents_with as intents_of
from tests.integration.test_edge_app import free_port
from tests.prom import grew

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()
localstripe = localstripe_fixture()


def intents_with(client: stripe.StripeClient, key: str) -> list[str]:
    return intents_of(client, METADATA_KEY, key)


@pytest.fixture
def stripe_client(localstripe: int) -> stripe.StripeClient:
    return client_for(localstripe)


async def test_a_top_up_is_charged_once_and_deposited(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    topups = CardTopUps(clean, stripe_client)
    customer, method = await asyncio.to_thread(card, stripe_client, "4242424242424242")
    result = await topups.top_up("acme", "member-42", 3000, customer=customer,
                                 payment_method=method, by="member-42 (web)")
    assert (result.outcome, result.failure) == ("succeeded", "")
    intent = await asyncio.to_thread(stripe_client.v1.payment_intents.retrieve,
                                     str(result.payment_intent))
    assert (intent.amount, intent.currency, intent.status) == (3000, "jpy", "succeeded")
    assert await topups.charge(result.topup_id) == result      # recorded: Stripe not asked
    key = (await clean.fetchval("SELECT idempotency_key FROM billing_card_topups"))
    assert await asyncio.to_thread(intents_with, stripe_client, key) == [intent.id]
    ledger = Ledger(clean)
    assert await ledger.balance("acme", "member-42") == Balance(3000, 0)
    [move] = await ledger.movements("acme", "member-42")
    assert (move.kind, move.by, move.id) == ("deposit", "member-42 (web)",
                                             result.transaction_id)
    today = await clean.fetchval("SELECT (now() AT TIME ZONE 'Asia/Tokyo')::date")
    report = await daily(clean, "acme", today)
    assert (report.card_topups_yen, report.bank_transfers_yen) == (3000, 0)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await clean.execute("UPDATE billing_card_topup_outcomes SET failure = 'x'")


async def test_a_declined_card_deposits_nothing(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    topups = CardTopUps(clean, stripe_client)
    customer, method = await asyncio.to_thread(card, stripe_client, "4000000000000341")
    before = await billing_db.scrape(clean)
    result = await topups.top_up("acme", "member-42", 3000, customer=customer,
                                 payment_method=method, by="member-42 (web)")
    assert (result.outcome, result.failure, result.transaction_id) == (
        "failed", "card_declined", None)
    assert await topups.charge(result.topup_id) == result                # recorded once
    assert grew(before, await billing_db.scrape(clean),
                "cbgw_billing_card_charges_failed_total", merchant="acme", kind="topup") == 1
    assert result.payment_intent is not None
    assert await Ledger(clean).balance("acme", "member-42") == Balance(0, 0)


async def test_a_crash_after_stripe_answered_is_reconciled_without_a_second_charge(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    topups = CardTopUps(clean, stripe_client)
    customer, method = await asyncio.to_thread(card, stripe_client, "4242424242424242")
    ledger = Ledger(clean)
    for recover in ("retry", "reconcile"):
        account = f"member-{recover}"
        topup = await topups.request("acme", account, 5000, customer=customer,
                                     payment_method=method, by="op")
        # the process calls Stripe, then dies before it records the answer
        intent, _ = await asyncio.to_thread(topups._create, topup)
        assert intent.status == "succeeded"
        assert [t.id for t in await topups.pending()] == [topup.id]
        if recover == "retry":
            result = await topups.charge(topup.id)
        else:
            assert await topups.reconcile(older_than_s=3600) == []   # too recent to judge
            [result] = await topups.reconcile(older_than_s=0)
            assert await topups.reconcile(older_than_s=0) == []
        assert (result.outcome, result.payment_intent) == ("succeeded", intent.id)
        assert await asyncio.to_thread(intents_with, stripe_client,
                                       topup.idempotency_key) == [intent.id]
        assert await ledger.balance("acme", account) == Balance(5000, 0)
    assert await topups.pending() == []


async def test_a_crash_before_the_call_is_abandoned_and_never_charged(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    topups = CardTopUps(clean, stripe_client)
    customer, method = await asyncio.to_thread(card, stripe_client, "4242424242424242")
    topup = await topups.request("acme", "member-42", 2000, customer=customer,
                                 payment_method=method, by="op")
    [result] = await topups.reconcile(older_than_s=0)
    assert result == Result(topup.id, "abandoned", None, "", None)
    assert await topups.charge(topup.id) == result
    assert await asyncio.to_thread(intents_with, stripe_client, topup.idempotency_key) == []
    assert await Ledger(clean).balance("acme", "member-42") == Balance(0, 0)


async def test_stripe_unreachable_leaves_it_pending_then_one_charge(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    customer, method = await asyncio.to_thread(card, stripe_client, "4242424242424242")
    down = CardTopUps(clean, client_for(free_port()))
    with pytest.raises(Pending):
        await down.top_up("acme", "member-42", 1000, customer=customer,
                          payment_method=method, by="op")
    [topup] = await down.pending()
    assert await down.reconcile(older_than_s=0) == []            # still not known
    up = CardTopUps(clean, stripe_client)
    results = await asyncio.gather(*(up.charge(topup.id) for _ in range(4)))
    assert len({r.payment_intent for r in results}) == 1 and results[0].outcome == "succeeded"
    assert len(await asyncio.to_thread(intents_with, stripe_client,
                                       topup.idempotency_key)) == 1
    assert await Ledger(clean).balance("acme", "member-42") == Balance(1000, 0)
