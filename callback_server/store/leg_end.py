"""A leg's end as the store writes it: its result and its CDR (with the CDR's outbox
message), on the caller's connection, so one transaction can carry a leg's end together
with its round's finish (:meth:`~callback_server.store.leg_store.LegStore.end_leg`,
:meth:`~callback_server.store.queue_store.QueueStore.finish`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from billing.records import Leg
from callback_server.dialer_messages import RATED_LEGS, RecordCdr
from callback_server.store.base import StoreBase
from shared import leg_destination
from shared.money import Money
from shared.outbox import EVENTS_PATH, Outbox, encode, fact_message_id, isoformat


@dataclass(frozen=True, slots=True)
class StoredCdr:
    """A leg's CDR, rated (:func:`callback_server.cdr_rating.rate_cdr`)."""

    cdr: RecordCdr
    edge_call_id: str
    merchant_id: str
    billed_s: int
    carrier_cost: Money | None
    direct_cost: Money | None


@dataclass(frozen=True, slots=True)
class LegEnd:
    """A leg's result (``ended``, ``failed``) and, when it has one, its CDR."""

    channel_id: str
    status: str
    cause: int | None
    cdr: StoredCdr | None = None


def _leg_result(channel_id: str, status: str, cause: str) -> str:
    """The leg's result as one UPDATE, its parameters named (``$n``) by the caller."""
    return f"""UPDATE callback_attempts SET status = {status},
               cause = coalesce({cause}, cause),
               answered = answered OR {status} = 'answered',
               answered_at = CASE WHEN {status} = 'answered'
                                  THEN coalesce(answered_at, now()) ELSE answered_at END,
               updated_at = now()
           WHERE channel_id = {channel_id}"""


async def write_leg_result(conn: asyncpg.Connection, channel_id: str, status: str,
                           cause: int | None) -> None:
    await conn.execute(_leg_result("$1", "$2", "$3"), channel_id, status, cause)


#: a CDR and its outbox message in one statement (the message only with a new CDR);
#: ``$21``-``$23``: the leg's result with it (:func:`write_leg_end`)
_CDR = f"""cdr AS (
        INSERT INTO cdrs (call_id, callback_id, merchant_id, leg, destination,
            carrier_id, started_at, answered_at, ended_at, duration_s, billed_s,
            hangup_cause, disposition, carrier_cost, carrier_currency, direct_cost,
            direct_currency)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                $16, $17)
        ON CONFLICT (call_id) DO NOTHING RETURNING true),
    message AS (
        INSERT INTO outbox ({Outbox.INSERT_COLUMNS})
        SELECT $18, 'cdr', $19, $20, $3, false FROM cdr
        ON CONFLICT (message_id) DO NOTHING)
    SELECT EXISTS (SELECT FROM cdr)"""
_CDR_ALONE = f"WITH {_CDR}"
_CDR_WITH_LEG_RESULT = f"WITH leg AS ({_leg_result('$21', '$22', '$23')}), {_CDR}"


async def write_cdr(store: StoreBase, conn: asyncpg.Connection, stored: StoredCdr,
                    leg: LegEnd | None = None) -> bool:
    """Store one CDR and its outbox message, in the caller's transaction (the guard's
    spend and the billing record's customer leg with it); ``leg``: its result in the same
    statement. False if it was already stored."""
    cdr, merchant_id, carrier_cost = stored.cdr, stored.merchant_id, stored.carrier_cost
    payload = {
        "kind": "cdr", "call_id": cdr.call_id, "callback_id": cdr.callback_id,
        "edge_call_id": stored.edge_call_id, "merchant_id": merchant_id, "leg": cdr.leg,
        "destination": cdr.destination,
        "destination_kind": leg_destination.kind_of(cdr.destination),
        "carrier": cdr.carrier_id,
        "started_at": isoformat(cdr.started_at),
        "answered_at": isoformat(cdr.answered_at), "ended_at": isoformat(cdr.ended_at),
        "duration_s": str(cdr.duration_s), "billed_s": stored.billed_s,
        "hangup_cause": cdr.hangup_cause, "disposition": cdr.disposition,
        "carrier_cost": carrier_cost.to_json() if carrier_cost else None,
        "direct_cost": stored.direct_cost.to_json() if stored.direct_cost else None,
    }
    args = (cdr.call_id, cdr.callback_id, merchant_id, cdr.leg, cdr.destination,
            cdr.carrier_id, cdr.started_at, cdr.answered_at, cdr.ended_at, cdr.duration_s,
            stored.billed_s, cdr.hangup_cause, cdr.disposition,
            _amount(carrier_cost), _currency(carrier_cost), _amount(stored.direct_cost),
            _currency(stored.direct_cost),
            uuid.UUID(fact_message_id("cdr", cdr.call_id)), EVENTS_PATH, encode(payload))
    inserted = await (conn.fetchval(_CDR_ALONE, *args) if leg is None else
                      conn.fetchval(_CDR_WITH_LEG_RESULT, *args, leg.channel_id,
                                    leg.status, leg.cause))
    if not inserted:
        return False
    if store.guard is not None and carrier_cost is not None and cdr.leg in RATED_LEGS:
        await store.guard.add_spend(conn, cdr.carrier_id, merchant_id, carrier_cost)
    if store.customer_legs is not None and cdr.leg == "customer":
        await store.customer_legs(conn, Leg(cdr.call_id, "customer", cdr.carrier_id,
                                            carrier_cost))
    return True


async def write_leg_end(store: StoreBase, conn: asyncpg.Connection, end: LegEnd) -> None:
    """The leg's result and its CDR, in the caller's transaction: one statement."""
    if end.cdr is None:
        await write_leg_result(conn, end.channel_id, end.status, end.cause)
    else:
        await write_cdr(store, conn, end.cdr, end)


def _amount(money: Money | None) -> Decimal | None:
    return None if money is None else money.amount


def _currency(money: Money | None) -> str | None:
    return None if money is None else money.currency
