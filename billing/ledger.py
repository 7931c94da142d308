"""The prepaid ledger in PostgreSQL (tables: ``billing/migrations/0001_ledger.sql``).

Per customer account per merchant. Every movement is a transaction row (kind, amount, who,
why) with double-entry legs over the account's books (``available``, ``funding``,
``revenue``, ``adjustment``; ``held`` in history only) that sum to zero; nothing is updated or
deleted, and a balance is the sum of its book's legs. Every movement of an account runs
under that account's row lock (``SELECT … FOR UPDATE``), so the balance it reads is the
balance it moves, and each leg it writes carries its book's balance after it
(``balance_after``, the running sum): a balance is read from the book's newest leg, however
long the account's history. A movement's legs are written by one statement; the database
refuses a statement whose transactions do not balance or whose legs' balances are not the
running sums (``billing/migrations/0014_entries_checked_per_statement.sql``).

Movements::

    deposit     available +x   funding   -x
    adjustment  available ±x   adjustment ∓x      (never below zero available)
    refund      available +x   revenue   -x       (at most what was charged)
    charge      available -c   revenue   +c       (settling a reservation)

(``hold`` and ``release`` movements, over a ``held`` book, are history: until migration
0021 a hold moved money available → held. They stay in the ledger as they were.)

A **reservation** is not a movement of money: it is one ``billing_reservations`` row
(and, extended, ``billing_reservation_extensions`` rows) holding, before a consultation
connects, what the account's available balance less its other live reservations' holds
pays for, up to the terms' maximum length: ``allowed_s`` is where the consultation must
be cut off. A reservation is live until its settlement row exists. Settling it rates the
talk time with the reservation's terms (:func:`billing.rating.rate`) and charges exactly
that (what the hold did not use is simply no longer held: ``released_yen``).
:class:`Balance`: ``available`` is the available book less the live holds, ``held`` the
live holds (:data:`LIVE_HOLDS`). Every writer that decides on the live holds (the batched
holds, extend, settle, adjust) reads them under the account's lock. A balance below the
first billed unit's price is refused with :class:`Refusal` (``balance-too-low``, with the
amounts for the IVR).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any, Literal, get_args

import asyncpg

from billing import records
from billing.metrics import billing as billing_metrics
from billing.rating import (
    MAX_TALK_LIMIT_S,
    Charge,
    Terms,
    rate,
    seconds_affordable,
    whole_units_s,
)
from shared.http import ApiError, InvalidField, require_str
from shared.money import DEFAULT_FX_BASE, DEFAULT_FX_RATES, FxTable

Book = Literal["available", "held", "funding", "revenue", "adjustment"]
Kind = Literal["deposit", "charge", "refund", "adjustment", "hold", "release"]
SYSTEM = "billing"
#: the largest single movement (a billion yen): far beyond any real one, far inside bigint
MAX_AMOUNT_YEN = 1_000_000_000
#: the FX table of billing records where the site configures none (``[rates]``)
DEFAULT_FX = FxTable.from_mapping(DEFAULT_FX_BASE, DEFAULT_FX_RATES)


@dataclass(frozen=True, slots=True)
class Balance:
    #: free to spend: the available book less the live reservations' holds
    available_yen: int
    #: the live reservations' holds
    held_yen: int

    @property
    def total_yen(self) -> int:
        """The customer's money: free and held."""
        return self.available_yen + self.held_yen


@dataclass(frozen=True, slots=True)
class Movement:
    id: int
    kind: Kind
    amount_yen: int
    by: str
    reason: str
    reservation_id: int | None
    at: datetime
    #: the legs, book → signed yen
    legs: dict[str, int]


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    consultation_id: str
    held_yen: int
    #: cut the consultation off after this many talk seconds
    allowed_s: int
    terms: Terms


@dataclass(frozen=True, slots=True)
class LiveReservation:
    reservation: Reservation
    account: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Refusal:
    """No reservation: the balance does not pay for the first billed unit.

    ``reason`` is a stable id the IVR maps to a prompt; the amounts are for it to say
    ("your balance is 120 yen; a consultation needs at least 300 yen")."""

    reason: Literal["balance-too-low"]
    available_yen: int
    needed_yen: int


@dataclass(frozen=True, slots=True)
class Settlement:
    reservation_id: int
    charge: Charge
    released_yen: int
    #: what the charge took beyond the hold (the consultation ran past ``allowed_s``)
    overrun_yen: int


@dataclass(frozen=True, slots=True)
class Correction:
    """An operator's adjustment (``yen`` signed) or refund (``yen`` > 0), with who and
    why."""

    kind: Literal["adjustment", "refund"]
    yen: int
    by: str
    reason: str


def parse_correction(data: Mapping[str, Any], kind: Literal["adjustment", "refund"]
                     ) -> Correction:
    """An adjustment (``delta_yen``, ``by``, ``reason``) or a refund (``amount_yen``, ``by``,
    ``reason``) from JSON; 400 ``invalid-field`` naming the field."""
    amount = "delta_yen" if kind == "adjustment" else "amount_yen"
    for name in data:
        if name not in (amount, "by", "reason"):
            raise InvalidField(name, f"unknown field (expected {amount}, by, reason)")
    yen = data.get(amount)
    low = -MAX_AMOUNT_YEN if kind == "adjustment" else 1
    if type(yen) is not int or not low <= yen <= MAX_AMOUNT_YEN or yen == 0:
        raise InvalidField(amount, f"expected a non-zero integer {low}..{MAX_AMOUNT_YEN} (yen)")
    return Correction(kind, yen, require_str(data, "by", max_len=128),
                      require_str(data, "reason", max_len=500))


@dataclass(frozen=True, slots=True)
class OperatorSettle:
    """An operator settling a reservation a call left live: the talk time (from the
    switch's records, say), who and why."""

    talk_s: int
    by: str
    reason: str


def parse_operator_settle(data: Mapping[str, Any]) -> OperatorSettle:
    """``talk_s`` (0..86400), ``by``, ``reason``; 400 ``invalid-field`` naming the field."""
    for name in data:
        if name not in ("talk_s", "by", "reason"):
            raise InvalidField(name, "unknown field (expected talk_s, by, reason)")
    talk = data.get("talk_s")
    if type(talk) is not int or not 0 <= talk <= MAX_TALK_LIMIT_S:
        raise InvalidField("talk_s", f"expected an integer 0..{MAX_TALK_LIMIT_S} (seconds)")
    return OperatorSettle(talk, require_str(data, "by", max_len=128),
                          require_str(data, "reason", max_len=400))


def settlement_json(settled: Settlement) -> dict[str, Any]:
    c = settled.charge
    return {"reservation_id": settled.reservation_id, "talk_s": c.talk_s,
            "billed_s": c.billed_s, "total_yen": c.total_yen, "tax_yen": c.tax_yen,
            "released_yen": settled.released_yen, "overrun_yen": settled.overrun_yen}


class LedgerError(ApiError):
    """A movement the ledger refuses: 404 ``not-found``, 409 ``insufficient-balance``,
    ``refund-exceeds-charges`` or ``already-settled``."""


def _amount(amount_yen: int, field: str = "amount_yen") -> int:
    if type(amount_yen) is not int or not 0 < amount_yen <= MAX_AMOUNT_YEN:
        raise ValueError(f"{field}: expected an integer 1..{MAX_AMOUNT_YEN}, got {amount_yen!r}")
    return amount_yen


async def account_id(conn: asyncpg.Connection, merchant_id: str, account: str, *,
                     create: bool) -> int | None:
    """Lock the account's row for this transaction (creating it if ``create``); its id,
    or None when it does not exist and ``create`` is false."""
    if create:
        await conn.execute(
            "INSERT INTO billing_accounts (merchant_id, account) VALUES ($1, $2) "
            "ON CONFLICT (merchant_id, account) DO NOTHING", merchant_id, account)
    found: int | None = await conn.fetchval(
        "SELECT id FROM billing_accounts WHERE merchant_id = $1 AND account = $2 FOR UPDATE",
        merchant_id, account)
    return found


async def find_account(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str,
                       account: str) -> int | None:
    """The account's id (no lock), or None when it does not exist."""
    found: int | None = await conn.fetchval(
        "SELECT id FROM billing_accounts WHERE merchant_id = $1 AND account = $2",
        merchant_id, account)
    return found


#: the balance of account ``{account}``'s book ``{book}``: its newest leg's balance after it
BOOK_BALANCE = """coalesce((SELECT b.balance_after FROM billing_entries b
                            WHERE b.account_id = {account} AND b.book = {book}
                            ORDER BY b.id DESC LIMIT 1), 0)"""


async def post(conn: asyncpg.Connection, account: int, kind: Kind, amount_yen: int,
               legs: Sequence[tuple[Book, int]], by: str, reason: str,
               reservation_id: int | None = None) -> int:
    """Write one movement and its legs (zero legs left out; one a book), each with its
    book's balance after it, in one statement; its transaction id. Call it inside a
    transaction holding the account's lock."""
    kept = [(book, y) for book, y in legs if y]
    if len({book for book, _ in kept}) != len(kept):
        raise ValueError(f"one leg a book: {kept}")
    txn: int = await conn.fetchval(
        f"""WITH t AS (INSERT INTO billing_transactions (account_id, kind, amount_yen, by_whom,
                          reason, reservation_id) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id),
                e AS (INSERT INTO billing_entries (transaction_id, account_id, book, amount_yen,
                          balance_after)
                      SELECT t.id, $1, leg.book, leg.yen,
                             {BOOK_BALANCE.format(account="$1", book="leg.book")} + leg.yen
                      FROM t, unnest($7::text[], $8::bigint[]) AS leg (book, yen))
           SELECT id FROM t""",
        account, kind, amount_yen, by, reason, reservation_id,
        [book for book, _ in kept], [y for _, y in kept])
    return txn


#: every book's balance of account $1 (a book it never moved: none)
_BOOKS = f"""
    SELECT k.book, {BOOK_BALANCE.format(account="$1", book="k.book")} AS yen
    FROM unnest($2::text[]) AS k (book)
    WHERE EXISTS (SELECT 1 FROM billing_entries e WHERE e.account_id = $1 AND e.book = k.book)"""


async def books(conn: asyncpg.Connection, account: int) -> dict[str, int]:
    rows = await conn.fetch(_BOOKS, account, list(get_args(Book)))
    return {r["book"]: int(r["yen"]) for r in rows}


#: the holds of account ``{account}``'s live reservations (not settled), each its newest
#: extension's hold, else its own (``billing_live_holds``, migration 0021)
LIVE_HOLDS = "(SELECT l.held_yen FROM billing_live_holds({account}) l)"

_BALANCE = f"""SELECT {BOOK_BALANCE.format(account="$1", book="'available'")} AS available,
                      {LIVE_HOLDS.format(account="$1")} AS held"""


async def balance_of(conn: asyncpg.Connection, account: int) -> Balance:
    """The account's :class:`Balance` (under its lock, for a writer deciding on it)."""
    row = await conn.fetchrow(_BALANCE, account)
    held = int(row["held"])
    return Balance(int(row["available"]) - held, held)


def _terms(data: dict[str, Any]) -> Terms:
    return Terms(**data)


#: a reservation as it stands: its hold and allowed talk after its newest extension
RESERVATION = """
    SELECT r.id, r.account_id, r.consultation_id, r.terms, r.created_at, a.account,
           p.price_per_minute_yen AS priced_yen,
           coalesce(x.held_yen, r.held_yen) AS held_yen,
           coalesce(x.allowed_s, r.allowed_s) AS allowed_s,
           s.talk_s AS settled_talk_s, s.released_yen, s.billed_s AS settled_billed_s,
           s.total_yen AS settled_total_yen, s.tax_yen AS settled_tax_yen
    FROM billing_reservations r
    JOIN billing_accounts a ON a.id = r.account_id
    LEFT JOIN LATERAL (SELECT e.held_yen, e.allowed_s FROM billing_reservation_extensions e
                       WHERE e.reservation_id = r.id ORDER BY e.id DESC LIMIT 1) x ON true
    LEFT JOIN billing_reservation_prices p ON p.reservation_id = r.id
    LEFT JOIN billing_settlements s ON s.reservation_id = r.id"""


def _reservation(row: asyncpg.Record) -> Reservation:
    """The reservation as it stands: its terms at the price it was priced at once
    answered (:meth:`Ledger.reprice`), else at the price it was reserved at."""
    terms = _terms(row["terms"])
    if row.get("priced_yen") is not None:
        terms = replace(terms, price_per_minute_yen=row["priced_yen"])
    return Reservation(row["id"], row["consultation_id"], row["held_yen"], row["allowed_s"],
                       terms)


@dataclass(frozen=True, slots=True)
class ReserveAsk:
    """One consultation's :meth:`Ledger.reserve`."""

    merchant_id: str
    account: str
    consultation_id: str
    terms: Terms
    at_most_s: int | None = None


#: lock the asks' accounts in id order (two batches sharing accounts never deadlock), then
#: read each ask's account, its available and held balances and its reservation made
#: already, if any (``billing/migrations/0015_accounts_locked_and_read.sql``, 0018): the
#: first statement of :data:`_RESERVE`
_LOCK_BALANCES = "SELECT * FROM billing_locked_balances($1, $2, $3)"

#: a batch of first holds, one statement (``billing/migrations/0019_reservations_in_one_
#: statement.sql``; its write as 0020 and 0021 replaced it): the accounts locked and read
#: (available: the book less the live holds), each ask decided as :func:`decide_holds`
#: decides it, the holds written (a reservation row each, no movement); a row an ask, in
#: the asks' order
_RESERVE = """SELECT * FROM billing_reserve_holds($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                                              $11, $12)"""


@functools.lru_cache(maxsize=1024)
def _terms_json(terms: Terms) -> str:
    """The terms as a reservation stores them (a batch's asks mostly share a few)."""
    return json.dumps(asdict(terms))


def _cap_s(ask: ReserveAsk) -> int:
    """The longest hold the ask takes, whatever the balance: its ``at_most_s`` rounded up
    to a whole unit, else the terms' maximum."""
    if ask.at_most_s is None:
        return ask.terms.max_talk_s
    return whole_units_s(ask.at_most_s, ask.terms)


@dataclass(frozen=True, slots=True)
class Grant:
    """One ask's hold as :func:`decide_holds` decides it."""

    held_yen: int
    allowed_s: int


def decide_holds(asks: Sequence[ReserveAsk], accounts: Sequence[int | None],
                 available: Mapping[int, int]) -> list[Grant | Refusal | int]:
    """The ledger's rule for a batch of first holds, in Python: each ask's account
    (None: none), each account's available balance; each ask's grant in the asks' order
    (an account's asks each see what the earlier ones took), its refusal, or, for an ask
    of a consultation granted earlier in the batch, that ask's index. (Asks whose
    reservation was made before are the caller's.) The database decides a batch with the
    same rule in ``billing_reserve_holds`` (migration 0019); a property test holds the
    two together."""
    left = dict(available)
    first: dict[tuple[int, str], int] = {}
    got: list[Grant | Refusal | int] = []
    for i, (ask, acc) in enumerate(zip(asks, accounts, strict=True)):
        needed = ask.terms.first_unit_yen()
        if acc is None:
            got.append(Refusal("balance-too-low", 0, needed))
            continue
        if (acc, ask.consultation_id) in first:
            got.append(first[acc, ask.consultation_id])
            continue
        if left[acc] < needed:
            got.append(Refusal("balance-too-low", left[acc], needed))
            continue
        allowed = min(seconds_affordable(left[acc], ask.terms), _cap_s(ask))
        held = rate(allowed, ask.terms).total_yen
        left[acc] -= held
        first[acc, ask.consultation_id] = i
        got.append(Grant(held, allowed))
    return got


async def reserve_all(conn: asyncpg.Connection, asks: Sequence[ReserveAsk]
                      ) -> list[Reservation | Refusal]:
    """:meth:`Ledger.reserve` for many consultations at once, in one statement (outside a
    transaction, its own: one round trip whatever the number; a second reads the
    reservations made before, if any were asked again): the accounts locked in id order,
    their balances read after the lock, each ask decided in order (:func:`decide_holds`'s
    rule), the holds written. Asks on one account take their holds in turn (each sees the
    earlier ones'); an ask repeated, or made before, gets the one reservation."""
    t = [a.terms for a in asks]
    needed = [x.first_unit_yen() for x in t]
    rows = await conn.fetch(
        _RESERVE, [a.merchant_id for a in asks], [a.account for a in asks],
        [a.consultation_id for a in asks], [_terms_json(x) for x in t],
        [x.price_per_minute_yen for x in t], [x.unit_s for x in t], [x.grace_s for x in t],
        [x.minimum_yen for x in t], [x.max_talk_s for x in t], [_cap_s(a) for a in asks],
        needed, SYSTEM)
    got: list[Reservation | Refusal] = []
    made: dict[int, int] = {}
    new: dict[int, Reservation] = {}    # the first ask of each made by the batch: its terms
    for ask, least, row in zip(asks, needed, rows, strict=True):
        rid = row["reservation_id"]
        if row["made"]:
            made[len(got)] = rid
        if rid is None:
            got.append(Refusal("balance-too-low", row["available_yen"], least))
            continue
        if rid not in new:
            new[rid] = Reservation(rid, ask.consultation_id, row["held_yen"],
                                   row["allowed_s"], ask.terms)
        got.append(new[rid])
    if made:
        found = {r["id"]: r for r in await conn.fetch(RESERVATION + " WHERE r.id = ANY($1)",
                                                        list(made.values()))}
        for i, rid in made.items():
            got[i] = _reservation(found[rid])
    return got


class Ledger:
    """``fx``: the site's FX table (``[rates]``), taken when a settlement's billing record
    converts the call's leg costs to yen (default: ``shared.money``'s indicative one)."""

    def __init__(self, pool: asyncpg.Pool, *, fx: FxTable | None = None) -> None:
        self.pool = pool
        self.fx = fx or DEFAULT_FX

    async def balance(self, merchant_id: str, account: str) -> Balance:
        """404 ``not-found`` for an account that never had a movement."""
        async with self.pool.acquire() as conn:
            found = await conn.fetchval("SELECT id FROM billing_accounts WHERE "
                                        "merchant_id = $1 AND account = $2", merchant_id, account)
            if found is None:
                raise LedgerError(404, "not-found", f"no billing account {account!r}")
            return await balance_of(conn, found)

    async def movements(self, merchant_id: str, account: str, *, after_id: int = 0,
                        limit: int = 100) -> list[Movement]:
        """The account's movements, oldest first, those after ``after_id``."""
        rows = await self.pool.fetch(
            """SELECT t.*, (SELECT jsonb_object_agg(e.book, e.amount_yen) FROM billing_entries e
                            WHERE e.transaction_id = t.id) AS legs
               FROM billing_transactions t JOIN billing_accounts a ON a.id = t.account_id
               WHERE a.merchant_id = $1 AND a.account = $2 AND t.id > $3
               ORDER BY t.id LIMIT $4""", merchant_id, account, after_id, limit)
        return [Movement(r["id"], r["kind"], r["amount_yen"], r["by_whom"], r["reason"],
                         r["reservation_id"], r["created_at"], dict(r["legs"] or {}))
                for r in rows]

    async def deposit(self, merchant_id: str, account: str, amount_yen: int, by: str,
                      reason: str) -> int:
        """Money in (the account is opened by its first deposit); the transaction id."""
        _amount(amount_yen)
        async with self.pool.acquire() as conn, conn.transaction():
            acc = await account_id(conn, merchant_id, account, create=True)
            assert acc is not None
            return await post(conn, acc, "deposit", amount_yen,
                              [("available", amount_yen), ("funding", -amount_yen)], by, reason)

    async def adjust(self, merchant_id: str, account: str, delta_yen: int, by: str,
                     reason: str) -> int:
        """An operator's correction of the available balance, up or down (never below
        zero: 409 ``insufficient-balance``)."""
        _amount(abs(delta_yen), "delta_yen")
        async with self.pool.acquire() as conn, conn.transaction():
            acc = await self._existing(conn, merchant_id, account)
            available = (await balance_of(conn, acc)).available_yen
            if available + delta_yen < 0:
                raise LedgerError(409, "insufficient-balance",
                                  f"available balance is {available} yen; cannot take "
                                  f"{-delta_yen} yen", available_yen=available)
            return await post(conn, acc, "adjustment", abs(delta_yen),
                              [("available", delta_yen), ("adjustment", -delta_yen)], by, reason)

    async def refund(self, merchant_id: str, account: str, amount_yen: int, by: str,
                     reason: str) -> int:
        """Give charged money back to the available balance (at most what the account's
        charges earned, less earlier refunds: 409 ``refund-exceeds-charges``)."""
        _amount(amount_yen)
        async with self.pool.acquire() as conn, conn.transaction():
            acc = await self._existing(conn, merchant_id, account)
            revenue = (await books(conn, acc)).get("revenue", 0)
            if amount_yen > revenue:
                raise LedgerError(409, "refund-exceeds-charges",
                                  f"the account's charges come to {revenue} yen net of "
                                  f"refunds; cannot refund {amount_yen} yen")
            return await post(conn, acc, "refund", amount_yen,
                              [("available", amount_yen), ("revenue", -amount_yen)], by, reason)

    async def correct(self, merchant_id: str, account: str, correction: Correction) -> int:
        """:meth:`adjust` or :meth:`refund`; the transaction id."""
        c = correction
        move = self.adjust if c.kind == "adjustment" else self.refund
        return await move(merchant_id, account, c.yen, c.by, c.reason)

    async def _existing(self, conn: asyncpg.Connection, merchant_id: str, account: str) -> int:
        acc = await account_id(conn, merchant_id, account, create=False)
        if acc is None:
            raise LedgerError(404, "not-found", f"no billing account {account!r}")
        return acc

    async def reserve(self, merchant_id: str, account: str, consultation_id: str,
                      terms: Terms, *, at_most_s: int | None = None) -> Reservation | Refusal:
        """Hold what the available balance pays for (at most ``at_most_s`` of talk rounded
        up to a whole billing unit, and never past the terms' maximum) before
        ``consultation_id`` connects. Asking again for the same consultation returns its
        reservation. (:func:`reserve_all`: one statement, its own transaction.)"""
        async with self.pool.acquire() as conn:
            (got,) = await reserve_all(conn, [ReserveAsk(merchant_id, account,
                                                         consultation_id, terms, at_most_s)])
            return got

    async def settle(self, merchant_id: str, reservation_id: int, talk_s: int, *,
                     by: str = SYSTEM, reason: str = "") -> Settlement:
        """Charge the consultation's rated talk time (one movement, available → revenue);
        the rest of its hold is no longer held once the settlement row exists (``talk_s``
        0: it never connected; nothing is charged). Settling again with the same
        talk time returns the first settlement; with another, 409 ``already-settled``.
        An operator settling a consultation the call left live says who and why (``by``,
        ``reason``: on its movements)."""
        if type(talk_s) is not int or talk_s < 0:
            raise ValueError(f"talk_s: expected a non-negative integer, got {talk_s!r}")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked_reservation(conn, merchant_id, reservation_id)
            reservation = _reservation(row)
            charge = rate(talk_s, reservation.terms)
            held = reservation.held_yen
            if row["settled_talk_s"] is not None:
                if row["settled_talk_s"] != talk_s:
                    raise LedgerError(409, "already-settled",
                                      f"reservation {reservation_id} was settled for "
                                      f"{row['settled_talk_s']} s of talk")
                return Settlement(reservation_id, charge, row["released_yen"],
                                  max(0, charge.total_yen - held))
            settled = await self._settle(conn, row["account_id"], reservation, charge, by,
                                         reason)
            await self._record(conn, merchant_id, row, charge)
        if charge.total_yen:        # committed: counted once, as the settlement is made
            counted = billing_metrics()
            counted.charged.labels(merchant_id, "prepaid").inc()
            counted.charged_yen.labels(merchant_id, "prepaid").inc(charge.total_yen)
        return settled

    async def _record(self, conn: asyncpg.Connection, merchant_id: str, row: asyncpg.Record,
                      charge: Charge) -> None:
        """The settlement's billing record and its message to the edge (same transaction:
        the settlement is written once, so is its record)."""
        advisor, legs = await records.call_legs(conn, row["consultation_id"])
        at: datetime = await conn.fetchval("SELECT now()")  # the transaction's time
        await records.write(conn, records.BillingRecord(
            f"{row['consultation_id']}/settlement-{row['id']}", merchant_id,
            row["consultation_id"], advisor, row["account"], "prepaid", "settled",
            _reservation(row).terms.price_per_minute_yen, charge.talk_s, charge.billed_s,
            charge.total_yen, charge.tax_yen, legs, self.fx, at))

    async def live(self, merchant_id: str, *, older_than_s: int = 0, limit: int = 100
                   ) -> list[LiveReservation]:
        """The merchant's reservations not settled, made more than ``older_than_s`` ago,
        oldest first: consultations in progress, or left live by a call that crashed
        (their funds stay held until settled)."""
        rows = await self.pool.fetch(
            RESERVATION + """ WHERE a.merchant_id = $1 AND s.reservation_id IS NULL
                   AND r.created_at <= now() - make_interval(secs => $2)
                 ORDER BY r.id LIMIT $3""", merchant_id, older_than_s, limit)
        return [LiveReservation(_reservation(r), r["account"], r["created_at"]) for r in rows]

    async def extend(self, merchant_id: str, reservation_id: int, *,
                     at_most_s: int | None = None) -> Reservation:
        """Hold more for a live consultation: as much talk as the available balance and
        what the reservation holds already pay for (up to ``at_most_s`` in all, rounded up
        to a whole billing unit, never past the terms' maximum). Nothing more affordable:
        the reservation as it was. A settled one: 409 ``already-settled``."""
        async with self.pool.acquire() as conn, conn.transaction():
            row, now = await self._live_locked(conn, merchant_id, reservation_id)
            # overdrawn by another consultation's late cut-off: only what this one holds
            # (the live holds include this one's: what it holds is added back)
            available = max(0, (await balance_of(conn, row["account_id"])).available_yen)
            allowed = seconds_affordable(available + now.held_yen, now.terms)
            if at_most_s is not None:
                allowed = min(allowed, whole_units_s(at_most_s, now.terms))
            if allowed <= now.allowed_s:
                return now
            held = max(rate(allowed, now.terms).total_yen, now.held_yen)
            await conn.execute(
                "INSERT INTO billing_reservation_extensions (reservation_id, held_yen, "
                "allowed_s) VALUES ($1, $2, $3)", reservation_id, held, allowed)
            return replace(now, held_yen=held, allowed_s=allowed)

    async def reprice(self, merchant_id: str, reservation_id: int, price_per_minute_yen: int,
                      *, advisor_id: int | None = None) -> Reservation:
        """Price a live reservation made at a dearer price at ``price_per_minute_yen``
        (a group consultation reserved at its dearest member's price, answered by a
        cheaper member): from now on it is extended and settled at this price, and what
        it holds pays for the talk this price allows (more than at the reserved price:
        the cut-off moves later), nothing released. Priced once: asked again, the
        reservation as it stands. A price above the reserved one: 409
        ``price-above-reservation`` (the hold would not cover it); settled: 409
        ``already-settled``."""
        if type(price_per_minute_yen) is not int or price_per_minute_yen < 0:
            raise ValueError(f"price_per_minute_yen: expected a non-negative integer, "
                             f"got {price_per_minute_yen!r}")
        async with self.pool.acquire() as conn, conn.transaction():
            row, now = await self._live_locked(conn, merchant_id, reservation_id)
            if row["priced_yen"] is not None:
                return now
            if price_per_minute_yen > now.terms.price_per_minute_yen:
                raise LedgerError(409, "price-above-reservation",
                                  f"reservation {reservation_id} holds for "
                                  f"{now.terms.price_per_minute_yen} yen a minute; cannot "
                                  f"price it at {price_per_minute_yen}")
            terms = replace(now.terms, price_per_minute_yen=price_per_minute_yen)
            await conn.execute(
                "INSERT INTO billing_reservation_prices (reservation_id, price_per_minute_yen,"
                " advisor_id) VALUES ($1, $2, $3)", reservation_id, price_per_minute_yen,
                advisor_id)
            allowed = max(now.allowed_s, seconds_affordable(now.held_yen, terms))
            if allowed > now.allowed_s:
                await conn.execute(
                    "INSERT INTO billing_reservation_extensions (reservation_id, held_yen, "
                    "allowed_s) VALUES ($1, $2, $3)", reservation_id, now.held_yen, allowed)
            return replace(now, allowed_s=allowed, terms=terms)

    @classmethod
    async def _live_locked(cls, conn: asyncpg.Connection, merchant_id: str,
                           reservation_id: int) -> tuple[asyncpg.Record, Reservation]:
        """:meth:`_locked_reservation` of a live one (settled: 409 ``already-settled``)."""
        row = await cls._locked_reservation(conn, merchant_id, reservation_id)
        if row["settled_talk_s"] is not None:
            raise LedgerError(409, "already-settled", f"reservation {reservation_id} is settled")
        return row, _reservation(row)

    @staticmethod
    async def _locked_reservation(conn: asyncpg.Connection, merchant_id: str,
                                  reservation_id: int) -> asyncpg.Record:
        """The reservation as it stands, under its account's lock; 404 if not the
        merchant's. The lock first, then the read: a statement that waited for the lock
        would not see what its holder wrote (read committed)."""
        locked = await conn.fetchval(
            """SELECT a.id FROM billing_reservations r
               JOIN billing_accounts a ON a.id = r.account_id
               WHERE r.id = $1 AND a.merchant_id = $2 FOR UPDATE OF a""",
            reservation_id, merchant_id)
        if locked is None:
            raise LedgerError(404, "not-found", f"no reservation {reservation_id}")
        row: asyncpg.Record = await conn.fetchrow(RESERVATION + " WHERE r.id = $1",
                                                  reservation_id)
        return row

    @staticmethod
    async def _settle(conn: asyncpg.Connection, acc: int, reservation: Reservation,
                      charge: Charge, by: str, reason: str) -> Settlement:
        held, total = reservation.held_yen, charge.total_yen
        from_hold = min(total, held)
        overrun, released = total - from_hold, held - from_hold
        why = f"consultation {reservation.consultation_id}" + (f" ({reason})" if reason else "")
        if total:       # the hold is no movement: the charge is the only one
            why_charge = f"{why}: {charge.talk_s} s talked, {charge.billed_s} s billed"
            await post(conn, acc, "charge", total, [("available", -total),
                                                    ("revenue", total)],
                       by, why_charge, reservation.id)
        await conn.execute(
            """INSERT INTO billing_settlements (reservation_id, talk_s, billed_s, total_yen,
                   tax_yen, released_yen) VALUES ($1, $2, $3, $4, $5, $6)""",
            reservation.id, charge.talk_s, charge.billed_s, total, charge.tax_yen, released)
        return Settlement(reservation.id, charge, released, overrun)
