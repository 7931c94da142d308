"""CDRs: one per finished leg, rated, and reported to the edge through the outbox; a
customer leg's also handed to billing (its consultation's billing record counts it).
A leg's CDR written with its round's end goes in its statement instead
(:mod:`~callback_server.store.leg_end`)."""

from __future__ import annotations

from callback_server.dialer_messages import RecordCdr
from callback_server.store.base import StoreBase
from callback_server.store.leg_end import StoredCdr, write_cdr_alone
from shared.db import survives_database_restarts
from shared.money import Money


class CdrStore(StoreBase):
    @survives_database_restarts
    async def record_cdr(self, cdr: RecordCdr, *, edge_call_id: str, merchant_id: str,
                         billed_s: int, carrier_cost: Money | None,
                         direct_cost: Money | None) -> bool:
        """Store one CDR and its outbox message (its spend with it): one statement
        committed on its own. False if it was already stored."""
        async with self.pool.acquire() as conn:
            return await write_cdr_alone(self, conn, StoredCdr(cdr, edge_call_id, merchant_id,
                                                         billed_s, carrier_cost,
                                                         direct_cost))
