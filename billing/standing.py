"""What a customer's account stands at for postpaid: the card on file, the charges and
their state, dunning and its notices, and an operator closing a charge (the tables of
:mod:`billing.cards` and :mod:`billing.postpaid`; no Stripe here, so admission and the
CLI need no ``stripe``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from billing.ledger import LedgerError, find_account
from shared.http import InvalidField, require_str


@dataclass(frozen=True, slots=True)
class CardOnFile:
    customer: str
    payment_method: str
    registration_id: int


async def card_on_file(conn: asyncpg.Connection | asyncpg.Pool, account: int
                       ) -> CardOnFile | None:
    """The account's newest confirmed card (by the account's row id), or None."""
    row = await conn.fetchrow(
        """SELECT r.id, r.customer, c.payment_method FROM billing_card_registrations r
           JOIN billing_cards c ON c.registration_id = r.id
           WHERE r.account_id = $1 ORDER BY r.id DESC LIMIT 1""", account)
    return None if row is None else CardOnFile(row["customer"], row["payment_method"],
                                               row["id"])


@dataclass(frozen=True, slots=True)
class Standing:
    """What admission reads of a postpaid account."""

    has_card: bool
    unpaid: int
    #: a charge whose newest attempt failed: the account is in dunning
    in_dunning: bool


#: every postpaid charge (``c``, its account ``a``) with its newest attempt (``l``), that
#: attempt's outcome (``o``), its closure (``x``) and ``state``: closed by an operator,
#: pending (the newest attempt's answer not known), paid, or failed (in dunning)
CHARGES = """
    SELECT c.*, a.account, l.attempt, o.outcome, o.payment_intent, o.failure,
           x.how AS closed,
           CASE WHEN x.charge_id IS NOT NULL THEN 'closed'
                WHEN o.outcome IS NULL THEN 'pending'
                WHEN o.outcome = 'succeeded' THEN 'paid' ELSE 'failed' END AS state
    FROM billing_postpaid_charges c
    JOIN billing_accounts a ON a.id = c.account_id
    LEFT JOIN LATERAL (SELECT t.id, t.attempt FROM billing_postpaid_attempts t
                       WHERE t.charge_id = c.id ORDER BY t.attempt DESC LIMIT 1) l ON true
    LEFT JOIN billing_postpaid_outcomes o ON o.attempt_id = l.id
    LEFT JOIN billing_postpaid_closures x ON x.charge_id = c.id"""


#: the lowest id account ``{account}``'s unpaid charges (pending or failed) can have: its
#: newest charge's ``open_from`` (migration 0028: at or below every charge of the account
#: unpaid when it was written, and a charge once paid or closed stays so), else 0 (its
#: newest charge was written before 0028). What an account stands at reads its charges
#: from there on, by the index ``(account_id, id)``: the few since its oldest unpaid one,
#: not its whole history
OPEN_FROM = """coalesce((SELECT n.open_from FROM billing_postpaid_charges n
                          WHERE n.account_id = {account} ORDER BY n.id DESC LIMIT 1), 0)"""


def unpaid_sql(account: str) -> str:
    """The unpaid (pending or failed) and the failed charges of account ``{account}`` (an
    expression): one row, ``unpaid``, ``failed``."""
    return f"""SELECT count(*) FILTER (WHERE state IN ('pending', 'failed')) AS unpaid,
               count(*) FILTER (WHERE state = 'failed') AS failed
        FROM ({CHARGES} WHERE c.account_id = {account}
                  AND c.id >= {OPEN_FROM.format(account=account)}) s"""


State = Literal["pending", "paid", "failed", "closed"]
Closure = Literal["paid-elsewhere", "written-off"]
CLOSURES: tuple[Closure, ...] = ("paid-elsewhere", "written-off")


@dataclass(frozen=True, slots=True)
class Charge:
    id: int
    merchant_id: str
    account: str
    consultation_id: str
    talk_s: int
    billed_s: int
    total_yen: int
    tax_yen: int
    requested_at: datetime
    attempts: int
    #: pending: the newest attempt's outcome is not known; failed: in dunning; closed:
    #: by an operator (``closed`` says how)
    state: State
    payment_intent: str | None
    failure: str
    closed: Closure | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "account": self.account,
                "consultation_id": self.consultation_id, "talk_s": self.talk_s,
                "billed_s": self.billed_s, "total_yen": self.total_yen,
                "tax_yen": self.tax_yen, "requested_at": self.requested_at.isoformat(),
                "attempts": self.attempts, "state": self.state,
                "payment_intent": self.payment_intent, "failure": self.failure or None,
                "closed": self.closed}


def charge_of(row: asyncpg.Record) -> Charge:
    return Charge(row["id"], row["merchant_id"], row["account"], row["consultation_id"],
                  row["talk_s"], row["billed_s"], row["total_yen"], row["tax_yen"],
                  row["requested_at"], row["attempt"] or 0, row["state"], row["payment_intent"],
                  row["failure"] or "", row["closed"])


async def locked_charge(conn: asyncpg.Connection, merchant_id: str, charge_id: int
                        ) -> tuple[asyncpg.Record, Charge]:
    """The merchant's charge under its row lock (404 ``not-found``)."""
    await conn.execute("SELECT 1 FROM billing_postpaid_charges WHERE id = $1 "
                       "AND merchant_id = $2 FOR UPDATE", charge_id, merchant_id)
    row = await conn.fetchrow(CHARGES + " WHERE c.id = $1 AND c.merchant_id = $2",
                              charge_id, merchant_id)
    if row is None:
        raise LedgerError(404, "not-found", f"no postpaid charge {charge_id}")
    return row, charge_of(row)


_UNPAID = unpaid_sql("$1")


async def standing(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str, account: str
                   ) -> Standing:
    """The account's card on file, unpaid charges (pending or failed) and dunning."""
    acc = await find_account(conn, merchant_id, account)
    if acc is None:
        return Standing(False, 0, False)
    row = await conn.fetchrow(_UNPAID, acc)
    return Standing(await card_on_file(conn, acc) is not None, row["unpaid"],
                    row["failed"] > 0)


async def charges(pool: asyncpg.Pool, merchant_id: str, account: str) -> list[Charge]:
    """The account's postpaid charges, oldest first."""
    rows = await pool.fetch(
        CHARGES + " WHERE c.merchant_id = $1 AND a.account = $2 ORDER BY c.id",
        merchant_id, account)
    return [charge_of(r) for r in rows]


async def close(pool: asyncpg.Pool, merchant_id: str, charge_id: int, how: Closure, *,
                by: str, reason: str) -> Charge:
    """An operator closes a charge in dunning: paid another way, or written off; it is
    no longer unpaid nor retried. The same closure again returns the charge; a charge not
    in dunning (paid, pending, closed otherwise) is 409 ``charge-not-in-dunning``."""
    async with pool.acquire() as conn, conn.transaction():
        _, charge = await locked_charge(conn, merchant_id, charge_id)
        if charge.state == "closed" and charge.closed == how:
            return charge
        if charge.state != "failed":
            raise LedgerError(409, "charge-not-in-dunning",
                              f"charge {charge_id} is {charge.state}", state=charge.state)
        await conn.execute(
            """INSERT INTO billing_postpaid_closures (charge_id, how, by_whom, reason)
               VALUES ($1, $2, $3, $4)""", charge_id, how, by, reason)
        return charge_of(await conn.fetchrow(CHARGES + " WHERE c.id = $1", charge_id))


async def notices(pool: asyncpg.Pool, merchant_id: str, *, after_id: int = 0,
                  limit: int = 100) -> list[dict[str, Any]]:
    """The merchant's dunning notices after ``after_id``, oldest first (as JSON)."""
    rows = await pool.fetch(
        """SELECT n.id, a.account, n.kind, n.charge_id, n.detail, n.created_at
           FROM billing_notices n JOIN billing_accounts a ON a.id = n.account_id
           WHERE n.merchant_id = $1 AND n.id > $2 ORDER BY n.id LIMIT $3""",
        merchant_id, after_id, limit)
    return [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows]


@dataclass(frozen=True, slots=True)
class Closing:
    how: Closure
    by: str
    reason: str


def parse_close(data: dict[str, Any]) -> Closing:
    """An operator's closing of a charge (``how``, ``by``, ``reason``); 400
    ``invalid-field`` naming the field at fault."""
    for name in data:
        if name not in ("how", "by", "reason"):
            raise InvalidField(name, "unknown field (expected how, by, reason)")
    how = data.get("how")
    if how not in CLOSURES:
        raise InvalidField("how", f"expected one of {', '.join(CLOSURES)}")
    return Closing(how, require_str(data, "by", max_len=128),
                   require_str(data, "reason", max_len=500))


def standing_json(account: str, now: Standing, listed: list[Charge]) -> dict[str, Any]:
    return {"account": account, "has_card": now.has_card, "unpaid": now.unpaid,
            "in_dunning": now.in_dunning, "charges": [c.to_json() for c in listed]}
