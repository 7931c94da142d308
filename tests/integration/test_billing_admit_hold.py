"""Admission and the first hold in one statement (``billing.admission.admit_and_hold_sql``)
against what it replaces, the admission statement, :func:`billing.admission.decide`, then
:func:`billing.ledger.reserve_all` of the admitted prepaid asks: the same answers, the
same holds and refusals, the same rows, over random policies (the merchant's, a group's
fields over it), prices (ones the rating refuses too), balances, live holds, postpaid asks
and slices; the same consultation asked twice in a batch, and consultations reserved
before the batch."""

from __future__ import annotations

import itertools
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import policy
from billing.admission import ADMIT_AND_HOLD, Admissions, Answer, Ask
from billing.ledger import Refusal, Reservation, ReserveAsk, account_id, post, reserve_all
from billing.rating import Terms
from shared.db import create_pool
from tests.integration import billing_db
from tests.integration.test_billing_ledger import balances_are_running_sums, run_async

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()
NAMES = itertools.count()

#: a policy's fields over their whole ranges (``Terms`` checks them)
fields_st = st.fixed_dictionaries({}, optional={
    "unit_s": st.one_of(st.sampled_from([1, 6, 10, 30, 60]), st.integers(1, 3600)),
    "grace_s": st.one_of(st.sampled_from([0, 30, 60, 120]), st.integers(0, 120),
                         st.integers(0, 3600)),
    "minimum_yen": st.one_of(st.sampled_from([0, 100, 500]), st.integers(0, 1000),
                             st.integers(0, 1_000_000)),
    # short ones: a grace period as long as the longest talk, or longer
    "max_talk_s": st.one_of(st.sampled_from([30, 60, 120, 180]), st.integers(1, 3600),
                            st.integers(1, 86_400)),
    "tax_percent": st.integers(0, 100)})
#: a grace period as long as the longest talk or longer (the first unit costs nothing,
#: whatever the minimum), with a minimum above small balances
free_st = st.fixed_dictionaries({
    "grace_s": st.sampled_from([60, 120, 3600]), "max_talk_s": st.sampled_from([30, 60]),
    "minimum_yen": st.sampled_from([100, 500])})
price_st = st.one_of(st.sampled_from([0, 1, 30, 60, 100, 300]), st.integers(0, 600),
                     st.integers(0, 100_000), st.sampled_from([-5, 100_001]))
# (account index: past the balances none; postpaid; price; through the group; wanted;
# at_most_s)
AskDraw = tuple[int, bool, int, bool, int | None, int | None, int | None]


@st.composite
def case_st(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "merchant": draw(st.one_of(st.none(), fields_st, free_st)),
        "group": draw(st.one_of(st.none(), fields_st, free_st)),
        # available (overdrawn too), held by live reservations
        "balances": draw(st.lists(st.tuples(
            st.one_of(st.integers(-500, 3000), st.integers(0, 10_000_000),
                      st.sampled_from([0, 1, 99, 100, 101, 300, 499, 500, 501])),
            st.integers(0, 5000)), max_size=4)),
        "asks": draw(st.lists(st.tuples(
            st.integers(0, 4), st.booleans(), price_st, st.booleans(),
            st.one_of(st.none(), st.integers(0, 7200)),
            st.one_of(st.none(), st.sampled_from([0, 1, 30, 60, 120]), st.integers(0, 600),
                      st.integers(0, 90_000)),
            # the consultation: its own (None), or one of three that asks may share
            st.one_of(st.none(), st.integers(0, 2))),
            min_size=1, max_size=10)),
        # consultations (of those three) reserved before the batch: account, consultation
        "made": draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2)),
                              max_size=3, unique=True)),
    }


def _shape(got: Answer | Exception | Reservation | Refusal | None) -> Any:
    """What is compared: all but the ids the two runs draw from the sequences."""
    if isinstance(got, Exception):
        return type(got).__name__, str(got)
    if isinstance(got, Reservation):
        return "held", got.consultation_id, got.held_yen, got.allowed_s, got.terms
    if isinstance(got, Answer):
        return got.account, got.terms, got.postpaid, got.admission
    return got


async def _rows(conn: asyncpg.Connection, merchants: list[str]) -> list[Any]:
    """The reservations, transactions and legs of the case's accounts, ids left out."""
    rows = await conn.fetch(
        """SELECT a.account, r.consultation_id, r.terms, r.held_yen, r.allowed_s,
                  t.kind, t.amount_yen, t.by_whom, t.reason,
                  (SELECT array_agg(ARRAY[e.book, e.amount_yen::text, e.balance_after::text]
                                    ORDER BY e.book)
                   FROM billing_entries e WHERE e.transaction_id = t.id) AS legs
           FROM billing_reservations r JOIN billing_accounts a ON a.id = r.account_id
           LEFT JOIN billing_transactions t ON t.reservation_id = r.id
           WHERE a.merchant_id = ANY($1) ORDER BY r.id""", merchants)
    return [tuple(r) for r in rows]


async def compared(url: str, case: dict[str, Any]) -> None:
    p = await create_pool(url, min_size=1, max_size=1)   # the site's codecs (jsonb)
    conn = await p.acquire()
    try:
        tx = conn.transaction()
        await tx.start()
        name = f"ah{next(NAMES)}"
        pre, postpaid = f"{name}-pre", f"{name}-post"
        for m in (pre, postpaid):
            if case["merchant"] is not None:
                await policy.set_policy(conn, m, policy.Policy(**case["merchant"],
                                                               changed_by="t"))
            if case["group"] is not None:
                await policy.set_group_policy(conn, m, policy.GroupPolicy(
                    7, tuple(case["group"].items()), "t"))
        for i, (available, held) in enumerate(case["balances"]):
            acc = await account_id(conn, pre, f"{name}-{i}", create=True)
            assert acc is not None
            await post(conn, acc, "adjustment", abs(available) or 1,
                       [("available", available), ("held", held),
                        ("adjustment", -available - held)], "t", "the balances")
        # reservations made before (an account that does not exist makes none); the call
        # answers no hold for those (the caller reads the reservation as it stands), where
        # reserve_all answers the reservation
        made = await reserve_all(conn, [ReserveAsk(pre, f"{name}-{a}", f"{name}-s{c}",
                                                   Terms(100), 60) for a, c in case["made"]])
        made_before = {(f"{name}-{a}", f"{name}-s{c}")
                       for (a, c), got in zip(case["made"], made, strict=True)
                       if isinstance(got, Reservation)}
        admissions = Admissions(conn, postpaid_merchants=frozenset({postpaid}))
        # a consultation asked again in the batch is asked at its first ask's price and
        # group (one consultation, one advisor): the call answers it with the first's hold
        first: dict[int, tuple[int, bool]] = {}
        asks = []
        for i, (a, post_, price, group, wanted, at_most, shared) in enumerate(case["asks"]):
            if shared is not None:
                price, group = first.setdefault(shared, (price, group))
            asks.append(Ask(postpaid if post_ else pre, f"{name}-{a}", price,
                            7 if group else None, wanted,
                            f"{name}-c{i}" if shared is None else f"{name}-s{shared}",
                            at_most))

        # before: the admission statement, then reserve_all of the admitted prepaid asks
        step = conn.transaction()
        await step.start()
        plain = [Ask(a.merchant_id, a.account, a.price_per_minute_yen, a.group_id,
                     a.wanted_s) for a in asks]
        answers = await admissions.answer_all(conn, plain)
        admitted = [i for i, (a, got) in enumerate(zip(asks, answers, strict=True))
                    if isinstance(got, Answer) and got.admission.allowed and not got.postpaid]
        held = await reserve_all(conn, [
            ReserveAsk(asks[i].merchant_id, ans.account, str(asks[i].consultation_id),
                       ans.terms, asks[i].at_most_s)
            for i in admitted if isinstance(ans := answers[i], Answer)])
        before_holds: list[Any] = [None] * len(asks)
        for i, got in zip(admitted, held, strict=True):
            made_ = (asks[i].account, asks[i].consultation_id) in made_before
            before_holds[i] = None if made_ else got
        before = ([_shape(a) for a in answers], [_shape(h) for h in before_holds],
                  await _rows(conn, [pre, postpaid]))
        await step.rollback()

        # now: one statement
        step = conn.transaction()
        await step.start()
        answers = await admissions.answer_all(conn, asks)
        holds = [a.hold if isinstance(a, Answer) else None for a in answers]
        now = ([_shape(a) for a in answers], [_shape(h) for h in holds],
               await _rows(conn, [pre, postpaid]))
        await balances_are_running_sums(conn)
        await step.rollback()

        assert now[0] == before[0], ("admission", case)
        assert now[1] == before[1], ("holds", case)
        assert now[2] == before[2], ("rows", case, now, before)
        await tx.rollback()
    finally:
        await p.release(conn)
        await p.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=case_st())
def test_admission_and_hold_in_one_statement_is_admission_then_reserve(
        pool: asyncpg.Pool, pg_url: str, case: dict[str, Any]) -> None:
    """The statement's admissions (Python's :func:`~billing.admission.decide` on what it
    read), holds (``billing_reserve_holds`` with the terms, first unit and cap it builds
    from the policies) and the rows it writes are those of the admission then
    ``reserve_all`` of the admitted prepaid asks, for prepaid and postpaid asks, prices
    the rating refuses, groups, balances overdrawn or a yen either side of a first
    unit, live holds and slices."""
    run_async(lambda: compared(pg_url, case))


async def test_a_batch_without_prepaid_consultations_reads_only(clean: asyncpg.Pool) -> None:
    """Asks that name no consultation, or are postpaid, take the admission statement
    alone: nothing is held."""
    admissions = Admissions(clean, postpaid_merchants=frozenset({"post"}))
    got = await admissions.answer_all(clean, [Ask("acme", "member-1", 100),
                                              Ask("post", "member-2", 100, None, None, "c-1")])
    assert [a.hold for a in got if isinstance(a, Answer)] == [None, None]
    assert await clean.fetchval("SELECT count(*) FROM billing_reservations") == 0
    assert "billing_admit_and_hold" in ADMIT_AND_HOLD


async def test_an_admitted_prepaid_ask_holds_its_slice_once(clean: asyncpg.Pool) -> None:
    """The hold made with the admission is the consultation's reservation: asked again
    (``Ledger.reserve``, or another admission of it) it is that one."""
    from billing.ledger import Ledger
    ledger = Ledger(clean)
    await ledger.deposit("acme", "member-1", 1000, "op", "bank transfer")
    admissions = Admissions(clean)
    (got,) = await admissions.answer_all(clean, [Ask("acme", "member-1", 100, None, None,
                                                     "c-1", 120)])
    assert isinstance(got, Answer) and got.admission.allowed
    assert isinstance(got.hold, Reservation)
    assert (got.hold.held_yen, got.hold.allowed_s) == (200, 120)
    assert await ledger.reserve("acme", "member-1", "c-1", Terms(100), at_most_s=120) \
        == got.hold
    (again,) = await admissions.answer_all(clean, [Ask("acme", "member-1", 100, None, None,
                                                       "c-1", 120)])
    assert isinstance(again, Answer) and again.hold is None   # made before: read by reserve
    assert await clean.fetchval("SELECT count(*) FROM billing_reservations") == 1
    assert (await ledger.balance("acme", "member-1")).available_yen == 800


async def test_a_batch_on_a_connection_is_its_own_transaction_and_leaves_no_setting(
        clean: asyncpg.Pool) -> None:
    """On a connection outside a transaction (as the batchers call it), the call (one round
    trip, the function's statement under the generic plan) is a transaction of its own:
    its holds are committed when it answers, and the connection is left out of any
    transaction with ``plan_cache_mode`` as it was; a call that fails is rolled back,
    nothing held."""
    from billing.ledger import Ledger
    await Ledger(clean).deposit("acme", "member-1", 1000, "op", "bank transfer")
    admissions = Admissions(clean)
    async with clean.acquire() as conn:
        before = await conn.fetchval("SHOW plan_cache_mode")
        (got,) = await admissions.answer_all(conn, [Ask("acme", "member-1", 100, None, None,
                                                        "c-1", 120)])
        assert isinstance(got, Answer) and isinstance(got.hold, Reservation)
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SHOW plan_cache_mode") == before
        with pytest.raises(asyncpg.PostgresError):
            await admissions.answer_all(conn, [Ask("acme", "member-1", 100, None, None,
                                                   "c-2", 120)],
                                        hold_sql=ADMIT_AND_HOLD + " LIMIT 'x'")
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SHOW plan_cache_mode") == before
    async with clean.acquire() as other:     # committed: seen from another session
        assert await other.fetchval("SELECT array_agg(consultation_id) FROM "
                                    "billing_reservations") == ["c-1"]
