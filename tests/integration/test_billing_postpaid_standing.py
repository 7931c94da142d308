"""What a postpaid account stands at (its unpaid and failed charges) is read from its
charges since its oldest unpaid one (migration 0028's ``open_from``), and reads what a
scan of its whole history reads: after every step of random sequences of charges, Stripe's
answers, retries and operators' closings on a few accounts, and for charges recorded at
once on one account. The read's cost does not grow with the paid history, a charge is
refused an id below its account's newest, and a paid or closed charge takes no attempt."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from billing.admission import Admissions, Answer, Ask
from billing.postpaid import Postpaid
from billing.rating import Terms
from billing.standing import CHARGES, close, standing, unpaid_sql
from tests.integration import billing_db
from tests.integration.localstripe import client_for
from tests.integration.test_billing_admission_store import card_on_file
from tests.integration.test_edge_app import free_port

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()

MERCHANT, PREPAID = "acme", "prepaid"
ACCOUNTS = ("member-1", "member-2", "member-3")

#: what the account stands at by its whole history: every charge it ever had, each state read
WHOLE_HISTORY = f"""SELECT count(*) FILTER (WHERE state IN ('pending', 'failed')) AS unpaid,
                           count(*) FILTER (WHERE state = 'failed') AS failed
                    FROM ({CHARGES} WHERE c.account_id = $1) s"""


def _postpaid(db: asyncpg.Pool) -> Postpaid:
    """Recording only: no Stripe call is made (the client's port answers nothing)."""
    return Postpaid(db, client_for(free_port()))


async def _whole_history(db: asyncpg.Pool, account: str) -> tuple[int, bool]:
    acc = await db.fetchval("SELECT id FROM billing_accounts WHERE merchant_id = $1 "
                            "AND account = $2", MERCHANT, account)
    row = await db.fetchrow(WHOLE_HISTORY, acc)
    return row["unpaid"], row["failed"] > 0


async def _admitted(db: asyncpg.Pool) -> list[tuple[int, bool]]:
    """Each account's unpaid count and dunning as both admission statements read them:
    the plain one, and the one that also holds (a prepaid ask in the batch)."""
    admissions = Admissions(db, postpaid_merchants=frozenset({MERCHANT}),
                            max_unpaid_charges=1_000)
    asks = [Ask(MERCHANT, a, 100) for a in ACCOUNTS]
    plain = await admissions.answer_all(db, asks)
    held = await admissions.answer_all(db, [*asks, Ask(PREPAID, "p", 100, consultation_id=
                                                       f"c-{random.random()}")])
    reasons = []
    for one, other in zip(plain, held, strict=False):
        assert isinstance(one, Answer) and isinstance(other, Answer)
        assert one.admission == other.admission
        reasons.append(one.admission.reason)
    rows = await db.fetch(
        f"""SELECT s.unpaid, s.failed FROM unnest($1::text[]) WITH ORDINALITY AS k (a, n)
            JOIN billing_accounts acct ON acct.merchant_id = $2 AND acct.account = k.a,
            LATERAL ({unpaid_sql("acct.id")}) s ORDER BY k.n""", list(ACCOUNTS), MERCHANT)
    read = [(r["unpaid"], r["failed"] > 0) for r in rows]
    assert reasons == ["in-dunning" if failed else "ok" for _, failed in read]
    return read


async def _open(db: asyncpg.Pool, state: str) -> list[asyncpg.Record]:
    return await db.fetch(f"SELECT id, merchant_id, attempt FROM ({CHARGES}) s "
                          "WHERE state = $1 ORDER BY id", state)


async def _step(db: asyncpg.Pool, rng: random.Random, n: int) -> str:
    """One thing that happens to the accounts' charges: a consultation charged (recorded,
    its first attempt without an outcome), an attempt answered (paid or declined), a
    charge in dunning retried or closed by an operator."""
    pending, failed = await _open(db, "pending"), await _open(db, "failed")
    moves = ["record"] + ["answer"] * bool(pending) + ["retry", "close"] * bool(failed)
    move = rng.choice(moves)
    if move == "record":
        await _postpaid(db).record(MERCHANT, rng.choice(ACCOUNTS), f"consult-{n}",
                                   rng.randint(1, 600), Terms(100), by="calls")
    elif move == "answer":
        charge = rng.choice(pending)
        attempt = await db.fetchval("SELECT id FROM billing_postpaid_attempts WHERE "
                                    "charge_id = $1 ORDER BY attempt DESC LIMIT 1", charge["id"])
        paid = rng.random() < 0.7
        await db.execute("INSERT INTO billing_postpaid_outcomes (attempt_id, outcome, "
                         "payment_intent, failure) VALUES ($1, $2, $3, $4)", attempt,
                         "succeeded" if paid else "failed", f"pi_{attempt}" if paid else None,
                         "" if paid else "card_declined")
    elif move == "retry":
        charge = rng.choice(failed)
        await db.execute("INSERT INTO billing_postpaid_attempts (charge_id, attempt, "
                         "idempotency_key) VALUES ($1, $2, $3)", charge["id"],
                         charge["attempt"] + 1, f"retry-{charge['id']}-{charge['attempt'] + 1}")
    else:
        await close(db, MERCHANT, rng.choice(failed)["id"],
                    rng.choice(("paid-elsewhere", "written-off")), by="op", reason="phoned")
    return move


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_standing_read_from_the_oldest_unpaid_is_the_whole_historys(
        clean: asyncpg.Pool, seed: int) -> None:
    rng = random.Random(seed)
    for account in ACCOUNTS:
        await card_on_file(clean, MERCHANT, account)
    moves = set()
    for n in range(60):
        moves.add(await _step(clean, rng, n))
        truth = [await _whole_history(clean, a) for a in ACCOUNTS]
        assert [(s.unpaid, s.in_dunning) for s in
                [await standing(clean, MERCHANT, a) for a in ACCOUNTS]] == truth, n
        assert await _admitted(clean) == truth, n
    assert moves == {"record", "answer", "retry", "close"}


async def test_charges_recorded_at_once_on_one_account_are_all_unpaid(
        clean: asyncpg.Pool) -> None:
    """Two consultations of a household ending together: each charge is written under the
    account's lock, so the newer one's ``open_from`` covers the other."""
    await card_on_file(clean, MERCHANT, "home")
    for round_ in range(5):
        await asyncio.gather(*(_postpaid(clean).record(MERCHANT, "home", f"c-{round_}-{i}",
                                                       60, Terms(100), by="calls")
                               for i in range(4)))
        got = await standing(clean, MERCHANT, "home")
        assert (got.unpaid, got.in_dunning) == await _whole_history(clean, "home")
        assert got.unpaid == 4 * (round_ + 1)


async def _charges_read(db: asyncpg.Pool, account: str) -> int:
    """How many charge rows the standing's read of ``account`` fetched (EXPLAIN ANALYZE of
    :func:`billing.standing.unpaid_sql`)."""
    acc = await db.fetchval("SELECT id FROM billing_accounts WHERE account = $1", account)
    # the pool's connections decode json
    (plan,) = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {unpaid_sql('$1')}", acc)

    def walk(node: dict) -> int:
        own = (node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
               if node.get("Relation Name") == "billing_postpaid_charges"
               and node.get("Alias") == "c" else 0)
        return own + sum(walk(child) for child in node.get("Plans", []))

    return walk(plan["Plan"])


async def test_the_read_does_not_grow_with_the_paid_history(clean: asyncpg.Pool) -> None:
    """A customer with 200 paid consultations and one unpaid: the read fetches the charges
    from the unpaid one on, not the 200 before it."""
    await card_on_file(clean, MERCHANT, "regular")
    postpaid = _postpaid(clean)
    for n in range(200):
        _, attempt = await postpaid.record(MERCHANT, "regular", f"paid-{n}", 60, Terms(100),
                                           by="calls") or (None, 0)
        await clean.execute("INSERT INTO billing_postpaid_outcomes (attempt_id, outcome, "
                            "payment_intent) VALUES ($1, 'succeeded', 'pi')", attempt)
    assert await _charges_read(clean, "regular") <= 1
    await postpaid.record(MERCHANT, "regular", "unpaid", 60, Terms(100), by="calls")
    for n in range(3):
        _, attempt = await postpaid.record(MERCHANT, "regular", f"later-{n}", 60, Terms(100),
                                           by="calls") or (None, 0)
        await clean.execute("INSERT INTO billing_postpaid_outcomes (attempt_id, outcome, "
                            "payment_intent) VALUES ($1, 'succeeded', 'pi')", attempt)
    assert await _charges_read(clean, "regular") == 4
    got = await standing(clean, MERCHANT, "regular")
    assert (got.unpaid, got.in_dunning) == (1, False) == await _whole_history(clean, "regular")


async def test_a_charge_below_its_accounts_newest_and_an_attempt_on_a_paid_charge_are_refused(
        clean: asyncpg.Pool) -> None:
    await card_on_file(clean, MERCHANT, "member-1")
    postpaid = _postpaid(clean)
    charge, attempt = await postpaid.record(MERCHANT, "member-1", "c-1", 60, Terms(100),
                                            by="calls") or (None, 0)
    assert charge is not None
    acc = await clean.fetchval("SELECT account_id FROM billing_postpaid_charges")
    # an id taken before the account's lock, below a charge written since
    with pytest.raises(asyncpg.SerializationError, match="older than the account's newest"):
        await clean.execute(
            """INSERT INTO billing_postpaid_charges (id, merchant_id, account_id,
                   consultation_id, terms, talk_s, billed_s, total_yen, tax_yen, requested_by)
               OVERRIDING SYSTEM VALUE
               VALUES ($1, $2, $3, 'c-0', '{}', 60, 60, 100, 9, 'calls')""",
            charge.id - 1, MERCHANT, acc)
    await clean.execute("INSERT INTO billing_postpaid_outcomes (attempt_id, outcome, "
                        "payment_intent) VALUES ($1, 'succeeded', 'pi')", attempt)
    with pytest.raises(asyncpg.CheckViolationError, match="paid or closed"):
        await clean.execute("INSERT INTO billing_postpaid_attempts (charge_id, attempt, "
                            "idempotency_key) VALUES ($1, 2, 'again')", charge.id)
