"""A leg's end as the store writes it: its result and its CDR (with the CDR's outbox
message, its cost counted against the guard's spend caps, a customer leg handed to
billing), on the caller's connection, as CTEs one statement can carry with its round's
finish (:meth:`~callback_server.store.leg_store.LegStore.end_leg`,
:meth:`~callback_server.store.queue_store.QueueStore.finish`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from billing.records import (
    RECORDS_WAITING,
    Leg,
    customer_leg_rated_query,
    customer_leg_waited,
)
from callback_server.dialer_messages import RATED_LEGS, RecordCdr
from callback_server.guard.service import SpendPart
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


def _billed(store: StoreBase, stored: StoredCdr) -> bool:
    """Whether billing takes the CDR's leg (a call-back's customer leg, billing here)."""
    return store.customer_legs and stored.cdr.leg == "customer"


def _spends(store: StoreBase, stored: StoredCdr) -> bool:
    """Whether the CDR's cost counts against the guard's spend caps."""
    return store.guard is not None and stored.carrier_cost is not None \
        and stored.cdr.leg in RATED_LEGS


@dataclass(frozen=True, slots=True)
class LegEndPart:
    """A leg's end as CTEs of a statement (its result, its CDR and what goes with it:
    the CDR's message, the guard's spend with its cap check, billing's customer leg), its
    parameters from ``$first`` on; with a CDR, :attr:`columns` reads what it did, for
    :func:`leg_end_written`."""

    ctes: str
    args: tuple[object, ...]
    stored: StoredCdr | None = None
    billed: bool = False
    spend: SpendPart | None = None

    @property
    def columns(self) -> str | None:
        """What the part did, with a CDR (``cdr_stored``, ``customer_leg_waiting``: the
        billing's, or none; ``spend_crossed``: the guard's, or none); None without."""
        if self.stored is None:
            return None
        waiting = "(SELECT waiting FROM customer_leg)" if self.billed else "NULL"
        spend = "NULL::jsonb AS spend_crossed" if self.spend is None else self.spend.column
        return (f"EXISTS (SELECT FROM cdr) AS cdr_stored, {waiting} AS customer_leg_waiting, "
                f"{spend}")


def leg_end_part(store: StoreBase, stored: StoredCdr | None, leg: LegEnd | None,
                 first: int, *, alone: bool = False) -> LegEndPart:
    """The CTEs of ``stored`` (a CDR: its spend counted and its spend caps checked in the
    same statement) and ``leg`` (its result), either or both; ``alone``: in a statement
    that is a transaction of its own (records waiting for a customer leg then fail it,
    :data:`billing.records.RECORDS_WAITING`, nothing written)."""
    def p(n: int) -> str:
        return f"${first + n - 1}"
    parts: list[str] = []
    args: tuple[object, ...] = ()
    billed, spend = False, None
    if stored is not None:
        billed = _billed(store, stored)
        parts.append(_cdr_ctes(p, billed, alone))
        args = _cdr_args(stored)
        if store.guard is not None and stored.carrier_cost is not None \
                and _spends(store, stored):
            spend = store.guard.spend(stored.cdr.carrier_id, stored.merchant_id,
                                      stored.carrier_cost, first + len(args), "cdr")
        if spend is not None:
            parts.append(spend.ctes)
            args += spend.args
    if leg is not None:
        n = len(args)
        parts.append(f"leg AS ({_leg_result(p(n + 1), p(n + 2), p(n + 3))})")
        args += (leg.channel_id, leg.status, leg.cause)
    return LegEndPart(",\n    ".join(parts), args, stored, billed, spend)


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


async def leg_end_written(store: StoreBase, conn: asyncpg.Connection, part: LegEndPart,
                          row: Mapping[str, Any]) -> bool:
    """After the statement that carried ``part`` with a CDR (``row``: its
    :attr:`~LegEndPart.columns`; in its transaction when it has one): the spend caps its
    cost took over alerted, and the records that waited for the customer leg sent with it
    (only in a transaction: a statement alone fails instead). False if the CDR was already
    stored."""
    stored = part.stored
    assert stored is not None
    if not row["cdr_stored"]:
        return False
    if store.guard is not None and row["spend_crossed"]:
        store.guard.spend_counted(row["spend_crossed"])
    waiting = row["customer_leg_waiting"]
    if waiting is not None and (waiting["records"] or waiting["consultations"]):
        cdr = stored.cdr
        await customer_leg_waited(conn, Leg(cdr.call_id, "customer", cdr.carrier_id,
                                            stored.carrier_cost), waiting)
    return True


async def write_cdr(store: StoreBase, conn: asyncpg.Connection, stored: StoredCdr,
                    leg: LegEnd | None = None, *, alone: bool = False) -> bool:
    """Store one CDR and its outbox message, its cost counted against the guard's spend
    caps and the billing record's customer leg with it, in one statement (``alone``: a
    transaction of its own, else in the caller's); ``leg``: its result in the same
    statement. False if it was already stored."""
    part = leg_end_part(store, stored, leg, 1, alone=alone)
    row = await conn.fetchrow(f"WITH {part.ctes} SELECT {part.columns}", *part.args)
    assert row is not None
    return await leg_end_written(store, conn, part, row)


async def write_cdr_alone(store: StoreBase, conn: asyncpg.Connection, stored: StoredCdr,
                          leg: LegEnd | None = None) -> bool:
    """:func:`write_cdr` as a statement committed on its own (``conn`` in no
    transaction), or, when billing records wait for its customer leg (the statement
    fails, nothing written), as a transaction that sends them with it."""
    try:
        return await write_cdr(store, conn, stored, leg, alone=True)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate != RECORDS_WAITING:
            raise
    async with conn.transaction():
        return await write_cdr(store, conn, stored, leg)


async def write_leg_end(store: StoreBase, conn: asyncpg.Connection, end: LegEnd) -> None:
    """The leg's result and its CDR: one statement (committed on its own, ``conn`` in no
    transaction; :func:`write_cdr_alone`)."""
    if end.cdr is None:
        await write_leg_result(conn, end.channel_id, end.status, end.cause)
    else:
        await write_cdr_alone(store, conn, end.cdr, end)


def _amount(money: Money | None) -> Decimal | None:
    return None if money is None else money.amount


def _currency(money: Money | None) -> str | None:
    return None if money is None else money.currency
