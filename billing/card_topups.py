"""Card top-ups of a prepaid balance through Stripe PaymentIntents, charged once.

Every top-up is first a durable row (:meth:`CardTopUps.request`: account, amount, the
customer's card on file, who asked, and a fresh idempotency key), then the call to Stripe
(:meth:`CardTopUps.charge`), then the recorded outcome: ``succeeded`` with its deposit,
or ``failed`` with the card's decline code. The key goes to Stripe twice: as the
request's ``Idempotency-Key`` (real Stripe answers a repeat with the first result) and in
the PaymentIntent's metadata (``cbgw_topup_key``). The guarantee does not rest on the
header (localstripe ignores it): before creating a PaymentIntent, ``charge`` looks one up
by that metadata and adopts it, so a retry after a crash between the call and the record
never charges twice. :meth:`CardTopUps.reconcile` does the same for every request left
pending, creating nothing: a PaymentIntent found is recorded by its status; none found
(the call never reached Stripe) is ``abandoned``, and no money moved.

One attempt at a time per top-up: ``charge`` holds the request's row lock from the
look-up to the record, so two workers cannot both create. Stripe's answer being unknown
(a network error, a 5xx, a PaymentIntent still processing) leaves the top-up pending
(:class:`Pending`). Amounts are yen, a zero-decimal currency for Stripe.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import stripe

from billing.ledger import MAX_AMOUNT_YEN, LedgerError, account_id, post
from billing.metrics import billing as billing_metrics
from billing.stripe_payments import (
    Outcome,
    Pending,
    create_intent,
    find_intent,
    metadata_value,
    outcome_of,
)

__all__ = ["METADATA_KEY", "CardTopUps", "Pending", "Result", "TopUp"]
METADATA_KEY = "cbgw_topup_key"


@dataclass(frozen=True, slots=True)
class TopUp:
    id: int
    merchant_id: str
    account: str
    amount_yen: int
    idempotency_key: str
    customer: str
    payment_method: str
    requested_by: str


@dataclass(frozen=True, slots=True)
class Result:
    topup_id: int
    outcome: Outcome
    payment_intent: str | None
    failure: str
    #: the deposit of a succeeded top-up
    transaction_id: int | None


_SELECT = """SELECT t.*, a.account, o.outcome, o.payment_intent, o.failure,
                    o.transaction_id
             FROM billing_card_topups t JOIN billing_accounts a ON a.id = t.account_id
             LEFT JOIN billing_card_topup_outcomes o ON o.topup_id = t.id"""


def _topup(row: asyncpg.Record) -> TopUp:
    return TopUp(row["id"], row["merchant_id"], row["account"], row["amount_yen"],
                 row["idempotency_key"], row["customer"], row["payment_method"],
                 row["requested_by"])


def _result(row: asyncpg.Record) -> Result | None:
    if row["outcome"] is None:
        return None
    return Result(row["id"], row["outcome"], row["payment_intent"], row["failure"],
                  row["transaction_id"])


class CardTopUps:
    def __init__(self, pool: asyncpg.Pool, client: stripe.StripeClient) -> None:
        self.pool = pool
        self.client = client

    async def request(self, merchant_id: str, account: str, amount_yen: int, *,
                      customer: str, payment_method: str, by: str,
                      conn: asyncpg.Connection | None = None) -> TopUp:
        """The durable request, written before Stripe is called (in ``conn``'s
        transaction if given)."""
        if type(amount_yen) is not int or not 0 < amount_yen <= MAX_AMOUNT_YEN:
            raise ValueError(f"amount_yen: expected an integer 1..{MAX_AMOUNT_YEN}")
        if conn is None:
            async with self.pool.acquire() as conn, conn.transaction():
                return await self.request(merchant_id, account, amount_yen, customer=customer,
                                          payment_method=payment_method, by=by, conn=conn)
        key = f"topup-{uuid.uuid4()}"
        acc = await account_id(conn, merchant_id, account, create=True)
        topup_id = await conn.fetchval(
            """INSERT INTO billing_card_topups (merchant_id, account_id, amount_yen,
                   idempotency_key, customer, payment_method, requested_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
            merchant_id, acc, amount_yen, key, customer, payment_method, by)
        return TopUp(topup_id, merchant_id, account, amount_yen, key, customer,
                     payment_method, by)

    async def top_up(self, merchant_id: str, account: str, amount_yen: int, *,
                     customer: str, payment_method: str, by: str) -> Result:
        """:meth:`request`, then :meth:`charge`."""
        topup = await self.request(merchant_id, account, amount_yen, customer=customer,
                                   payment_method=payment_method, by=by)
        return await self.charge(topup.id)

    async def charge(self, topup_id: int) -> Result:
        """Charge the card once: the recorded outcome if there is one; else the
        PaymentIntent carrying the key if Stripe has one; else a new one. Raises
        :class:`Pending` when Stripe's answer is not known."""
        return await self._settle(topup_id, create=True)

    async def pending(self) -> list[TopUp]:
        rows = await self.pool.fetch(_SELECT + " WHERE o.topup_id IS NULL ORDER BY t.id")
        return [_topup(r) for r in rows]

    async def reconcile(self, *, older_than_s: int = 300) -> list[Result]:
        """Record the outcome of every top-up pending for longer than ``older_than_s``
        (longer than a Stripe call can take) from the PaymentIntent found by its key;
        none found is ``abandoned``. Creates no PaymentIntent. The ones still not known
        stay pending."""
        rows = await self.pool.fetch(
            "SELECT t.id FROM billing_card_topups t LEFT JOIN billing_card_topup_outcomes o "
            "ON o.topup_id = t.id WHERE o.topup_id IS NULL "
            "AND t.requested_at <= now() - make_interval(secs => $1) ORDER BY t.id",
            older_than_s)
        results = []
        for row in rows:
            try:
                results.append(await self._settle(row["id"], create=False))
            except Pending:
                continue
        return results

    async def get(self, merchant_id: str, topup_id: int) -> tuple[TopUp, Result | None]:
        """The top-up and its outcome (None: pending); 404 ``not-found``."""
        row = await self.pool.fetchrow(_SELECT + " WHERE t.id = $1 AND t.merchant_id = $2",
                                       topup_id, merchant_id)
        if row is None:
            raise LedgerError(404, "not-found", f"no card top-up {topup_id}")
        return _topup(row), _result(row)

    async def apply_intent(self, intent: Any) -> Result | None:
        """A PaymentIntent a webhook reported: its top-up recorded with it (once); None
        when it is not one of ours."""
        key = metadata_value(intent, METADATA_KEY)
        topup_id = None if key is None else await self.pool.fetchval(
            "SELECT id FROM billing_card_topups WHERE idempotency_key = $1", str(key))
        if topup_id is None:
            return None
        return await self._settle(topup_id, create=False, intent=intent)

    async def _settle(self, topup_id: int, *, create: bool, intent: Any = None) -> Result:
        async with self.pool.acquire() as conn, conn.transaction():
            # the lock first, then the read: a statement waiting for the lock would see the
            # outcome its holder wrote only in a later statement (read committed)
            await conn.execute("SELECT 1 FROM billing_card_topups WHERE id = $1 FOR UPDATE",
                               topup_id)
            row = await conn.fetchrow(_SELECT + " WHERE t.id = $1", topup_id)
            if row is None:
                raise LedgerError(404, "not-found", f"no card top-up {topup_id}")
            done = _result(row)
            if done is not None:
                return done
            topup = _topup(row)
            if intent is None:
                intent = await asyncio.to_thread(self._find, topup.idempotency_key)
            failure = ""
            if intent is None and create:
                intent, failure = await asyncio.to_thread(self._create, topup)
            result = await self._record(conn, row["account_id"], topup, intent, failure)
        if result.outcome == "failed":  # committed: counted once, as the outcome is recorded
            billing_metrics().card_failed.labels(topup.merchant_id, "topup").inc()
        return result

    async def _record(self, conn: asyncpg.Connection, acc: int, topup: TopUp,
                      intent: Any, failure: str) -> Result:
        outcome, pi_id, failure = outcome_of(intent, failure, f"top-up {topup.id}")
        txn = None
        if outcome == "succeeded":
            await account_id(conn, topup.merchant_id, topup.account, create=False)  # lock
            txn = await post(conn, acc, "deposit", topup.amount_yen,
                             [("available", topup.amount_yen), ("funding", -topup.amount_yen)],
                             topup.requested_by, f"card top-up {topup.id} ({pi_id})")
        await conn.execute(
            """INSERT INTO billing_card_topup_outcomes (topup_id, outcome, payment_intent,
                   failure, transaction_id) VALUES ($1, $2, $3, $4, $5)""",
            topup.id, outcome, pi_id, failure, txn)
        return Result(topup.id, outcome, pi_id, failure, txn)

    def _find(self, key: str) -> Any:
        """The PaymentIntent whose metadata carries ``key``, or None (blocking)."""
        return find_intent(self.client, METADATA_KEY, key)

    def _create(self, topup: TopUp) -> tuple[Any, str]:
        """A confirmed off-session PaymentIntent for the top-up (blocking)."""
        return create_intent(self.client, amount_yen=topup.amount_yen,
                             customer=topup.customer, payment_method=topup.payment_method,
                             metadata_key=METADATA_KEY, key=topup.idempotency_key,
                             metadata={"merchant": topup.merchant_id,
                                       "account": topup.account})
