"""Admission and the first reservation of consultations that arrive together, group-
committed (:class:`callback_server.consult_billing.ConsultBilling` over a real
PostgreSQL): one batch on one balance never overdraws and answers each request its own;
a batch whose statement fails fails every caller in it with the error (none hangs) and
holds nothing; an ask the rating refuses fails alone."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import asyncpg
import pytest

from advisors.schemas import CustomerInput
from advisors.store import AdvisorStore
from billing import records
from billing.admission import Admission, Admissions
from billing.ledger import Ledger, Refusal, Reservation
from billing.postpaid import Postpaid
from billing.rating import Terms, TermsError
from billing.settings import BillingSettings
from callback_server.consult_billing import ConsultBilling, warm_connection
from shared.db import create_pool
from shared.phone import E164
from tests.conftest import drop_database, fresh_database
from tests.integration import advisors_db, billing_db
from tests.integration.localstripe import client_for
from tests.integration.test_billing_admission_store import card_on_file
from tests.integration.test_billing_ledger import balances_are_running_sums
from tests.integration.test_edge_app import free_port

pytestmark = pytest.mark.integration
pool, clean = advisors_db.fixtures(billing_db.migrations(), records.MIGRATIONS)

#: a household: four numbers sharing the account member-42's balance
HOUSEHOLD = tuple(E164(f"81901234567{i}") for i in range(4))
#: a number no customer has
STRANGER = E164("81311112222")


@pytest.fixture
async def db(clean: asyncpg.Pool) -> asyncpg.Pool:
    await billing_db.truncate(clean, "billing_policies", "billing_group_policies",
                              "billing_records", "outbox")
    await AdvisorStore(clean).create_customer(
        "acme", CustomerInput(account="member-42", name="Sato", numbers=HOUSEHOLD))
    return clean


async def test_forty_at_once_on_one_balance_share_it_in_one_batch_each_its_own_answer(
        db: asyncpg.Pool) -> None:
    """1,150 yen at 100 yen a minute, 40 consultations of the household asking at once
    for two minutes each (200 yen), one of them twice: one admission batch, one
    reservation batch; five get two minutes, the sixth the one minute left's worth, the
    rest are refused with the 50 yen left; no hold beyond the balance; each answer names
    its own consultation."""
    await Ledger(db).deposit("acme", "member-42", 1150, "op", "bank transfer")
    billing = ConsultBilling(db, BillingSettings())

    async def consult(i: int) -> Reservation | Refusal:
        plan = await billing.admit("acme", HOUSEHOLD[i % 4], 100)
        assert plan.account == "member-42" and plan.admission.allowed
        return await billing.reserve("acme", plan, f"cb-{i}", 120)

    got = await asyncio.wait_for(asyncio.gather(*(consult(i) for i in range(40)),
                                                consult(7)), 30)
    assert (billing.admitting.batches, billing.reserving.batches) == (1, 1)
    assert billing.reserving.messages == 40 and billing.reserving.repeats == 1
    made = [g for g in got[:40] if isinstance(g, Reservation)]
    assert [g.consultation_id for g in made] == [f"cb-{i}" for i in range(6)]
    assert [(g.allowed_s, g.held_yen) for g in made] == [(120, 200)] * 5 + [(60, 100)]
    assert got[40] == got[7]
    assert got[6:40] == [Refusal("balance-too-low", 50, 100)] * 34
    balance = await Ledger(db).balance("acme", "member-42")
    assert (balance.available_yen, balance.held_yen) == (50, 1100)
    assert await db.fetchval("SELECT count(*) FROM billing_reservations") == 6
    await balances_are_running_sums(db)     # six holds on one balance in one statement


async def test_a_failing_batch_statement_fails_every_caller_with_its_error(
        db: asyncpg.Pool) -> None:
    """One consultation id longer than the table allows among five good ones: the
    batch's transaction fails, every caller of that batch gets the database's error
    (none is left waiting), nothing is held; the next batch reserves as usual."""
    await Ledger(db).deposit("acme", "member-42", 10_000, "op", "bank transfer")
    billing = ConsultBilling(db, BillingSettings())
    plan = await billing.admit("acme", HOUSEHOLD[0], 100)
    ids = [f"cb-{i}" for i in range(5)] + ["x" * 200]
    got = await asyncio.wait_for(asyncio.gather(
        *(billing.reserve("acme", plan, c, 120) for c in ids), return_exceptions=True), 30)
    assert billing.reserving.batches == 1
    assert all(isinstance(g, asyncpg.CheckViolationError) for g in got), got
    assert len({id(g) for g in got}) == 1          # the one error of the one statement
    assert (await Ledger(db).balance("acme", "member-42")).held_yen == 0
    again = await billing.reserve("acme", plan, "cb-0", 120)
    assert isinstance(again, Reservation) and again.held_yen == 200


async def test_an_ask_the_rating_refuses_fails_alone_in_its_admission_batch(
        db: asyncpg.Pool) -> None:
    await Ledger(db).deposit("acme", "member-42", 1000, "op", "bank transfer")
    billing = ConsultBilling(db, BillingSettings())
    got = await asyncio.wait_for(asyncio.gather(
        billing.admit("acme", HOUSEHOLD[0], 100), billing.admit("acme", HOUSEHOLD[1], -5),
        billing.admit("acme", STRANGER, 100), return_exceptions=True), 30)
    assert billing.admitting.batches == 1
    ok, refused, stranger = got
    assert not isinstance(ok, BaseException) and ok.admission.allowed
    assert ok.admission.max_talk_s == 600
    assert isinstance(refused, TermsError) and refused.field == "price_per_minute_yen"
    assert not isinstance(stranger, BaseException)
    assert (stranger.account, stranger.admission.reason) == ("+81311112222", "balance-too-low")


async def test_two_sites_batches_on_shared_balances_neither_deadlock_nor_overdraw(
        db: asyncpg.Pool) -> None:
    """Two billing instances (two processes' batchers) reserving at once on three shared
    balances, asked in opposite orders: the accounts are locked in one order, so both
    batches finish, and the holds of each account stay within its balance."""
    ledger = Ledger(db)
    for account in ("a-1", "a-2", "a-3"):
        await ledger.deposit("acme", account, 700, "op", "bank transfer")
    one, two = ConsultBilling(db, BillingSettings()), ConsultBilling(db, BillingSettings())
    plan = await one.admit("acme", HOUSEHOLD[0], 100)
    plans = {a: replace(plan, account=a) for a in ("a-1", "a-2", "a-3")}
    asks = [(billing, account, f"{n}-{account}-{i}")
            for n, (billing, order) in enumerate(((one, ("a-1", "a-2", "a-3")),
                                                  (two, ("a-3", "a-2", "a-1"))))
            for i in range(3) for account in order]
    got = await asyncio.wait_for(asyncio.gather(
        *(b.reserve("acme", plans[a], c, 120) for b, a, c in asks)), 30)
    assert sum(isinstance(g, Reservation) for g in got) == 3 * 4   # 3 × 200 + 100 each
    for account in ("a-1", "a-2", "a-3"):
        balance = await ledger.balance("acme", account)
        assert (balance.available_yen, balance.held_yen) == (0, 700)


async def test_postpaid_standing_refuses_in_a_batch_as_admissions_decides_alone(
        db: asyncpg.Pool) -> None:
    """A postpaid merchant's customer asked in one batch with a stranger and a prepaid
    merchant's ask, at each standing: no card, a card, unpaid charges up to the limit,
    one in dunning. The batch's answer is :class:`billing.admission.Admissions`'s."""
    settings = BillingSettings(postpaid_merchants=frozenset({"acme"}), max_unpaid_charges=2)
    billing = ConsultBilling(db, settings)
    alone = Admissions(db, postpaid_merchants=settings.postpaid_merchants,
                       max_unpaid_charges=2)

    async def same(reason: str) -> None:
        mine, stranger, prepaid = await asyncio.wait_for(asyncio.gather(
            billing.admit("acme", HOUSEHOLD[2], 100), billing.admit("acme", STRANGER, 100),
            billing.admit("other", HOUSEHOLD[2], 100)), 30)
        assert mine.postpaid and mine.admission.reason == reason
        assert mine.admission == await alone.ask("acme", "member-42", 100, 10_800)
        assert stranger.admission == Admission(False, 0, "no-card")
        assert (prepaid.postpaid, prepaid.admission.reason) == (False, "balance-too-low")

    await same("no-card")
    await card_on_file(db, "acme", "member-42")
    await same("ok")
    postpaid = Postpaid(db, client_for(free_port()))       # recorded, not yet charged
    for n, reason in ((1, "ok"), (2, "unpaid-limit")):
        await postpaid.record("acme", "member-42", f"consult-{n}", 60, Terms(100), by="calls")
        await same(reason)
    async with db.acquire() as conn:     # the first one declined
        attempt = await conn.fetchval("SELECT min(id) FROM billing_postpaid_attempts")
        await conn.execute("INSERT INTO billing_postpaid_outcomes (attempt_id, outcome, "
                           "failure) VALUES ($1, 'failed', 'card_declined')", attempt)
    await same("in-dunning")


async def test_admitted_with_its_consultation_the_first_slice_is_held_in_the_same_batch(
        db: asyncpg.Pool) -> None:
    """As the consult runner asks (admission naming the consultation): 1,150 yen at 100 yen
    a minute, 40 of the household at once: one statement for admission and the holds,
    no reservation batch; every admission sees the balance before the batch's holds (as
    before: all admitted), the holds share it in arrival order (five of two minutes, one
    of one, the rest refused at ``reserve`` with the 50 yen left), ``reserve`` of each
    consultation's first slice answers from the plan; ``reserve`` of another slice asks
    the ledger (the reservation made)."""
    await Ledger(db).deposit("acme", "member-42", 1150, "op", "bank transfer")
    billing = ConsultBilling(db, BillingSettings())
    plans = await asyncio.wait_for(asyncio.gather(*(
        billing.admit("acme", HOUSEHOLD[i % 4], 100, None, f"cb-{i}") for i in range(40))), 30)
    assert billing.admitting.batches == 1
    assert all(p.account == "member-42" and p.admission.allowed for p in plans)
    got = [await billing.reserve("acme", p, f"cb-{i}", 120) for i, p in enumerate(plans)]
    assert billing.reserving.batches == 0
    made = [g for g in got if isinstance(g, Reservation)]
    assert [(g.consultation_id, g.allowed_s, g.held_yen) for g in made] == [
        (f"cb-{i}", 120, 200) for i in range(5)] + [("cb-5", 60, 100)]
    assert got[6:] == [Refusal("balance-too-low", 50, 100)] * 34
    assert await Ledger(db).reserve("acme", "member-42", "cb-0", Terms(100),
                                    at_most_s=120) == made[0]
    assert await billing.reserve("acme", plans[1], "cb-1", 60) == made[1]   # another slice
    assert billing.reserving.batches == 1
    await balances_are_running_sums(db)


async def test_a_warmed_connection_made_the_batches_call_once_and_holds_nothing(
        db: asyncpg.Pool, pg_url: str, pg_server_url: str) -> None:
    """``warm_connection`` (what the callback site's pool runs on each new connection):
    the batches' call of ``billing_admit_and_hold`` made once, with no asks, on the
    connection's own session (so PostgreSQL compiled it there); nothing held, nothing
    written; the connection's first batch then answers as usual. On a database not
    migrated yet it leaves the connection as it is, without an error."""
    await Ledger(db).deposit("acme", "member-42", 1000, "op", "bank transfer")
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("SET track_functions = 'pl'")
        async with conn.transaction():
            await warm_connection(conn)
            calls = await conn.fetchval("SELECT pg_stat_get_xact_function_calls("
                                        "'billing_admit_and_hold'::regproc)")
        assert calls == 1
        assert await conn.fetchval("SELECT count(*) FROM billing_reservations") == 0
    finally:
        await conn.close()
    one = await create_pool(pg_url, min_size=1, max_size=1, warm=warm_connection)
    try:
        billing = ConsultBilling(one, BillingSettings())
        plan = await billing.admit("acme", HOUSEHOLD[0], 100, None, "cb-1")
        got = await billing.reserve("acme", plan, "cb-1", 120)
        assert isinstance(got, Reservation) and got.held_yen == 200
        assert billing.reserving.batches == 0
    finally:
        await one.close()
    name = f"t{os.getpid()}_not_migrated"
    bare = await fresh_database(pg_server_url, name)
    try:
        conn = await asyncpg.connect(bare)
        try:
            await warm_connection(conn)
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        await drop_database(pg_server_url, name)
