"""Postpaid consultations against a real localstripe process and a real PostgreSQL: a card
registered through a SetupIntent, a consultation charged to it once (a repeat charges
nothing more), a process killed between Stripe's answer and the record reconciled into
exactly one PaymentIntent, a declined card put into dunning with a notice and retried on
the schedule with the card registered since."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import stripe

from billing import records
from billing.cards import CardError, Cards
from billing.ledger import LedgerError
from billing.postpaid import METADATA_KEY, NO_CARD, Postpaid, charge_key
from billing.rating import Terms
from billing.reports import daily
from billing.standing import Standing, card_on_file, charges, close, standing
from tests.integration import billing_db
from tests.integration.localstripe import card, client_for, intents_with, localstripe_fixture
from tests.prom import grew, scraped

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()
localstripe = localstripe_fixture()
ROOT = Path(__file__).resolve().parents[2]
TERMS = Terms(100)          # 100 yen a minute, every started minute billed


@pytest.fixture
def stripe_client(localstripe: int) -> stripe.StripeClient:
    return client_for(localstripe)


def enter_card(client: stripe.StripeClient, customer: str, setup_intent: str,
               client_secret: str, number: str) -> None:
    """What the card page does with Stripe.js: the card typed in confirms the SetupIntent
    (and Stripe attaches it to the customer)."""
    _, method = card(client, number, customer)
    client.v1.setup_intents.confirm(setup_intent, params={
        "payment_method": method, "client_secret": client_secret})


async def registered(pool: asyncpg.Pool, client: stripe.StripeClient, account: str,
                     number: str = "4242424242424242") -> Cards:
    cards = Cards(pool, client)
    reg = await cards.register("acme", account, by="op")
    await asyncio.to_thread(enter_card, client, reg.customer, reg.setup_intent,
                            reg.client_secret, number)
    confirmed = await cards.confirm("acme", reg.id)
    assert confirmed.payment_method is not None
    return cards


async def test_a_card_is_registered_through_a_setup_intent(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    cards = Cards(clean, stripe_client)
    reg = await cards.register("acme", "member-42", by="op")
    assert reg.client_secret.startswith(reg.setup_intent) and reg.payment_method is None
    assert len(reg.link_token) >= 32 and await cards.by_token(reg.link_token) == reg
    with pytest.raises(CardError) as refused:      # the customer has not entered a card yet
        await cards.confirm("acme", reg.id)
    assert (refused.value.status, refused.value.error_id) == (409, "setup-not-succeeded")
    acc = await clean.fetchval("SELECT id FROM billing_accounts WHERE account = 'member-42'")
    assert await card_on_file(clean, acc) is None
    await asyncio.to_thread(enter_card, stripe_client, reg.customer, reg.setup_intent,
                            reg.client_secret, "4242424242424242")
    confirmed = await cards.confirm("acme", reg.id)
    on_file = await card_on_file(clean, acc)
    assert on_file is not None and on_file.payment_method == confirmed.payment_method
    assert await cards.confirm("acme", reg.id) == confirmed          # recorded once
    again = await cards.register("acme", "member-42", by="op")        # same Stripe customer
    assert again.customer == reg.customer and again.setup_intent != reg.setup_intent
    with pytest.raises(CardError):
        await cards.get("other-merchant", reg.id)


async def test_a_consultation_is_charged_once_to_the_card_on_file(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    await registered(clean, stripe_client, "member-42")
    postpaid = Postpaid(clean, stripe_client)
    charge = await postpaid.charge("acme", "member-42", "consult-1", 125, TERMS, by="calls")
    assert charge is not None
    assert (charge.state, charge.total_yen, charge.billed_s, charge.attempts) == (
        "paid", 300, 180, 1)
    intent = await asyncio.to_thread(stripe_client.v1.payment_intents.retrieve,
                                     str(charge.payment_intent))
    assert (intent.amount, intent.currency, intent.status) == (300, "jpy", "succeeded")
    assert await postpaid.charge("acme", "member-42", "consult-1", 125, TERMS,
                                 by="calls") == charge
    key = charge_key(charge.id, "acme", "member-42", "consult-1", 1)
    assert await asyncio.to_thread(intents_with, stripe_client, METADATA_KEY, key) == [
        intent.id]
    assert await postpaid.charge("acme", "member-42", "consult-2", 0, TERMS, by="calls") is None
    assert await standing(clean, "acme", "member-42") == Standing(True, 0, False)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await clean.execute("UPDATE billing_postpaid_outcomes SET failure = 'x'")


_DIE_AFTER_STRIPE = """
import asyncio, os, sys
import billing.postpaid as postpaid
from billing.rating import Terms
from billing.reports import daily
from shared.db import create_pool
from tests.integration.localstripe import client_for

def die(*args, **kwargs):   # Stripe has answered; the outcome is not recorded yet
    os._exit(9)

postpaid.outcome_of = die

async def main():
    pool = await create_pool(sys.argv[1])
    await postpaid.Postpaid(pool, client_for(int(sys.argv[2]))).charge(
        "acme", "member-42", "consult-crash", 125, Terms(100), by="calls")

asyncio.run(main())
"""


async def test_a_process_killed_after_stripe_answered_is_reconciled_to_one_payment(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient, pg_url: str,
        localstripe: int) -> None:
    await registered(clean, stripe_client, "member-42")
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _DIE_AFTER_STRIPE, pg_url, str(localstripe)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    postpaid = Postpaid(clean, stripe_client)
    [pending] = await charges(clean, "acme", "member-42")
    key = charge_key(pending.id, "acme", "member-42", "consult-crash", 1)
    [made] = await asyncio.to_thread(intents_with, stripe_client, METADATA_KEY, key)
    assert (pending.state, pending.attempts) == ("pending", 1)
    assert await standing(clean, "acme", "member-42") == Standing(True, 1, False)
    assert await postpaid.reconcile(older_than_s=3600) == []        # too recent to judge
    [done] = await postpaid.reconcile(older_than_s=0)
    assert (done.state, done.payment_intent, done.total_yen) == ("paid", made, 300)
    assert await postpaid.reconcile(older_than_s=0) == []
    assert await asyncio.to_thread(intents_with, stripe_client, METADATA_KEY, key) == [made]
    assert await standing(clean, "acme", "member-42") == Standing(True, 0, False)


async def test_a_crash_before_the_call_is_charged_by_the_reconcile(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    await registered(clean, stripe_client, "member-42")
    postpaid = Postpaid(clean, stripe_client)
    recorded = await postpaid.record("acme", "member-42", "consult-3", 61, TERMS, by="calls")
    assert recorded is not None and recorded[0].state == "pending"    # then the crash
    [done] = await postpaid.reconcile(older_than_s=0)
    assert (done.state, done.total_yen) == ("paid", 200)
    key = charge_key(done.id, "acme", "member-42", "consult-3", 1)
    assert len(await asyncio.to_thread(intents_with, stripe_client, METADATA_KEY, key)) == 1


async def test_a_declined_charge_is_dunned_and_retried_with_the_new_card(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    await registered(clean, stripe_client, "member-42", "4000000000000341")
    postpaid = Postpaid(clean, stripe_client, retry_after_s=(0, 3600))
    before = await billing_db.scrape(clean)
    failed = await postpaid.charge("acme", "member-42", "consult-1", 60, TERMS, by="calls")
    assert failed is not None
    assert (failed.state, failed.failure, failed.attempts) == ("failed", "card_declined", 1)
    assert await standing(clean, "acme", "member-42") == Standing(True, 1, True)
    after = await billing_db.scrape(clean)
    assert grew(before, after, "cbgw_billing_card_charges_failed_total", merchant="acme",
                kind="postpaid") == 1
    assert scraped(after, "cbgw_billing_accounts_in_dunning", merchant="acme") == 1
    notices = await clean.fetch("SELECT kind, charge_id FROM billing_notices ORDER BY id")
    assert [(n["kind"], n["charge_id"]) for n in notices] == [("charge-failed", failed.id)]
    # the first retry is due at once: declined again by the same card
    [again] = await postpaid.run_due()
    assert (again.state, again.attempts) == ("failed", 2)
    assert await postpaid.due() == []           # the second retry is an hour away
    await registered(clean, stripe_client, "member-42")       # a new card
    paid = await postpaid.retry("acme", failed.id)
    assert (paid.state, paid.attempts, paid.failure) == ("paid", 3, "")
    assert await postpaid.retry("acme", failed.id) == paid     # paid: nothing more
    kinds = await clean.fetch("SELECT kind FROM billing_notices ORDER BY id")
    assert [n["kind"] for n in kinds] == ["charge-failed", "charge-failed",
                                          "charge-recovered"]
    assert await standing(clean, "acme", "member-42") == Standing(True, 0, False)
    paid_off = await billing_db.scrape(clean)
    assert grew(after, paid_off, "cbgw_billing_card_charges_failed_total", merchant="acme",
                kind="postpaid") == 1                             # the retry's decline
    assert grew(after, paid_off, "cbgw_billing_consultations_charged_total",
                merchant="acme", paid_by="postpaid") == 1
    assert grew(after, paid_off, "cbgw_billing_charged_yen_total", merchant="acme",
                paid_by="postpaid") == 100
    assert scraped(paid_off, "cbgw_billing_accounts_in_dunning", merchant="acme") == 0
    for attempt in (1, 2, 3):
        key = charge_key(failed.id, "acme", "member-42", "consult-1", attempt)
        assert len(await asyncio.to_thread(intents_with, stripe_client, METADATA_KEY,
                                           key)) == 1
    # each outcome a billing record of its own, with its message to the edge
    made = await records.consultation_records(clean, "acme", "consult-1")
    assert [(r["record_id"], r["state"], r["revenue_yen"]) for r in made] == [
        (f"consult-1/charge-{failed.id}-1", "failed", "0"),
        (f"consult-1/charge-{failed.id}-2", "dunning", "0"),
        (f"consult-1/charge-{failed.id}-3", "charged", "100")]
    assert {(r["paid_by"], r["total_yen"], r["margin_yen"]) for r in made[2:]} == {
        ("card", 100, "100")}
    assert await clean.fetchval(
        "SELECT count(*) FROM outbox WHERE kind = 'billing_record'") == 3


async def test_no_card_on_file_is_a_failed_charge_in_dunning(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    postpaid = Postpaid(clean, stripe_client, retry_after_s=())
    failed = await postpaid.charge("acme", "member-7", "consult-1", 30, TERMS, by="calls")
    assert failed is not None
    assert (failed.state, failed.failure, failed.payment_intent) == ("failed", NO_CARD, None)
    assert await standing(clean, "acme", "member-7") == Standing(False, 1, True)
    assert await postpaid.due() == []           # no retries scheduled


async def test_an_operator_closes_a_charge_in_dunning(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    postpaid = Postpaid(clean, stripe_client, retry_after_s=(0,))
    failed = await postpaid.charge("acme", "member-7", "consult-1", 30, TERMS, by="calls")
    assert failed is not None and failed.state == "failed"
    assert await postpaid.due() == [("acme", failed.id)]
    with pytest.raises(LedgerError) as other:
        await close(clean, "other-merchant", failed.id, "written-off", by="op", reason="x")
    assert other.value.error_id == "not-found"
    closed = await close(clean, "acme", failed.id, "paid-elsewhere", by="sato",
                                  reason="bank transfer MUFG-0001")
    assert (closed.state, closed.closed) == ("closed", "paid-elsewhere")
    assert await standing(clean, "acme", "member-7") == Standing(False, 0, False)
    assert await close(clean, "acme", failed.id, "paid-elsewhere", by="sato",
                                reason="again") == closed
    with pytest.raises(LedgerError) as refused:
        await close(clean, "acme", failed.id, "written-off", by="sato", reason="x")
    assert (refused.value.status, refused.value.error_id) == (409, "charge-not-in-dunning")
    assert await postpaid.retry("acme", failed.id) == closed         # not retried
    assert await postpaid.due() == []                                # nor due
    await registered(clean, stripe_client, "member-42")
    paid = await postpaid.charge("acme", "member-42", "consult-2", 30, TERMS, by="calls")
    assert paid is not None
    with pytest.raises(LedgerError) as not_dunned:
        await close(clean, "acme", paid.id, "written-off", by="sato", reason="x")
    assert not_dunned.value.error_id == "charge-not-in-dunning"


async def test_the_daily_report_shows_postpaid_consultations_and_what_cards_paid(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    await registered(clean, stripe_client, "member-42")
    postpaid = Postpaid(clean, stripe_client)
    for n, talk_s in enumerate((61, 125)):          # 200 + 300 yen, paid
        await postpaid.charge("acme", "member-42", f"consult-{n}", talk_s, TERMS, by="calls")
    await postpaid.charge("acme", "member-7", "consult-9", 30, Terms(100, tax_percent=8),
                          by="calls")               # 100 yen at 8 %, no card: unpaid
    today = await clean.fetchval("SELECT (now() AT TIME ZONE 'Asia/Tokyo')::date")
    report = await daily(clean, "acme", today)
    assert [(r.tax_percent, r.consultations, r.total_yen, r.tax_yen)
            for r in report.postpaid] == [(8, 1, 100, 7), (10, 2, 500, 45)]
    assert report.postpaid_paid_yen == 500 and report.charges == ()
    body = report.to_json()
    assert (body["postpaid_charged_yen"], body["postpaid_paid_yen"]) == (600, 500)
    assert (await daily(clean, "other", today)).postpaid == ()


async def test_concurrent_charges_of_one_consultation_make_one_payment(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient) -> None:
    await registered(clean, stripe_client, "member-42")
    postpaid = Postpaid(clean, stripe_client)
    done = await asyncio.gather(*(postpaid.charge("acme", "member-42", "consult-1", 125,
                                                  TERMS, by="calls") for _ in range(4)))
    assert {(c.id, c.state, c.payment_intent) for c in done if c is not None} == {
        (done[0].id, "paid", done[0].payment_intent)} and None not in done
    key = charge_key(done[0].id, "acme", "member-42", "consult-1", 1)
    assert len(await asyncio.to_thread(intents_with, stripe_client, METADATA_KEY, key)) == 1
    assert await clean.fetchval("SELECT count(*) FROM billing_postpaid_attempts") == 1
