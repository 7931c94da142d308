"""A customer's card on file, registered once through a Stripe SetupIntent.

:meth:`Cards.register` makes (or reuses) the account's Stripe Customer and a SetupIntent
for off-session use, and records them (tables ``billing_card_registrations``; migration
0006) with a random link token, of which only the SHA-256 is stored (migration 0012):
the API hands a card page the client secret (Stripe.js
confirms the SetupIntent with the card the customer types in) and a link to that page
that can be sent later, by SMS for instance (the token is in that one reply only; the
page finds the registration by the token's digest). The card is on file once Stripe says the
SetupIntent succeeded: :meth:`Cards.confirm` asks Stripe, the ``setup_intent.succeeded``
webhook says it (:meth:`Cards.confirmed`); both record ``billing_cards`` once. The card on
file is the account's newest confirmed registration.

Stripe is called before the registration row is written: a crash in between leaves a
Customer or SetupIntent at Stripe that nothing refers to, and no money is involved.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
import stripe

from billing.ledger import LedgerError, account_id, find_account
from shared.browser_session import digest


class CardError(LedgerError):
    """Stripe refused or could not be asked: 503 ``stripe-unavailable`` (it may be tried
    again), or 409 ``setup-not-succeeded``."""


@dataclass(frozen=True, slots=True)
class Registration:
    id: int
    merchant_id: str
    account: str
    customer: str
    setup_intent: str
    client_secret: str
    #: the link's token: only on the registration just made and on one found by it
    #: (only its digest is stored)
    link_token: str | None
    requested_at: datetime
    #: the card, once the SetupIntent succeeded
    payment_method: str | None
    confirmed_at: datetime | None


_SELECT = """SELECT r.*, a.account, c.payment_method, c.confirmed_at
             FROM billing_card_registrations r
             JOIN billing_accounts a ON a.id = r.account_id
             LEFT JOIN billing_cards c ON c.registration_id = r.id"""


def _registration(row: asyncpg.Record) -> Registration:
    return Registration(row["id"], row["merchant_id"], row["account"], row["customer"],
                        row["setup_intent"], row["client_secret"], None,
                        row["requested_at"], row["payment_method"], row["confirmed_at"])


class Cards:
    def __init__(self, pool: asyncpg.Pool, client: stripe.StripeClient) -> None:
        self.pool = pool
        self.client = client

    async def register(self, merchant_id: str, account: str, *, by: str) -> Registration:
        """A SetupIntent for the account's card (the account's Stripe Customer is made at
        its first registration and reused after)."""
        async with self.pool.acquire() as conn:
            acc = await find_account(conn, merchant_id, account)
            customer = None if acc is None else await conn.fetchval(
                "SELECT customer FROM billing_card_registrations WHERE account_id = $1 "
                "ORDER BY id DESC LIMIT 1", acc)
        customer, intent = await asyncio.to_thread(self._setup, merchant_id, account, customer)
        token = secrets.token_urlsafe(24)
        async with self.pool.acquire() as conn, conn.transaction():
            acc = await account_id(conn, merchant_id, account, create=True)
            reg_id = await conn.fetchval(
                """INSERT INTO billing_card_registrations (merchant_id, account_id, customer,
                       setup_intent, client_secret, link_sha256, requested_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
                merchant_id, acc, customer, str(intent.id), str(intent.client_secret),
                digest(token), by)
            row = await conn.fetchrow(_SELECT + " WHERE r.id = $1", reg_id)
        return replace(_registration(row), link_token=token)

    def _setup(self, merchant_id: str, account: str, customer: str | None
               ) -> tuple[str, Any]:
        try:
            if customer is None:
                customer = str(self.client.v1.customers.create(params={
                    "metadata": {"merchant": merchant_id, "account": account}}).id)
            intent = self.client.v1.setup_intents.create(params={
                "customer": customer, "usage": "off_session",
                "metadata": {"merchant": merchant_id, "account": account}})
        except stripe.StripeError as exc:
            raise CardError(503, "stripe-unavailable",
                            f"Stripe did not make the SetupIntent: {exc}"[:500]) from exc
        return customer, intent

    async def get(self, merchant_id: str, registration_id: int) -> Registration:
        row = await self.pool.fetchrow(_SELECT + " WHERE r.id = $1 AND r.merchant_id = $2",
                                       registration_id, merchant_id)
        if row is None:
            raise CardError(404, "not-found", f"no card registration {registration_id}")
        return _registration(row)

    async def by_id(self, registration_id: int) -> Registration:
        row = await self.pool.fetchrow(_SELECT + " WHERE r.id = $1", registration_id)
        if row is None:
            raise CardError(404, "not-found", f"no card registration {registration_id}")
        return _registration(row)

    async def by_token(self, token: str) -> Registration:
        row = await self.pool.fetchrow(_SELECT + " WHERE r.link_sha256 = $1", digest(token))
        if row is None:
            raise CardError(404, "not-found", "no card registration with this link")
        return replace(_registration(row), link_token=token)

    async def confirm(self, merchant_id: str, registration_id: int) -> Registration:
        """Ask Stripe whether the registration's SetupIntent succeeded, and record the
        card if it did; 409 ``setup-not-succeeded`` if not (yet)."""
        reg = await self.get(merchant_id, registration_id)
        if reg.payment_method is not None:
            return reg
        try:
            intent = await asyncio.to_thread(self.client.v1.setup_intents.retrieve,
                                             reg.setup_intent)
        except stripe.StripeError as exc:
            raise CardError(503, "stripe-unavailable",
                            f"Stripe did not answer: {exc}"[:500]) from exc
        if intent.status != "succeeded" or not intent.payment_method:
            raise CardError(409, "setup-not-succeeded",
                            f"the SetupIntent is {intent.status}", stripe_status=str(intent.status))
        return await self.confirmed(reg.setup_intent, str(intent.payment_method)) or reg

    async def confirmed(self, setup_intent: str, payment_method: str) -> Registration | None:
        """Record the card of a SetupIntent that succeeded (once); None for a SetupIntent
        that is not one of ours."""
        async with self.pool.acquire() as conn, conn.transaction():
            reg_id = await conn.fetchval(
                "SELECT id FROM billing_card_registrations WHERE setup_intent = $1", setup_intent)
            if reg_id is None:
                return None
            await conn.execute(
                "INSERT INTO billing_cards (registration_id, payment_method) VALUES ($1, $2) "
                "ON CONFLICT (registration_id) DO NOTHING", reg_id, payment_method)
            return _registration(await conn.fetchrow(_SELECT + " WHERE r.id = $1", reg_id))
