"""The prepaid ledger on a real PostgreSQL: double-entry movements with who and why,
append-only tables, reservations shared by concurrent consultations on one balance, and
(hypothesis) random concurrent sequences of deposits, reservations and settlements that
keep every balance the sum of its movements and never overdraw by more than one unit."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.ledger import (
    _LOCK_BALANCES,
    Balance,
    Grant,
    Ledger,
    LedgerError,
    Refusal,
    Reservation,
    ReserveAsk,
    account_id,
    balance_of,
    books,
    decide_holds,
    post,
    reserve_all,
)
from billing.rating import Terms, rate, seconds_affordable, whole_units_s
from shared.db import create_pool, migrate_url
from tests.harness.sync import run_async
from tests.integration import billing_db

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()
PER_MINUTE = Terms(price_per_minute_yen=300, unit_s=60, grace_s=30, max_talk_s=3600)


async def reserved(ledger: Ledger, account: str, consultation: str, terms: Terms = PER_MINUTE,
                   **kw: int) -> Reservation:
    got = await ledger.reserve("acme", account, consultation, terms, **kw)
    assert isinstance(got, Reservation), got
    return got


async def test_deposit_opens_the_account_and_every_movement_says_who_and_why(
        clean: asyncpg.Pool) -> None:
    ledger = Ledger(clean)
    with pytest.raises(LedgerError) as missing:
        await ledger.balance("acme", "c-1")
    assert missing.value.status == 404
    await ledger.deposit("acme", "c-1", 3000, "sato", "bank transfer ref 1")
    await ledger.adjust("acme", "c-1", -500, "sato", "double entry by mistake")
    assert await ledger.balance("acme", "c-1") == Balance(2500, 0)
    moves = await ledger.movements("acme", "c-1")
    assert [(m.kind, m.amount_yen, m.by, m.reason, m.legs) for m in moves] == [
        ("deposit", 3000, "sato", "bank transfer ref 1", {"available": 3000, "funding": -3000}),
        ("adjustment", 500, "sato", "double entry by mistake",
         {"available": -500, "adjustment": 500})]
    assert await ledger.movements("acme", "c-1", after_id=moves[0].id) == moves[1:]
    with pytest.raises(LedgerError):            # another merchant's account is not found
        await ledger.balance("other", "c-1")
    with pytest.raises(LedgerError) as low:
        await ledger.adjust("acme", "c-1", -2501, "sato", "too much")
    assert (low.value.status, low.value.error_id) == (409, "insufficient-balance")
    with pytest.raises(ValueError):
        await ledger.deposit("acme", "c-1", 0, "sato", "nothing")


async def test_entries_and_movements_are_append_only_and_balanced(clean: asyncpg.Pool) -> None:
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 1000, "sato", "first")
    r = await reserved(ledger, "c-1", "call-1")
    await ledger.settle("acme", r.id, 100)
    for sql in ("UPDATE billing_entries SET amount_yen = amount_yen + 1",
                "DELETE FROM billing_entries",
                "UPDATE billing_transactions SET reason = 'x'",
                "DELETE FROM billing_transactions",
                "UPDATE billing_reservations SET held_yen = 0",
                "DELETE FROM billing_settlements"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await clean.execute(sql)
    async with clean.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():
                acc = await conn.fetchval("SELECT id FROM billing_accounts")
                txn = await conn.fetchval(
                    "INSERT INTO billing_transactions (account_id, kind, amount_yen, by_whom, "
                    "reason) VALUES ($1, 'deposit', 5, 'x', 'y') RETURNING id", acc)
                await conn.execute("INSERT INTO billing_entries (transaction_id, account_id, "
                                   "book, amount_yen, balance_after) "
                                   "VALUES ($1, $2, 'available', 5, 405)", txn, acc)
        # balanced, but the legs' balances are not their books' running sums
        with pytest.raises(asyncpg.CheckViolationError, match="says its book's balance"):
            async with conn.transaction():
                txn = await conn.fetchval(
                    "INSERT INTO billing_transactions (account_id, kind, amount_yen, by_whom, "
                    "reason) VALUES ($1, 'deposit', 5, 'x', 'y') RETURNING id", acc)
                await conn.execute("INSERT INTO billing_entries (transaction_id, account_id, "
                                   "book, amount_yen, balance_after) "
                                   "VALUES ($1, $2, 'available', 5, 5000), "
                                   "($1, $2, 'funding', -5, -1005)", txn, acc)
    assert await ledger.balance("acme", "c-1") == Balance(1000 - 600, 0)


async def test_an_entry_is_of_its_transactions_account(clean: asyncpg.Pool) -> None:
    """An entry names its transaction and its account, and the database keeps them one:
    a leg of one account's transaction written to another account, or a leg of no
    transaction, is refused."""
    ledger = Ledger(clean)
    for account in ("c-1", "c-2"):
        await ledger.deposit("acme", account, 1000, "sato", "first")
    ids = {r["account"]: r["id"] for r in await clean.fetch(
        "SELECT account, id FROM billing_accounts")}
    async with clean.acquire() as conn:
        txn = await conn.fetchval(
            "INSERT INTO billing_transactions (account_id, kind, amount_yen, by_whom, reason) "
            "VALUES ($1, 'deposit', 5, 'x', 'y') RETURNING id", ids["c-1"])
        for to_txn in (txn, txn + 1000):        # c-1's transaction; none
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await conn.execute(
                    "INSERT INTO billing_entries (transaction_id, account_id, book, amount_yen, "
                    "balance_after) VALUES ($1, $2, 'available', 5, 1005), "
                    "($1, $2, 'funding', -5, -1005)", to_txn, ids["c-2"])
    assert await ledger.balance("acme", "c-2") == Balance(1000, 0)


async def test_a_reservation_names_an_account_that_exists_for_good(clean: asyncpg.Pool) -> None:
    """A reservation's account is checked once per inserting statement (no foreign key's
    check per row, migration 0025): a statement writing any reservation of no account is
    refused whole; an account is never updated or deleted, so the account it named stays;
    TRUNCATE of the accounts leaves no reservation behind (the foreign key's CASCADE emptied
    them; now the TRUNCATE is refused unless it names them)."""
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 1000, "sato", "first")
    r = await reserved(ledger, "c-1", "call-1")
    await ledger.settle("acme", r.id, 30)
    acc = await clean.fetchval("SELECT id FROM billing_accounts WHERE account = 'c-1'")
    insert = ("INSERT INTO billing_reservations (account_id, consultation_id, terms, held_yen, "
              "allowed_s) SELECT a, 'c-' || a, '{}', 0, 0 FROM unnest($1::bigint[]) a")
    for accounts in ([acc + 1], [acc, acc + 1], [acc + 1, acc]):
        with pytest.raises(asyncpg.ForeignKeyViolationError, match=f"account {acc + 1} "):
            await clean.execute(insert, accounts)
    assert await clean.fetchval("SELECT count(*) FROM billing_reservations") == 1
    await clean.execute(insert, [acc])                       # its own account: written
    async with clean.acquire() as conn, conn.transaction():  # an account of its transaction
        new = await account_id(conn, "acme", "c-2", create=True)
        await conn.execute(insert, [new])
    for sql in ("DELETE FROM billing_accounts",
                "UPDATE billing_accounts SET id = DEFAULT",
                "UPDATE billing_accounts SET merchant_id = 'other' WHERE account = 'c-2'"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await clean.execute(sql)
    # a customer's erasure pseudonymises the account's name: its id and merchant stay
    ids = await clean.fetch("SELECT id FROM billing_accounts ORDER BY id")
    await clean.execute("UPDATE billing_accounts SET account = 'c-3' WHERE account = 'c-2'")
    assert await clean.fetch("SELECT id FROM billing_accounts ORDER BY id") == ids
    assert await clean.fetchval(
        "SELECT count(*) FROM billing_reservations r JOIN billing_accounts a "
        "ON a.id = r.account_id") == 3
    with pytest.raises(asyncpg.FeatureNotSupportedError):     # still by the ledger's keys
        await clean.execute("TRUNCATE billing_accounts")
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="reservations left"):
        await clean.execute("TRUNCATE billing_accounts CASCADE")
    assert await clean.fetchval("SELECT count(*) FROM billing_reservations") == 3
    await clean.execute("TRUNCATE billing_accounts, billing_reservations CASCADE")
    for table in ("billing_reservations", "billing_settlements", "billing_transactions"):
        assert await clean.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_a_reservation_holds_what_the_balance_pays_and_settles_at_the_rated_amount(
        clean: asyncpg.Pool) -> None:
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 1000, "sato", "first")
    r = await reserved(ledger, "c-1", "call-1")
    assert (r.allowed_s, r.held_yen) == (30 + 3 * 60, 900)   # 3 minutes after 30 s free
    assert await ledger.balance("acme", "c-1") == Balance(100, 900)
    assert await ledger.reserve("acme", "c-1", "call-1", PER_MINUTE) == r   # asked again
    settled = await ledger.settle("acme", r.id, 95)          # 65 s billed as 2 minutes
    assert (settled.charge.total_yen, settled.charge.tax_yen, settled.released_yen,
            settled.overrun_yen) == (600, 54, 300, 0)
    assert await ledger.balance("acme", "c-1") == Balance(400, 0)
    assert await ledger.settle("acme", r.id, 95) == settled  # a retried settle
    with pytest.raises(LedgerError) as again:
        await ledger.settle("acme", r.id, 96)
    assert again.value.error_id == "already-settled"
    with pytest.raises(LedgerError):
        await ledger.settle("other", r.id, 95)
    kinds = [(m.kind, m.amount_yen) for m in await ledger.movements("acme", "c-1")]
    # a hold is its reservation row, no movement (migration 0021): the charge alone
    assert kinds == [("deposit", 1000), ("charge", 600)]
    await ledger.refund("acme", "c-1", 600, "sato", "advisor dropped the line")
    with pytest.raises(LedgerError) as over:
        await ledger.refund("acme", "c-1", 1, "sato", "again")
    assert over.value.error_id == "refund-exceeds-charges"
    assert await ledger.balance("acme", "c-1") == Balance(1000, 0)


async def test_calls_share_one_balance_and_a_small_balance_is_refused_with_amounts(
        clean: asyncpg.Pool) -> None:
    ledger = Ledger(clean)
    assert await ledger.reserve("acme", "nobody", "call-0", PER_MINUTE) == Refusal(
        "balance-too-low", 0, 300)
    await ledger.deposit("acme", "c-1", 1000, "sato", "first")
    first = await reserved(ledger, "c-1", "call-1", at_most_s=90)
    second = await reserved(ledger, "c-1", "call-2")
    assert (first.held_yen, second.held_yen, second.allowed_s) == (300, 600, 30 + 120)
    assert await ledger.reserve("acme", "c-1", "call-3", PER_MINUTE) == Refusal(
        "balance-too-low", 100, 300)
    overrun = await ledger.settle("acme", first.id, 90 + 20)  # cut off 20 s late
    assert (overrun.charge.total_yen, overrun.overrun_yen) == (600, 300)
    await ledger.settle("acme", second.id, 0)
    assert await ledger.balance("acme", "c-1") == Balance(400, 0)


async def test_concurrent_reservations_never_hold_more_than_the_balance(
        clean: asyncpg.Pool) -> None:
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 3000, "sato", "first")
    got = await asyncio.gather(*(ledger.reserve("acme", "c-1", f"call-{i}", PER_MINUTE,
                                                at_most_s=30 + 120) for i in range(12)))
    holds = [g for g in got if isinstance(g, Reservation)]
    assert len(holds) == 5 and sum(h.held_yen for h in holds) == 3000
    assert await ledger.balance("acme", "c-1") == Balance(0, 3000)


async def test_holds_that_waited_for_the_accounts_lock_see_what_its_holder_wrote(
        clean: asyncpg.Pool) -> None:
    """``reserve_all`` locks the accounts and reads their balances in one statement's
    plpgsql function (``billing_reserve_holds``), each read after the lock: when
    it waited for an account's lock, it reads the balance as the lock's holder left it
    (a deposit made under the lock), and holds what that balance pays for."""
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 900, "sato", "first")
    async with clean.acquire() as holder, clean.acquire() as conn:
        async with holder.transaction():
            acc = await account_id(holder, "acme", "c-1", create=False)
            assert acc is not None

            async def reserve() -> list[Reservation | Refusal]:
                async with conn.transaction():
                    return await reserve_all(
                        conn, [ReserveAsk("acme", "c-1", "call-1", PER_MINUTE)])

            reserving = asyncio.create_task(reserve())
            for _ in range(500):
                if await clean.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE '%billing_reserve_holds%'"):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the holds did not wait for the account's lock")
            await post(holder, acc, "deposit", 600, [("available", 600), ("funding", -600)],
                       "sato", "second")
        (got,) = await reserving
    assert isinstance(got, Reservation)
    assert (got.allowed_s, got.held_yen) == (30 + 5 * 60, 1500)
    assert await ledger.balance("acme", "c-1") == Balance(0, 1500)


async def test_holds_look_a_reservation_made_before_up_by_its_key_whatever_the_history(
        clean: asyncpg.Pool) -> None:
    """Locking and reading a batch's accounts finds an ask's reservation made before by
    its key (account, consultation), also once the statement runs its generic plan (after
    five calls on a connection), and its live holds from its newest reservation on (each
    reservation's ``live_from``, migration 0021): ten batches on an account of 30
    reservations settled one after the other, none of them asked again, fetch at most the
    newest two of its reservations each (its ``live_from``, and the live ones from there),
    not its history."""
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 1_000_000, "sato", "first")
    for i in range(30):
        await ledger.settle("acme", (await reserved(ledger, "c-1", f"call-{i}")).id, 10)
    live = await reserved(ledger, "c-1", "call-live")
    fetched = ("SELECT idx_tup_fetch FROM pg_stat_xact_user_tables "   # this backend's,
               "WHERE relname = 'billing_reservations'")                # not yet reported
    async with clean.acquire() as conn, conn.transaction():
        before = await conn.fetchval(fetched)
        for i in range(10):
            (row,) = await conn.fetch(_LOCK_BALANCES, ["acme"], ["c-1"], [f"new-{i}"])
            assert row["made"] is None and row["held_yen"] == live.held_yen
            assert row["live_from"] == live.id
        assert await conn.fetchval(fetched) - before <= 10 * 2


async def test_a_live_reservation_extends_as_the_balance_allows(clean: asyncpg.Pool) -> None:
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 1000, "sato", "first")
    r = await reserved(ledger, "c-1", "call-1", at_most_s=90)
    assert (r.allowed_s, r.held_yen) == (90, 300)
    grown = await ledger.extend("acme", r.id)
    assert (grown.allowed_s, grown.held_yen) == (30 + 180, 900)
    assert await ledger.extend("acme", r.id) == grown          # nothing more affordable
    await ledger.deposit("acme", "c-1", 600, "sato", "topped up during the call")
    assert (await ledger.extend("acme", r.id, at_most_s=270)).allowed_s == 270
    grown = await ledger.extend("acme", r.id)
    assert (grown.allowed_s, grown.held_yen) == (30 + 300, 1500)
    assert await ledger.balance("acme", "c-1") == Balance(100, 1500)
    assert await ledger.reserve("acme", "c-1", "call-1", PER_MINUTE) == grown
    with pytest.raises(LedgerError):
        await ledger.extend("other", r.id)
    settled = await ledger.settle("acme", r.id, 200)           # 170 s billed as 3 minutes
    assert (settled.charge.total_yen, settled.released_yen) == (900, 600)
    assert await ledger.balance("acme", "c-1") == Balance(700, 0)
    with pytest.raises(LedgerError) as done:
        await ledger.extend("acme", r.id)
    assert done.value.error_id == "already-settled"


async def test_a_reservation_priced_lower_at_the_answer_pays_longer_and_settles_there(
        clean: asyncpg.Pool) -> None:
    """Reserved at 300 yen a minute (a group's dearest member), priced at 100 (who
    answered): the hold pays three times the talk, extensions and the settlement rate
    at 100; priced once; a dearer price or a settled reservation refused."""
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 1000, "sato", "first")
    r = await reserved(ledger, "c-1", "call-1", at_most_s=90)   # 30 s free + 1 min: 300 yen
    with pytest.raises(LedgerError) as dearer:
        await ledger.reprice("acme", r.id, 400)
    assert dearer.value.error_id == "price-above-reservation"
    priced = await ledger.reprice("acme", r.id, 100, advisor_id=7)
    assert (priced.allowed_s, priced.held_yen, priced.terms.price_per_minute_yen) == (
        30 + 180, 300, 100)
    assert await ledger.reprice("acme", r.id, 50) == priced          # priced once
    assert await ledger.balance("acme", "c-1") == Balance(700, 300)
    grown = await ledger.extend("acme", r.id, at_most_s=330)          # at 100 yen a minute
    assert (grown.allowed_s, grown.held_yen) == (330, 500)
    (live,) = await ledger.live("acme")
    assert live.reservation == grown
    settled = await ledger.settle("acme", r.id, 200)                  # 3 minutes at 100
    assert (settled.charge.total_yen, settled.released_yen) == (300, 200)
    assert await ledger.balance("acme", "c-1") == Balance(700, 0)
    with pytest.raises(LedgerError) as done:
        await ledger.reprice("acme", r.id, 100)
    assert done.value.error_id == "already-settled"
    r2 = await reserved(ledger, "c-1", "call-2", at_most_s=90)
    with pytest.raises(LedgerError) as other:
        await ledger.reprice("other", r2.id, 100)
    assert other.value.error_id == "not-found"


async def test_concurrent_settles_of_one_reservation_charge_once(clean: asyncpg.Pool) -> None:
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 1000, "sato", "first")
    r = await reserved(ledger, "c-1", "call-1")
    settled = await asyncio.gather(*(ledger.settle("acme", r.id, 95) for _ in range(6)))
    assert len(set(settled)) == 1 and settled[0].charge.total_yen == 600
    assert await ledger.balance("acme", "c-1") == Balance(400, 0)


async def balances_are_running_sums(db: asyncpg.Pool) -> None:
    """Every entry's ``balance_after`` is the sum of its account's book up to it."""
    wrong = await db.fetch(
        """SELECT id, balance_after, running FROM (
               SELECT id, balance_after, sum(amount_yen) OVER (PARTITION BY account_id, book
                                                              ORDER BY id) AS running
               FROM billing_entries) s WHERE balance_after <> running""")
    assert wrong == []


async def test_migration_0013_back_fills_each_entrys_balance_after(
        pg_server_url: str) -> None:
    """Entries written before ``balance_after`` existed (two accounts, deposits, a hold,
    a charge and a release, interleaved): after migration 0013 each carries its running
    balance, the balances read from the newest entries are the sums, and the ledger goes
    on from there."""
    async with billing_db.database_before(pg_server_url, "entries_before_balances", "0013") as url:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                accounts = [await conn.fetchval(
                    "INSERT INTO billing_accounts (merchant_id, account) VALUES ('acme', $1) "
                    "RETURNING id", a) for a in ("c-1", "c-2")]
                for acc, legs in [(0, (("available", 1000), ("funding", -1000))),
                                  (1, (("available", 300), ("funding", -300))),
                                  (0, (("available", -400), ("held", 400))),
                                  (1, (("available", 50), ("funding", -50))),
                                  (0, (("held", -250), ("revenue", 250))),
                                  (0, (("held", -150), ("available", 150)))]:
                    txn = await conn.fetchval(
                        "INSERT INTO billing_transactions (account_id, kind, amount_yen, "
                        "by_whom, reason) VALUES ($1, 'deposit', 1, 'op', 'before') "
                        "RETURNING id", accounts[acc])
                    await conn.executemany(
                        "INSERT INTO billing_entries (transaction_id, account_id, book, "
                        "amount_yen) VALUES ($1, $2, $3, $4)",
                        [(txn, accounts[acc], book, yen) for book, yen in legs])
        finally:
            await conn.close()
        assert (await migrate_url(url, list(billing_db.SETS)))[0] == \
            "billing/0013_entry_balances.sql"
        p = await create_pool(url)
        try:
            await balances_are_running_sums(p)
            ledger = Ledger(p)
            assert await ledger.balance("acme", "c-1") == Balance(750, 0)
            assert await ledger.balance("acme", "c-2") == Balance(350, 0)
            await ledger.deposit("acme", "c-1", 100, "op", "after")
            assert await ledger.balance("acme", "c-1") == Balance(850, 0)
            await balances_are_running_sums(p)
        finally:
            await p.close()


async def test_migration_0021_turns_live_old_style_holds_into_reservations_that_hold(
        pg_server_url: str) -> None:
    """Holds written as before migration 0021 (a ``hold`` movement into the ``held`` book,
    and one more for an extension): a live one gets its ``release`` (its money back in
    ``available``) and still holds as a live reservation, the settled one is left as it
    was; afterwards a new hold sees the old live one, and settling the old one charges
    from ``available`` alone, no release."""
    async with billing_db.database_before(pg_server_url, "holds_before_0021", "0021") as url:
        p = await create_pool(url)
        try:
            ledger = Ledger(p)
            await ledger.deposit("acme", "c-1", 3000, "sato", "first")
            await ledger.deposit("acme", "c-2", 500, "sato", "first")
            async with p.acquire() as conn:     # 0020's billing_reserve_holds: old style
                old, done, other = await reserve_all(conn, [
                    ReserveAsk("acme", "c-1", "old-live", PER_MINUTE, at_most_s=90),
                    ReserveAsk("acme", "c-1", "old-done", PER_MINUTE, at_most_s=90),
                    ReserveAsk("acme", "c-2", "old-other", PER_MINUTE)])
                assert isinstance(old, Reservation) and isinstance(done, Reservation)
                assert isinstance(other, Reservation)
                assert (old.held_yen, done.held_yen, other.held_yen) == (300, 300, 300)
                async with conn.transaction():   # an extension as extend wrote it then
                    acc = await account_id(conn, "acme", "c-1", create=False)
                    assert acc is not None
                    await post(conn, acc, "hold", 300, [("available", -300), ("held", 300)],
                               "billing", "consultation old-live extended", old.id)
                    await conn.execute(
                        "INSERT INTO billing_reservation_extensions (reservation_id, "
                        "held_yen, allowed_s) VALUES ($1, 600, 150)", old.id)
                    # settled as before: charge from held, release the rest
                    await post(conn, acc, "charge", 200, [("held", -200), ("revenue", 200)],
                               "billing", "consultation old-done", done.id)
                    await post(conn, acc, "release", 100, [("held", -100), ("available", 100)],
                               "billing", "consultation old-done", done.id)
                    await conn.execute(
                        "INSERT INTO billing_settlements (reservation_id, talk_s, billed_s, "
                        "total_yen, tax_yen, released_yen) VALUES ($1, 70, 60, 200, 18, 100)",
                        done.id)
                assert await books(conn, acc) == {"available": 2200, "held": 600,
                                                  "funding": -3000, "revenue": 200}
        finally:
            await p.close()
        assert (await migrate_url(url, list(billing_db.SETS)))[0] == \
            "billing/0021_holds_as_reservation_rows.sql"
        p = await create_pool(url)
        try:
            await balances_are_running_sums(p)
            ledger = Ledger(p)
            assert await ledger.balance("acme", "c-1") == Balance(2200, 600)
            assert await ledger.balance("acme", "c-2") == Balance(200, 300)
            async with p.acquire() as conn:
                acc = await account_id(conn, "acme", "c-1", create=False)
                assert acc is not None
                assert (await books(conn, acc))["held"] == 0
                assert (await books(conn, acc))["available"] == 2800
            moves = await ledger.movements("acme", "c-1")
            assert [(m.kind, m.amount_yen, m.reservation_id, m.legs) for m in moves[-1:]] == [
                ("release", 600, old.id, {"held": -600, "available": 600})]
            # a new hold takes what the old live one leaves: 2200 yen pays 7 minutes
            new = await reserved(ledger, "c-1", "new-1")
            assert (new.allowed_s, new.held_yen) == (30 + 7 * 60, 2100)
            assert await ledger.balance("acme", "c-1") == Balance(100, 2700)
            settled = await ledger.settle("acme", old.id, 95)    # 2 minutes billed
            assert (settled.charge.total_yen, settled.released_yen) == (600, 0)
            assert await ledger.balance("acme", "c-1") == Balance(100, 2100)
            assert [(m.kind, m.amount_yen, m.legs) for m in
                    (await ledger.movements("acme", "c-1"))[-1:]] == [
                ("charge", 600, {"available": -600, "revenue": 600})]
            await ledger.settle("acme", new.id, 0)
            assert await ledger.balance("acme", "c-1") == Balance(2200, 0)
            await balances_are_running_sums(p)
        finally:
            await p.close()


# --- property: random concurrent sequences against the real database ----------------------

NAMES = itertools.count()
terms_st = st.builds(Terms, price_per_minute_yen=st.integers(30, 600),
                     unit_s=st.sampled_from([1, 10, 30, 60]), grace_s=st.integers(0, 60),
                     minimum_yen=st.integers(0, 500), max_talk_s=st.integers(60, 3600))
# ("deposit", yen, -, -) or ("call", the share of the balance it may hold in quarters,
# how long it talks relative to its allowed time in %, whether its cut-off came late)
Op = tuple[str, int, int, bool]
ops_st = st.lists(st.one_of(
    st.tuples(st.just("deposit"), st.integers(1, 1500), st.just(0), st.just(False)),
    st.tuples(st.just("call"), st.integers(1, 4), st.integers(0, 100), st.booleans())),
    min_size=1, max_size=14)


async def scenario(url: str, terms: Terms, ops: list[Op]) -> None:
    p = await create_pool(url, min_size=8, max_size=8)
    try:
        ledger = Ledger(p)
        account = f"prop-{next(NAMES)}"
        await ledger.deposit("acme", account, 1, "test", "open")
        # one more billing unit costs at most this (the first one: the minimum charge)
        unit_yen = max(terms.first_unit_yen(),
                       -(-terms.price_per_minute_yen * terms.unit_s // 60))

        async def consult(i: int, share: int, talk_pct: int, late_cut: bool) -> int:
            balance = await ledger.balance("acme", account)
            cap = seconds_affordable(balance.available_yen * share // 4, terms)
            got = await ledger.reserve("acme", account, f"c{i}", terms, at_most_s=cap)
            if isinstance(got, Refusal):
                assert got.available_yen < got.needed_yen == terms.first_unit_yen()
                return 0
            assert got.held_yen == rate(got.allowed_s, terms).total_yen
            if share < 4:       # reserved a slice: a unit more, then the rest it pays for
                more = await ledger.extend("acme", got.id, at_most_s=got.allowed_s + 1)
                assert more.held_yen == rate(more.allowed_s, terms).total_yen
                assert more.allowed_s <= whole_units_s(got.allowed_s + 1, terms)
                got = await ledger.extend("acme", got.id)
                assert got.held_yen == rate(got.allowed_s, terms).total_yen
            talk = got.allowed_s * talk_pct // 100 + (terms.unit_s - 1 if late_cut else 0)
            settled = await ledger.settle("acme", got.id, talk)
            assert settled.charge == rate(talk, terms)
            assert settled.overrun_yen <= (unit_yen if late_cut else 0)
            return 1 if settled.overrun_yen else 0

        tasks = [ledger.deposit("acme", account, op[1], "test", "top-up")
                 if op[0] == "deposit" else consult(i, *op[1:]) for i, op in enumerate(ops)]
        results = await asyncio.gather(*tasks)
        late = sum(r for op, r in zip(ops, results, strict=True) if op[0] == "call")
        moves = await ledger.movements("acme", account, limit=1000)
        running: dict[str, int] = {}
        for m in moves:
            assert sum(m.legs.values()) == 0
            for book, yen in m.legs.items():
                running[book] = running.get(book, 0) + yen
            assert running.get("held", 0) >= 0
            assert running.get("available", 0) >= -unit_yen * late
        deposits = 1 + sum(op[1] for op in ops if op[0] == "deposit")
        assert await ledger.balance("acme", account) == Balance(running["available"], 0)
        assert running["funding"] == -deposits
        assert running["available"] == deposits - running.get("revenue", 0)
        assert running.get("held", 0) == 0
        if late == 0:
            assert running["available"] >= 0
        await balances_are_running_sums(p)
    finally:
        await p.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms=terms_st, ops=ops_st)
def test_random_concurrent_sequences_keep_the_ledger_whole(
        pool: asyncpg.Pool, pg_url: str, terms: Terms, ops: list[Op]) -> None:
    run_async(lambda: scenario(pg_url, terms, ops))


# --- property: the database's rule for a hold is the Python one ------------------------------

any_terms_st = st.builds(
    Terms, price_per_minute_yen=st.one_of(st.sampled_from([0, 1, 30, 60, 120, 300]),
                                          st.integers(0, 600), st.integers(0, 100_000)),
    unit_s=st.one_of(st.sampled_from([1, 6, 10, 30, 60]), st.integers(1, 3600)),
    grace_s=st.one_of(st.just(0), st.integers(0, 120), st.integers(0, 3600)),
    minimum_yen=st.one_of(st.just(0), st.integers(0, 1000), st.integers(0, 1_000_000)),
    max_talk_s=st.one_of(st.integers(1, 3600), st.integers(1, 86_400)),
    tax_percent=st.integers(0, 100))
Asked = tuple[int, int, Terms, int | None]


@st.composite
def batch_st(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[Asked]]:
    """Balances (available, held: a live reservation's hold) of up to 5 accounts and up
    to 12 asks (account: an index into the balances, past them none; consultation;
    terms; at_most_s): the asks' terms from a few, the balances often a yen either side
    of what some talk costs under one of them (where a unit more is just paid for, or
    just not)."""
    terms = draw(st.lists(any_terms_st, min_size=1, max_size=3))
    at_edge = st.tuples(st.sampled_from(terms), st.integers(0, 7200),
                        st.integers(-1, 1)).map(lambda x: rate(x[1], x[0]).total_yen + x[2])
    balance = st.one_of(at_edge, st.integers(-500, 3000), st.integers(0, 10_000_000))
    balances = draw(st.lists(st.tuples(balance, st.integers(0, 5000)), max_size=5))
    asks = draw(st.lists(st.tuples(
        st.integers(0, 5), st.integers(0, 6), st.sampled_from(terms),
        st.one_of(st.none(), st.integers(0, 600), st.integers(0, 90_000))),
        min_size=1, max_size=12))
    return balances, asks


async def grants_compared(url: str, balances: list[tuple[int, int]],
                          asks: list[Asked]) -> None:
    """One batch by ``reserve_all`` (the database's rule) against :func:`decide_holds`
    (Python's) on the same balances (available, held), in a transaction rolled back: the
    account's available book is both, and a live reservation (written before migration
    0021, without ``live_from``) holds ``held`` of it."""
    conn = await asyncpg.connect(url)
    try:
        tx = conn.transaction()
        await tx.start()
        accounts: list[int] = []
        name = f"g{next(NAMES)}"
        for i, (available, held) in enumerate(balances):
            acc = await account_id(conn, "acme", f"{name}-{i}", create=True)
            assert acc is not None
            await post(conn, acc, "adjustment", abs(available + held) or 1,
                       [("available", available + held),
                        ("adjustment", -available - held)], "t", "the balances")
            await conn.execute(
                "INSERT INTO billing_reservations (account_id, consultation_id, terms, "
                "held_yen, allowed_s) VALUES ($1, 'live-before', '{}', $2, 0)", acc, held)
            accounts.append(acc)
        batch = [ReserveAsk("acme", f"{name}-{a}", f"c{c}", terms, at_most_s)
                 for a, c, terms, at_most_s in asks]
        got = await reserve_all(conn, batch)
        python = decide_holds(batch, [accounts[a] if a < len(accounts) else None
                                      for a, *_ in asks],
                              {acc: available for acc, (available, _) in
                               zip(accounts, balances, strict=True)})
        for i, (ask, sql, py) in enumerate(zip(batch, got, python, strict=True)):
            if isinstance(py, Refusal):
                assert sql == py, (i, ask)
            elif isinstance(py, int):
                assert sql == got[py], (i, ask)
            else:
                assert isinstance(sql, Reservation), (i, ask, sql, py)
                assert (sql.held_yen, sql.allowed_s, sql.terms, sql.consultation_id) == (
                    py.held_yen, py.allowed_s, ask.terms, ask.consultation_id), (i, ask)
        for acc, (available, held) in zip(accounts, balances, strict=True):
            took = sum(py.held_yen for py, a in zip(python, asks, strict=True)
                       if isinstance(py, Grant) and a[0] < len(accounts)
                       and accounts[a[0]] == acc)
            sums = await books(conn, acc)         # a hold is no movement
            assert (sums.get("available", 0), sums.get("held", 0)) == (available + held, 0)
            assert await balance_of(conn, acc) == Balance(available - took, held + took)
        await balances_are_running_sums(conn)
        await tx.rollback()
    finally:
        await conn.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batch_st())
def test_the_databases_holds_are_pythons_refusals_included(
        pool: asyncpg.Pool, pg_url: str, batch: tuple[list[tuple[int, int]], list[Asked]]
        ) -> None:
    """``billing_reserve_holds`` (migration 0019) grants, refuses and shares reservations
    as :func:`billing.ledger.decide_holds` (``seconds_affordable``, ``whole_units_s``,
    ``rate``) decides, over random terms, balances (overdrawn ones too), live holds and
    asks (several on an account, a consultation asked twice, accounts that do not exist),
    and the balances it leaves are what the grants took (no movement: live holds)."""
    run_async(lambda: grants_compared(pg_url, *batch))
