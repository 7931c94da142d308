"""CDRs: one per finished leg, rated, and reported to the edge through the outbox; a
customer leg's also handed to billing (its consultation's billing record counts it)."""

from __future__ import annotations

from decimal import Decimal

from billing.records import Leg
from callback_server.dialer_messages import RATED_LEGS, RecordCdr
from callback_server.store.base import StoreBase
from shared import leg_destination
from shared.db import survives_database_restarts
from shared.money import Money
from shared.outbox import EVENTS_PATH, Outbox, fact_message_id, isoformat


class CdrStore(StoreBase):
    @survives_database_restarts
    async def record_cdr(self, cdr: RecordCdr, *, edge_call_id: str, merchant_id: str,
                         billed_s: int, carrier_cost: Money | None,
                         direct_cost: Money | None) -> bool:
        """Store one CDR and its outbox message. False if it was already stored."""
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """INSERT INTO cdrs (call_id, callback_id, merchant_id, leg, destination,
                       carrier_id, started_at, answered_at, ended_at, duration_s, billed_s,
                       hangup_cause, disposition, carrier_cost, carrier_currency, direct_cost,
                       direct_currency)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                           $16, $17)
                   ON CONFLICT (call_id) DO NOTHING RETURNING true""",
                cdr.call_id, cdr.callback_id, merchant_id, cdr.leg, cdr.destination,
                cdr.carrier_id, cdr.started_at, cdr.answered_at, cdr.ended_at, cdr.duration_s,
                billed_s, cdr.hangup_cause, cdr.disposition,
                _amount(carrier_cost), _currency(carrier_cost), _amount(direct_cost),
                _currency(direct_cost))
            if not inserted:
                return False
            if self.guard is not None and carrier_cost is not None and cdr.leg in RATED_LEGS:
                await self.guard.add_spend(conn, cdr.carrier_id, merchant_id, carrier_cost)
            if self.customer_legs is not None and cdr.leg == "customer":
                await self.customer_legs(conn, Leg(cdr.call_id, "customer", cdr.carrier_id,
                                                   carrier_cost))
            payload = {
                "kind": "cdr", "call_id": cdr.call_id, "callback_id": cdr.callback_id,
                "edge_call_id": edge_call_id, "merchant_id": merchant_id, "leg": cdr.leg,
                "destination": cdr.destination,
                "destination_kind": leg_destination.kind_of(cdr.destination),
                "carrier": cdr.carrier_id,
                "started_at": isoformat(cdr.started_at),
                "answered_at": isoformat(cdr.answered_at), "ended_at": isoformat(cdr.ended_at),
                "duration_s": str(cdr.duration_s), "billed_s": billed_s,
                "hangup_cause": cdr.hangup_cause, "disposition": cdr.disposition,
                "carrier_cost": carrier_cost.to_json() if carrier_cost else None,
                "direct_cost": direct_cost.to_json() if direct_cost else None,
            }
            await Outbox.enqueue(conn, kind="cdr", path=EVENTS_PATH, payload=payload,
                                 message_id=fact_message_id("cdr", cdr.call_id),
                                 merchant_id=merchant_id)
            return True


def _amount(money: Money | None) -> Decimal | None:
    return None if money is None else money.amount


def _currency(money: Money | None) -> str | None:
    return None if money is None else money.currency
