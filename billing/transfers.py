"""Bank transfers entered by an operator as deposits (table ``billing_bank_transfers``).

The operator copies a line of the bank statement: amount, the day it arrived, the payer's
name as the bank shows it (often half-width katakana) and the bank's reference for it.
:func:`record` writes the transfer row and its ``deposit`` movement in one transaction
under the account's lock; a reference already entered for the merchant is refused (409
``duplicate-reference``, naming the transfer that has it), concurrent entries included
(the unique index decides). Who entered it and when are on the row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from billing.ledger import MAX_AMOUNT_YEN, account_id, post
from shared.http import ApiError, InvalidField, require_str
from shared.timeutil import TOKYO

FIELDS = ("account", "amount_yen", "transferred_on", "payer_name", "bank_reference",
          "entered_by")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True, slots=True)
class BankTransfer:
    account: str
    amount_yen: int
    transferred_on: date
    payer_name: str
    bank_reference: str
    entered_by: str


@dataclass(frozen=True, slots=True)
class Recorded:
    id: int
    transfer: BankTransfer
    transaction_id: int
    entered_at: datetime

    def to_json(self) -> dict[str, Any]:
        t = self.transfer
        return {"id": self.id, "account": t.account, "amount_yen": t.amount_yen,
                "transferred_on": t.transferred_on.isoformat(), "payer_name": t.payer_name,
                "bank_reference": t.bank_reference, "entered_by": t.entered_by,
                "entered_at": self.entered_at.isoformat(),
                "transaction_id": self.transaction_id}


def parse(data: Mapping[str, Any], today: date) -> BankTransfer:
    """A transfer from JSON (or the CLI's options); 400 ``invalid-field`` naming the field:
    an unknown one, a missing one, an amount that is not an integer 1..10⁹, a date not
    ``YYYY-MM-DD`` or after ``today``."""
    for name in data:
        if name not in FIELDS:
            raise InvalidField(name, f"unknown field (expected {', '.join(FIELDS)})")
    amount = data.get("amount_yen")
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT_YEN:
        raise InvalidField("amount_yen", f"expected an integer 1..{MAX_AMOUNT_YEN} (yen)")
    on = parse_day(data.get("transferred_on"), "transferred_on")
    if on > today:
        raise InvalidField("transferred_on", f"{on.isoformat()} is in the future")
    return BankTransfer(require_str(data, "account", max_len=64), amount, on,
                        require_str(data, "payer_name", max_len=100),
                        require_str(data, "bank_reference", max_len=64),
                        require_str(data, "entered_by", max_len=128))


def parse_day(raw: Any, field: str, *, default: date | None = None) -> date:
    """A ``YYYY-MM-DD`` day (``default`` when absent and one is given); 400
    ``invalid-field`` naming ``field`` otherwise."""
    if raw is None and default is not None:
        return default
    if not isinstance(raw, str) or not _DATE.fullmatch(raw):
        raise InvalidField(field, "expected a date YYYY-MM-DD")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidField(field, f"no such day {raw}") from None


def tokyo_today() -> date:
    """Today in Japan, the bank statement's calendar."""
    return datetime.now(TOKYO).date()


async def record(pool: asyncpg.Pool, merchant_id: str, transfer: BankTransfer) -> Recorded:
    """Deposit the transfer; 409 ``duplicate-reference`` if its reference was entered."""
    t = transfer
    try:
        async with pool.acquire() as conn, conn.transaction():
            acc = await account_id(conn, merchant_id, t.account, create=True)
            assert acc is not None
            txn = await post(conn, acc, "deposit", t.amount_yen,
                             [("available", t.amount_yen), ("funding", -t.amount_yen)],
                             t.entered_by, f"bank transfer {t.bank_reference} from "
                                           f"{t.payer_name} on {t.transferred_on.isoformat()}")
            row = await conn.fetchrow(
                """INSERT INTO billing_bank_transfers (merchant_id, account_id, amount_yen,
                       transferred_on, payer_name, bank_reference, entered_by, transaction_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, entered_at""",
                merchant_id, acc, t.amount_yen, t.transferred_on, t.payer_name,
                t.bank_reference, t.entered_by, txn)
    except asyncpg.UniqueViolationError:
        first = await pool.fetchval("SELECT id FROM billing_bank_transfers WHERE "
                                    "merchant_id = $1 AND bank_reference = $2",
                                    merchant_id, t.bank_reference)
        raise ApiError(409, "duplicate-reference",
                       f"bank_reference: {t.bank_reference!r} was entered already "
                       f"(transfer {first})", field="bank_reference") from None
    return Recorded(row["id"], t, txn, row["entered_at"])


async def listed(pool: asyncpg.Pool, merchant_id: str, *, after_id: int = 0,
                 limit: int = 100) -> list[Recorded]:
    """The merchant's transfers, oldest entry first, those after ``after_id``."""
    rows = await pool.fetch(
        """SELECT t.*, a.account FROM billing_bank_transfers t
           JOIN billing_accounts a ON a.id = t.account_id
           WHERE t.merchant_id = $1 AND t.id > $2 ORDER BY t.id LIMIT $3""",
        merchant_id, after_id, limit)
    return [Recorded(r["id"], BankTransfer(r["account"], r["amount_yen"], r["transferred_on"],
                                           r["payer_name"], r["bank_reference"],
                                           r["entered_by"]),
                     r["transaction_id"], r["entered_at"]) for r in rows]
