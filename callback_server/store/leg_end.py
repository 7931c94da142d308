"""A leg's end as the store writes it: its result and its CDR (with the CDR's outbox
message), on the caller's connection, so one transaction can carry a leg's end together
with its round's finish (:meth:`~callback_server.store.leg_store.LegStore.end_leg`,
:meth:`~callback_server.store.queue_store.QueueStore.finish`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from billing.records import Leg, customer_leg_rated_query, customer_leg_waited
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


def _cdr_ctes(p: Callable[[int], str], billing: bool, alone: bool) -> str:
    """A CDR and its outbox message (the message only with a new CDR), and with a new
    customer leg's, when ``billing``, that leg handed to billing
    (:func:`billing.records.customer_leg_rated_query`, its arguments among the CDR's;
    ``alone``: the statement is a transaction of its own); ``p(n)``: the CDR's ``n``-th
    parameter (:func:`_cdr_args`)."""
    ctes = f"""cdr AS (
        INSERT INTO cdrs (call_id, callback_id, merchant_id, leg, destination,
            carrier_id, started_at, answered_at, ended_at, duration_s, billed_s,
            hangup_cause, disposition, carrier_cost, carrier_currency, direct_cost,
            direct_currency)
        VALUES ({", ".join(p(n) for n in range(1, 18))})
        ON CONFLICT (call_id) DO NOTHING RETURNING true),
    cdr_message AS (
        INSERT INTO outbox ({Outbox.INSERT_COLUMNS})
        SELECT {p(18)}, 'cdr', {p(19)}, {p(20)}, {p(3)}, false FROM cdr
        ON CONFLICT (message_id) DO NOTHING)"""
    if not billing:
        return ctes
    rated = customer_leg_rated_query(p(1), p(6), p(14), p(15), alone=alone)
    return f"{ctes},\n    customer_leg AS (SELECT {rated} AS waiting FROM cdr)"


#: what the leg's end's statement part gives when it has a CDR, for
#: :func:`leg_end_written` (``customer_leg``: the billing's, or none)
def leg_end_columns(store: StoreBase, stored: StoredCdr) -> str:
    waiting = "(SELECT waiting FROM customer_leg)" if _billed(store, stored) else "NULL"
    return f"EXISTS (SELECT FROM cdr) AS cdr_stored, {waiting} AS customer_leg_waiting"


def _billed(store: StoreBase, stored: StoredCdr) -> bool:
    """Whether billing takes the CDR's leg (a call-back's customer leg, billing here)."""
    return store.customer_legs and stored.cdr.leg == "customer"


def _spends(store: StoreBase, stored: StoredCdr) -> bool:
    """Whether the CDR's cost counts against the guard's spend caps."""
    return store.guard is not None and stored.carrier_cost is not None \
        and stored.cdr.leg in RATED_LEGS


def leg_end_alone(store: StoreBase, stored: StoredCdr | None) -> bool:
    """Whether :func:`leg_end_part` can be a transaction of its own: nothing of the CDR
    is written after its statement (no spend to count; a customer leg's records waiting
    for it fail the statement, :data:`billing.records.RECORDS_WAITING`)."""
    return stored is None or not _spends(store, stored)


@dataclass(frozen=True, slots=True)
class LegEndPart:
    """A leg's end as CTEs of a statement (its result, its CDR and what goes with it),
    its parameters from ``$first`` on; :func:`leg_end_columns` reads what it did, when it
    has a CDR."""

    ctes: str
    args: tuple[object, ...]


def leg_end_part(store: StoreBase, stored: StoredCdr | None, leg: LegEnd | None,
                 first: int, *, alone: bool = False) -> LegEndPart:
    """The CTEs of ``stored`` (a CDR) and ``leg`` (its result), either or both;
    ``alone``: in a statement that is a transaction of its own
    (:func:`leg_end_alone`)."""
    def p(n: int) -> str:
        return f"${first + n - 1}"
    parts: list[str] = []
    args: tuple[object, ...] = ()
    if stored is not None:
        parts.append(_cdr_ctes(p, _billed(store, stored), alone))
        args = _cdr_args(stored)
    if leg is not None:
        n = len(args)
        parts.append(f"leg AS ({_leg_result(p(n + 1), p(n + 2), p(n + 3))})")
        args += (leg.channel_id, leg.status, leg.cause)
    return LegEndPart(",\n    ".join(parts), args)


def _cdr_args(stored: StoredCdr) -> tuple[object, ...]:
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
    return (cdr.call_id, cdr.callback_id, merchant_id, cdr.leg, cdr.destination,
            cdr.carrier_id, cdr.started_at, cdr.answered_at, cdr.ended_at, cdr.duration_s,
            stored.billed_s, cdr.hangup_cause, cdr.disposition,
            _amount(carrier_cost), _currency(carrier_cost), _amount(stored.direct_cost),
            _currency(stored.direct_cost),
            uuid.UUID(fact_message_id("cdr", cdr.call_id)), EVENTS_PATH, encode(payload))


async def leg_end_written(store: StoreBase, conn: asyncpg.Connection, stored: StoredCdr,
                          row: Mapping[str, Any]) -> bool:
    """After the statement that carried :func:`leg_end_part` with ``stored``, in its
    transaction (``row``: its :func:`leg_end_columns`): the guard's spend, and the records
    that waited for the customer leg sent with it. False if the CDR was already stored."""
    if not row["cdr_stored"]:
        return False
    cdr, carrier_cost = stored.cdr, stored.carrier_cost
    if store.guard is not None and carrier_cost is not None and _spends(store, stored):
        await store.guard.add_spend(conn, cdr.carrier_id, stored.merchant_id, carrier_cost)
    waiting = row["customer_leg_waiting"]
    if waiting is not None and (waiting["records"] or waiting["consultations"]):
        await customer_leg_waited(conn, Leg(cdr.call_id, "customer", cdr.carrier_id,
                                            carrier_cost), waiting)
    return True


async def write_cdr(store: StoreBase, conn: asyncpg.Connection, stored: StoredCdr,
                    leg: LegEnd | None = None) -> bool:
    """Store one CDR and its outbox message, in the caller's transaction (the guard's
    spend and the billing record's customer leg with it); ``leg``: its result in the same
    statement. False if it was already stored."""
    part = leg_end_part(store, stored, leg, 1)
    row = await conn.fetchrow(f"WITH {part.ctes} SELECT {leg_end_columns(store, stored)}",
                              *part.args)
    assert row is not None
    return await leg_end_written(store, conn, stored, row)


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
