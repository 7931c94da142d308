"""Postpaid consultations charged to the card on file after they end, once, with dunning.

:meth:`Postpaid.charge` rates the consultation (:func:`billing.rating.rate`) and writes
the charge and its first attempt (tables ``billing_postpaid_charges`` and
``billing_postpaid_attempts``; migration 0006) before Stripe is called; the attempt's
key is derived from the merchant, account and consultation id, the charge row and the
attempt number,
goes to Stripe as ``Idempotency-Key`` and in the PaymentIntent's metadata
(``cbgw_charge_key``). :meth:`Postpaid.attempt` then holds the attempt's row lock from the
look-up to the record: the recorded outcome if there is one, else the PaymentIntent found
by the key (a crash after Stripe answered), else a new one. A consultation is charged at
most once (the charge is unique per account and consultation; a repeat returns it) and
never lost: :meth:`Postpaid.reconcile` takes every attempt left without an outcome (the
process died around the call) and finishes it the same way, creating the PaymentIntent
only when Stripe has none with the key. Exactly once rests on this record and the
look-up (localstripe ignores ``Idempotency-Key``).

A failed attempt (declined, no card on file) puts the account into dunning: a
``charge-failed`` notice (``billing_notices``, and handed in the outcome's transaction to
the site's :class:`NoticeSink`, which queues it for the merchant's notification
channels), and retries on the schedule ``retry_after_s`` (the n-th retry that long after
the n-th failure), each a new attempt with the card on file at that time;
:meth:`Postpaid.due` lists the retries due. A retry that succeeds writes
``charge-recovered`` (to the sink too). An operator may :meth:`Postpaid.close` a charge
in dunning (paid another way, or written off; ``billing_postpaid_closures``, migration
0007): it is then neither unpaid nor retried. :meth:`Postpaid.standing` is what admission
reads: the account's unpaid charges and whether one has failed
(:func:`billing.standing.standing`).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import asyncpg
import stripe

from billing import records
from billing.ledger import DEFAULT_FX, LedgerError, account_id
from billing.metrics import billing as billing_metrics
from billing.rating import Terms, rate
from billing.settings import RETRY_AFTER_S
from billing.standing import CHARGES, Charge, card_on_file, charge_of, locked_charge
from billing.stripe_payments import Pending, create_intent, find_intent, metadata_value, outcome_of
from shared.money import FxTable

METADATA_KEY = "cbgw_charge_key"
NO_CARD = "no-card-on-file"
@dataclass(frozen=True, slots=True)
class DunningNotice:
    """A ``billing_notices`` row as its sink gets it."""

    merchant_id: str
    account: str
    kind: Literal["charge-failed", "charge-recovered"]
    charge_id: int
    attempt_id: int
    attempt: int
    consultation_id: str
    total_yen: int
    failure: str            # "" when paid
    at: datetime            # the outcome's transaction time


class NoticeSink(Protocol):
    async def __call__(self, conn: asyncpg.Connection, notice: DunningNotice) -> None:
        """Take ``notice`` inside the transaction that recorded it (durably: it is sent
        if and only if the outcome commits)."""


def charge_key(charge_id: int, merchant_id: str, account: str, consultation_id: str,
               attempt: int) -> str:
    """The attempt's key: the consultation (with its charge row, so that a database
    started afresh against the same Stripe account never meets an old key) and the
    attempt number."""
    digest = hashlib.sha256(f"{merchant_id}\0{account}\0{consultation_id}".encode())
    return f"postpaid-{charge_id}-{digest.hexdigest()[:40]}-{attempt}"


class Postpaid:
    def __init__(self, pool: asyncpg.Pool, client: stripe.StripeClient, *,
                 retry_after_s: tuple[int, ...] = RETRY_AFTER_S,
                 fx: FxTable | None = None, notices: NoticeSink | None = None) -> None:
        """``fx``: the site's FX table, for the billing records of the outcomes;
        ``notices``: where the dunning notices go besides ``billing_notices``."""
        self.pool = pool
        self.client = client
        self.retry_after_s = retry_after_s
        self.fx = fx or DEFAULT_FX
        self.notices = notices

    async def record(self, merchant_id: str, account: str, consultation_id: str,
                     talk_s: int, terms: Terms, *, by: str) -> tuple[Charge, int] | None:
        """The durable charge and its first attempt (the attempt's id), written before
        Stripe is called; the charge already recorded for this consultation and its newest
        attempt on a repeat; None when the consultation costs nothing."""
        priced = rate(talk_s, terms)
        if priced.total_yen == 0:
            return None
        async with self.pool.acquire() as conn, conn.transaction():
            acc = await account_id(conn, merchant_id, account, create=True)
            assert acc is not None
            charge_id = await conn.fetchval(
                """INSERT INTO billing_postpaid_charges (merchant_id, account_id,
                       consultation_id, terms, talk_s, billed_s, total_yen, tax_yen,
                       requested_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                   ON CONFLICT (account_id, consultation_id) DO NOTHING RETURNING id""",
                merchant_id, acc, consultation_id, asdict(terms), priced.talk_s,
                priced.billed_s, priced.total_yen, priced.tax_yen, by)
            if charge_id is None:
                charge_id = await conn.fetchval(
                    "SELECT id FROM billing_postpaid_charges WHERE account_id = $1 "
                    "AND consultation_id = $2", acc, consultation_id)
                attempt_id = await conn.fetchval(
                    "SELECT id FROM billing_postpaid_attempts WHERE charge_id = $1 "
                    "ORDER BY attempt DESC LIMIT 1", charge_id)
            else:
                attempt_id = await self._new_attempt(conn, acc, charge_id, merchant_id,
                                                     account, consultation_id, 1)
            charge = charge_of(await conn.fetchrow(CHARGES + " WHERE c.id = $1", charge_id))
        return charge, attempt_id

    async def charge(self, merchant_id: str, account: str, consultation_id: str,
                     talk_s: int, terms: Terms, *, by: str) -> Charge | None:
        """:meth:`record`, then :meth:`attempt`. :class:`Pending` when Stripe's answer is
        not known (the charge stays recorded; :meth:`reconcile` finishes it)."""
        recorded = await self.record(merchant_id, account, consultation_id, talk_s, terms,
                                     by=by)
        if recorded is None:
            return None
        charge, attempt_id = recorded
        if charge.state != "pending":
            return charge
        return await self.attempt(attempt_id)

    @staticmethod
    async def _new_attempt(conn: asyncpg.Connection, acc: int, charge_id: int,
                           merchant_id: str, account: str, consultation_id: str,
                           attempt: int) -> int:
        card = await card_on_file(conn, acc)
        attempt_id: int = await conn.fetchval(
            """INSERT INTO billing_postpaid_attempts (charge_id, attempt, idempotency_key,
                   customer, payment_method) VALUES ($1, $2, $3, $4, $5) RETURNING id""",
            charge_id, attempt,
            charge_key(charge_id, merchant_id, account, consultation_id, attempt),
            card.customer if card else None, card.payment_method if card else None)
        return attempt_id

    async def attempt(self, attempt_id: int, *, intent: Any = None) -> Charge:
        """Finish one attempt once: its recorded outcome; else ``intent`` (a webhook's
        PaymentIntent), the PaymentIntent found by its key, or a new one."""
        async with self.pool.acquire() as conn, conn.transaction():
            # the lock first, then the read (read committed: see card_topups)
            await conn.execute(
                "SELECT 1 FROM billing_postpaid_attempts WHERE id = $1 FOR UPDATE", attempt_id)
            row = await conn.fetchrow(
                """SELECT t.*, c.merchant_id, c.account_id, c.total_yen, c.consultation_id,
                          c.terms, c.talk_s, c.billed_s, c.tax_yen, a.account, o.outcome
                   FROM billing_postpaid_attempts t
                   JOIN billing_postpaid_charges c ON c.id = t.charge_id
                   JOIN billing_accounts a ON a.id = c.account_id
                   LEFT JOIN billing_postpaid_outcomes o ON o.attempt_id = t.id
                   WHERE t.id = $1""", attempt_id)
            if row is None:
                raise LedgerError(404, "not-found", f"no postpaid attempt {attempt_id}")
            outcome = None if row["outcome"] is not None else await self._finish(conn, row,
                                                                                 intent)
            charge = charge_of(await conn.fetchrow(CHARGES + " WHERE c.id = $1",
                                                 row["charge_id"]))
        counted, merchant = billing_metrics(), row["merchant_id"]
        if outcome == "succeeded":      # committed: counted once, as the outcome is recorded
            counted.charged.labels(merchant, "postpaid").inc()
            counted.charged_yen.labels(merchant, "postpaid").inc(row["total_yen"])
        elif outcome == "failed":
            counted.card_failed.labels(merchant, "postpaid").inc()
        return charge

    async def _finish(self, conn: asyncpg.Connection, row: asyncpg.Record, intent: Any
                      ) -> str:
        """Record the attempt's outcome; it (``succeeded`` or ``failed``)."""
        failure = ""
        if row["customer"] is None:
            failure = NO_CARD
        elif intent is None:
            key = row["idempotency_key"]
            intent = await asyncio.to_thread(find_intent, self.client, METADATA_KEY, key)
            if intent is None:
                intent, failure = await asyncio.to_thread(
                    create_intent, self.client, amount_yen=row["total_yen"],
                    customer=row["customer"], payment_method=row["payment_method"],
                    metadata_key=METADATA_KEY, key=key,
                    metadata={"merchant": row["merchant_id"], "account": row["account"],
                              "consultation": row["consultation_id"]})
        outcome, pi_id, failure = outcome_of(intent, failure, f"postpaid attempt {row['id']}")
        await conn.execute(
            """INSERT INTO billing_postpaid_outcomes (attempt_id, outcome, payment_intent,
                   failure) VALUES ($1, $2, $3, $4)""", row["id"], outcome, pi_id, failure)
        if outcome == "failed" or row["attempt"] > 1:
            await self._notice(conn, row, outcome == "failed", failure)
        await self._record(conn, row, outcome)
        return outcome

    async def _notice(self, conn: asyncpg.Connection, row: asyncpg.Record, failed: bool,
                      failure: str) -> None:
        kind: Literal["charge-failed", "charge-recovered"] = (
            "charge-failed" if failed else "charge-recovered")
        detail = (f"attempt {row['attempt']} failed: {failure}" if failed
                  else f"paid at attempt {row['attempt']}")
        at: datetime = await conn.fetchval(
            """INSERT INTO billing_notices (merchant_id, account_id, kind, charge_id,
                   detail) VALUES ($1, $2, $3, $4, $5) RETURNING created_at""",
            row["merchant_id"], row["account_id"], kind, row["charge_id"], detail)
        if self.notices is not None:
            await self.notices(conn, DunningNotice(
                row["merchant_id"], row["account"], kind, row["charge_id"], row["id"],
                row["attempt"], row["consultation_id"], row["total_yen"],
                failure if failed else "", at))

    async def _record(self, conn: asyncpg.Connection, row: asyncpg.Record, outcome: str
                      ) -> None:
        """The outcome's billing record and its message to the edge, in the outcome's
        transaction: each attempt's outcome is a record of its own (``charged``; a first
        attempt ``failed``, a retry that failed ``dunning``)."""
        state: records.State = ("charged" if outcome == "succeeded" else
                                 "failed" if row["attempt"] == 1 else "dunning")
        advisor, legs = await records.call_legs(conn, row["consultation_id"])
        at: datetime = await conn.fetchval("SELECT now()")  # the transaction's time
        await records.write(conn, records.BillingRecord(
            f"{row['consultation_id']}/charge-{row['charge_id']}-{row['attempt']}",
            row["merchant_id"], row["consultation_id"], advisor, row["account"], "card",
            state, row["terms"]["price_per_minute_yen"], row["talk_s"], row["billed_s"],
            row["total_yen"], row["tax_yen"], legs, self.fx, at))

    async def retry(self, merchant_id: str, charge_id: int) -> Charge:
        """A new attempt of a charge in dunning, with the card on file now, run at once
        (for :meth:`due`, or after the customer registered another card); a charge paid or
        pending is returned as it is."""
        async with self.pool.acquire() as conn, conn.transaction():
            row, charge = await locked_charge(conn, merchant_id, charge_id)
            if charge.state != "failed":
                return charge
            attempt_id = await self._new_attempt(conn, row["account_id"], charge_id,
                                                 merchant_id, charge.account,
                                                 charge.consultation_id, charge.attempts + 1)
        return await self.attempt(attempt_id)

    async def due(self) -> list[tuple[str, int]]:
        """``(merchant, charge id)`` of the charges in dunning whose next retry is due: the
        n-th failure is retried ``retry_after_s[n-1]`` after it; past the schedule, none."""
        rows = await self.pool.fetch(
            CHARGES + """ WHERE o.outcome = 'failed' AND x.charge_id IS NULL
                 AND l.attempt <= cardinality($1::int[])
                 AND o.recorded_at + make_interval(secs => ($1::int[])[l.attempt]) <= now()
               ORDER BY c.id""", list(self.retry_after_s))
        return [(r["merchant_id"], r["id"]) for r in rows]

    async def reconcile(self, *, older_than_s: int = 300) -> list[Charge]:
        """Finish every attempt left without an outcome for longer than ``older_than_s``
        (a process that died around the Stripe call): the PaymentIntent found by its key,
        else a new one. The ones whose answer is still not known stay pending."""
        rows = await self.pool.fetch(
            """SELECT t.id FROM billing_postpaid_attempts t
               LEFT JOIN billing_postpaid_outcomes o ON o.attempt_id = t.id
               WHERE o.attempt_id IS NULL
                 AND t.started_at <= now() - make_interval(secs => $1) ORDER BY t.id""",
            older_than_s)
        done = []
        for row in rows:
            try:
                done.append(await self.attempt(row["id"]))
            except Pending:
                continue
        return done

    async def run_due(self) -> list[Charge]:
        """Every retry due (:meth:`due`); those whose answer is not known stay pending."""
        done = []
        for merchant_id, charge_id in await self.due():
            try:
                done.append(await self.retry(merchant_id, charge_id))
            except Pending:
                continue
        return done

    async def apply_intent(self, intent: Any) -> Charge | None:
        """A PaymentIntent a webhook reported: its attempt finished with it (once); None
        when it is not one of ours."""
        key = metadata_value(intent, METADATA_KEY)
        attempt_id = None if key is None else await self.pool.fetchval(
            "SELECT id FROM billing_postpaid_attempts WHERE idempotency_key = $1", str(key))
        if attempt_id is None:
            return None
        return await self.attempt(attempt_id, intent=intent)
