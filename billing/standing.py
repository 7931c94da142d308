"""What a customer's account stands at for postpaid: the card on file, the unpaid
charges and dunning (reads of the tables of :mod:`billing.cards` and
:mod:`billing.postpaid`; no Stripe here, so admission needs no ``stripe``)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from billing.ledger import find_account


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


async def standing(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str, account: str
                   ) -> Standing:
    """The account's card on file, unpaid charges (pending or failed) and dunning."""
    acc = await find_account(conn, merchant_id, account)
    if acc is None:
        return Standing(False, 0, False)
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE state IN ('pending', 'failed')) AS unpaid, "
        "count(*) FILTER (WHERE state = 'failed') AS failed "
        f"FROM ({CHARGES} WHERE c.account_id = $1) s", acc)
    return Standing(await card_on_file(conn, acc) is not None, row["unpaid"],
                    row["failed"] > 0)
