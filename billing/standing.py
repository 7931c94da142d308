"""What a customer's account stands at for postpaid: the card on file, the unpaid
charges and dunning (reads of the tables of :mod:`billing.cards` and
:mod:`billing.postpaid`; no Stripe here, so admission needs no ``stripe``)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


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


async def standing(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str, account: str
                   ) -> Standing:
    """The account's card on file, unpaid charges and dunning."""
    row = await conn.fetchrow(
        """SELECT a.id,
                  count(c.id) FILTER (WHERE o.outcome IS DISTINCT FROM 'succeeded') AS unpaid,
                  count(c.id) FILTER (WHERE o.outcome = 'failed') AS failed
           FROM billing_accounts a
           LEFT JOIN billing_postpaid_charges c ON c.account_id = a.id
           LEFT JOIN LATERAL (SELECT t.id FROM billing_postpaid_attempts t
                              WHERE t.charge_id = c.id ORDER BY t.attempt DESC LIMIT 1) l
                  ON true
           LEFT JOIN billing_postpaid_outcomes o ON o.attempt_id = l.id
           WHERE a.merchant_id = $1 AND a.account = $2 GROUP BY a.id""",
        merchant_id, account)
    if row is None:
        return Standing(False, 0, False)
    return Standing(await card_on_file(conn, row["id"]) is not None, row["unpaid"],
                    row["failed"] > 0)
