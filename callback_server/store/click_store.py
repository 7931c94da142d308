"""Web click-to-call requests in: each one a call-back job with the advisor picked.

:meth:`ClickStore.store_click` writes the job (``callback_requests``: queued, due now, one
round), its ``click_to_call_requests`` row and, screened by the guard, its count
against the number's velocity (``guard_note_accepted``) in one transaction (the jobs' NOTIFY is
delivered at its commit), so a request answered 202 is dialled by whichever worker claims
it, after a restart too (:mod:`callback_server.worker`). A merchant's ``Idempotency-Key``
names one request: sent again, the first request's job is returned and nothing is queued.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from callback_server.store.base import StoreBase
from callback_server.store.intake_store import new_callback_id
from shared.config import Merchant
from shared.phone import E164

#: ``callback_requests.edge_call_id`` of a click-to-call job (no edge call: the web)
EDGE_CALL_PREFIX = "click:"


@dataclass(frozen=True, slots=True)
class StoredClick:
    """A click-to-call job: its call-back id and status; ``repeat`` when the key was
    known (this is the first request's)."""

    callback_id: str
    status: str
    advisor_id: int
    repeat: bool


class ClickStore(StoreBase):
    async def store_click(self, merchant: Merchant, customer: E164, advisor_id: int,
                          idempotency_key: str | None, known: bool | None = None
                          ) -> StoredClick:
        """Store the job; screened by the guard (``known``: whether it knows the number;
        None: not screened), it counts for the number's velocity as a call-back request."""
        async with self.pool.acquire() as conn, conn.transaction():
            if idempotency_key is not None:
                # one transaction at a time per merchant and key: the second waits, then
                # finds the first's row
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))",
                                   merchant.id, idempotency_key)
                repeat = await self.known_click(merchant.id, idempotency_key, conn)
                if repeat is not None:
                    return repeat
            callback_id = new_callback_id()
            await conn.execute(
                """INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id,
                       caller, received_at, message_id, max_attempts, next_attempt_at)
                   VALUES ($1, $2, $3, $4, now(), $2, 1, now())""",
                callback_id, EDGE_CALL_PREFIX + callback_id, merchant.id, str(customer))
            await conn.execute(
                """INSERT INTO click_to_call_requests (callback_id, merchant_id, advisor_id,
                       idempotency_key) VALUES ($1, $2, $3, $4)""",
                callback_id, merchant.id, advisor_id, idempotency_key)
            if known is not None:
                await conn.execute("SELECT guard_note_accepted($1, $2, $3, $4, now())",
                                   [callback_id], [str(customer)], [merchant.id], [known])
        return StoredClick(callback_id, "queued", advisor_id, False)

    async def known_click(self, merchant_id: str, key: str,
                          conn: asyncpg.Connection | None = None) -> StoredClick | None:
        """The request stored under a merchant's ``Idempotency-Key`` (None: none)."""
        row = await (conn or self.pool).fetchrow(
            """SELECT k.callback_id, r.status, k.advisor_id FROM click_to_call_requests k
               JOIN callback_requests r USING (callback_id)
               WHERE k.merchant_id = $1 AND k.idempotency_key = $2""", merchant_id, key)
        if row is None:
            return None
        return StoredClick(row["callback_id"], row["status"], int(row["advisor_id"]), True)
