"""Consultation records in the database, on both sites (tables ``consultations`` and
``consultation_leg_costs``: the migration set :data:`MIGRATIONS`, applied by both).

* :class:`ConsultationRecords` (the callback site): :meth:`~ConsultationRecords.save`
  stores a record and enqueues its ``consultation`` message to the edge in one
  transaction, once per ``consultation_id``; reads for the merchant API.
* :func:`insert_record` and :func:`list_records` are what the edge uses for the records it
  receives (inside :func:`shared.link.accept_once`) and lists for the call center.

Every record lists the call-back's customer leg (``customer_call_id``) among its leg costs,
with its carrier and cost. Its CDR is stored when that leg ends, after the consultation,
so a record saved before the leg is rated is stored but its message waits
(``consultations_awaiting_customer_leg``): the callback site's billing owns the customer
legs (the CDR store hands each to :func:`billing.records.customer_leg_rated`, which takes
the records waiting for it and calls :func:`customer_leg_waited` here in the CDR's
transaction, under the leg's lock, and its
``send_overdue`` sends what waited past ``[billing] customer_leg_wait_s``, the leg listed
with ``cost_unknown``). Its cost counts once: in the call-back's first consultation (by
``requested_at``, as the billing record counts it); a later consultation of the same
call-back lists the leg at zero cost in its currency (its carrier kept; an unrated leg
stays without a cost).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from advisors.records import (
    ConsultationRecord,
    Hold,
    LegCost,
    Ring,
    Transfer,
    wire_time,
)
from shared.db import MigrationSet, survives_database_restarts
from shared.money import Money
from shared.outbox import EVENTS_PATH, Outbox, fact_message_id
from shared.paging import ListQuery, Page, page_of

#: the tables, on both sites (the callback site after ``advisors``, the edge after ``edge``)
MIGRATIONS = MigrationSet("consultations",
                          Path(__file__).resolve().parent / "migrations_consultations")
#: the link message's kind (the outbox's ``kind``, the edge's parser, the link policy)
KIND = "consultation"
#: the listings' filters (query parameters), each an integer column
ID_FILTERS = ("advisor_id", "customer_id", "group_id")

_COLUMNS = ("consultation_id, merchant_id, callback_id, edge_call_id, customer_number, "
            "customer_id, advisor_id, group_id, method, requested_at, rings, answered_at, "
            "holds, transfers, ended_at, talk_s, end_reason, customer_call_id")
#: the call-back's customer leg as rated, under the leg's lock, in the caller's transaction
#: (None: not rated yet): how the callback site's billing answers
#: (:func:`billing.records.customer_leg`)
CustomerLeg = Callable[[asyncpg.Connection, str], Awaitable[LegCost | None]]


async def insert_record(conn: asyncpg.Connection, record: ConsultationRecord) -> int | None:
    """Store ``record`` and its leg costs in the caller's transaction; its row id, or None
    if a record of that ``consultation_id`` is already stored (nothing is written)."""
    row_id: int | None = await conn.fetchval(
        f"""INSERT INTO consultations ({_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                    $17, $18)
            ON CONFLICT (consultation_id) DO NOTHING RETURNING id""",
        record.consultation_id, record.merchant_id, record.callback_id, record.edge_call_id,
        record.customer_number, record.customer_id, record.advisor_id, record.group_id,
        str(record.method), record.requested_at, [r.to_json() for r in record.rings],
        record.answered_at, [h.to_json() for h in record.holds],
        [t.to_json() for t in record.transfers], record.ended_at, record.talk_s,
        str(record.end_reason), record.customer_call_id)
    if row_id is not None and record.leg_costs:
        await conn.executemany(
            """INSERT INTO consultation_leg_costs (consultation_id, position, call_id, role,
                   carrier_id, cost_amount, cost_currency, cost_unknown)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            [(record.consultation_id, i, *_leg_row(c)) for i, c in enumerate(record.leg_costs)])
    return row_id


def _leg_row(c: LegCost) -> tuple[Any, ...]:
    return (c.call_id, c.role, c.carrier_id, None if c.cost is None else c.cost.amount,
            None if c.cost is None else c.cost.currency, c.cost_unknown)


async def list_records(db: asyncpg.Pool | asyncpg.Connection, q: ListQuery) -> Page:
    """One page of a merchant's records, oldest stored first; ``since``/``until`` on
    ``requested_at``, ``q.filters`` on :data:`ID_FILTERS`."""
    unknown = set(q.filters) - set(ID_FILTERS)
    if unknown:
        raise ValueError(f"not a filter of consultations: {sorted(unknown)}")
    rows = await db.fetch(
        f"""SELECT id, recorded_at, {_COLUMNS} FROM consultations
            WHERE merchant_id = $1 AND id > $2
              AND ($3::timestamptz IS NULL OR requested_at >= $3)
              AND ($4::timestamptz IS NULL OR requested_at < $4)
              AND ($6::bigint IS NULL OR advisor_id = $6)
              AND ($7::bigint IS NULL OR customer_id = $7)
              AND ($8::bigint IS NULL OR group_id = $8)
            ORDER BY id LIMIT $5""",
        q.merchant_id, q.after_id, q.since, q.until, q.limit + 1,
        *(q.filters.get(name) for name in ID_FILTERS))
    shown = rows[:q.limit]
    costs = await _leg_costs(db, [r["consultation_id"] for r in shown])
    return page_of(rows, q.limit, lambda r: listed(r, costs.get(r["consultation_id"], ())))


async def read_record(db: asyncpg.Pool | asyncpg.Connection, merchant_id: str,
                   consultation_id: str) -> dict[str, Any] | None:
    """One of the merchant's records as listed (:func:`listed`), or None."""
    row = await db.fetchrow(
        f"""SELECT id, recorded_at, {_COLUMNS} FROM consultations
            WHERE merchant_id = $1 AND consultation_id = $2""", merchant_id, consultation_id)
    if row is None:
        return None
    costs = await _leg_costs(db, [consultation_id])
    return listed(row, costs.get(consultation_id, ()))


def listed(row: asyncpg.Record, leg_costs: Sequence[LegCost]) -> dict[str, Any]:
    """A stored record as the APIs give it: the record's JSON and ``recorded_at``."""
    return {**record_of(row, leg_costs).to_json(), "recorded_at": wire_time(row["recorded_at"])}


def record_of(row: asyncpg.Record, leg_costs: Sequence[LegCost]) -> ConsultationRecord:
    return ConsultationRecord(
        consultation_id=row["consultation_id"], merchant_id=row["merchant_id"],
        callback_id=row["callback_id"], edge_call_id=row["edge_call_id"],
        customer_number=row["customer_number"], customer_id=row["customer_id"],
        advisor_id=row["advisor_id"], group_id=row["group_id"], method=row["method"],
        requested_at=row["requested_at"],
        rings=tuple(Ring.from_json(r) for r in row["rings"]),
        answered_at=row["answered_at"], holds=tuple(Hold.from_json(h) for h in row["holds"]),
        transfers=tuple(Transfer.from_json(t) for t in row["transfers"]),
        ended_at=row["ended_at"], talk_s=row["talk_s"], end_reason=row["end_reason"],
        customer_call_id=row["customer_call_id"], leg_costs=tuple(leg_costs))


async def _leg_costs(db: asyncpg.Pool | asyncpg.Connection, consultation_ids: list[str]
                     ) -> dict[str, list[LegCost]]:
    if not consultation_ids:
        return {}
    rows = await db.fetch(
        """SELECT consultation_id, call_id, role, carrier_id, cost_amount, cost_currency,
                  cost_unknown
           FROM consultation_leg_costs WHERE consultation_id = ANY($1::text[])
           ORDER BY consultation_id, position""", consultation_ids)
    found: dict[str, list[LegCost]] = {}
    for r in rows:
        cost = None if r["cost_amount"] is None else Money(r["cost_amount"], r["cost_currency"])
        found.setdefault(r["consultation_id"], []).append(
            LegCost(r["call_id"], r["role"], r["carrier_id"], cost, r["cost_unknown"]))
    return found


async def first_of_leg(conn: asyncpg.Connection, consultation_id: str) -> str | None:
    """The customer leg the consultation counts the cost of: the call-back's, when this is
    its first consultation by ``requested_at`` (None: no record, no leg named, or a later
    consultation)."""
    found: str | None = await conn.fetchval(
        """SELECT c.customer_call_id FROM consultations c
           WHERE c.consultation_id = $1 AND c.customer_call_id IS NOT NULL
             AND c.consultation_id = (
                 SELECT f.consultation_id FROM consultations f
                 WHERE f.customer_call_id = c.customer_call_id
                 ORDER BY f.requested_at, f.consultation_id LIMIT 1)""", consultation_id)
    return found


async def customer_leg_waited(conn: asyncpg.Connection, leg: LegCost,
                              waiting: Sequence[tuple[str, str]]) -> None:
    """The call-back's customer leg, rated (in its CDR's transaction, under the leg's
    lock): the records that waited for it (``waiting``: consultation id and path, taken
    from ``consultations_awaiting_customer_leg`` by
    :func:`billing.records.customer_leg_rated`) get it and their messages go."""
    for consultation_id, path in waiting:
        await _send_with(conn, consultation_id, leg, path)


async def overdue(db: asyncpg.Pool | asyncpg.Connection, wait_s: int, limit: int
                  ) -> list[tuple[str, str]]:
    """(consultation id, customer call id) of the records waiting more than ``wait_s``."""
    rows = await db.fetch(
        """SELECT consultation_id, customer_call_id FROM consultations_awaiting_customer_leg
           WHERE created_at <= now() - make_interval(secs => $1)
           ORDER BY created_at, consultation_id LIMIT $2""", wait_s, limit)
    return [(r["consultation_id"], r["customer_call_id"]) for r in rows]


async def send_without_customer_leg(conn: asyncpg.Connection, consultation_id: str) -> bool:
    """Send a record that waited past its wait (under its leg's lock), the customer leg
    listed with ``cost_unknown``; False if it no longer waits (its leg came meanwhile)."""
    row = await conn.fetchrow(
        """DELETE FROM consultations_awaiting_customer_leg WHERE consultation_id = $1
           RETURNING customer_call_id, path""", consultation_id)
    if row is None:
        return False
    unknown = LegCost(row["customer_call_id"], "customer", None, None, cost_unknown=True)
    await _send_with(conn, consultation_id, unknown, row["path"])
    return True


async def _send_with(conn: asyncpg.Connection, consultation_id: str, leg: LegCost,
                     path: str) -> None:
    """Add the customer leg to the stored record's leg costs, attributed (its cost in the
    call-back's first consultation only), and enqueue the record's message."""
    if leg.cost is not None and await first_of_leg(conn, consultation_id) is None:
        leg = replace(leg, cost=Money(Decimal(0), leg.cost.currency))
    await conn.execute(
        """INSERT INTO consultation_leg_costs (consultation_id, position, call_id, role,
               carrier_id, cost_amount, cost_currency, cost_unknown)
           SELECT $1, coalesce(max(position) + 1, 0), $2, $3, $4, $5, $6, $7
           FROM consultation_leg_costs WHERE consultation_id = $1""",
        consultation_id, *_leg_row(leg))
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM consultations "
                              "WHERE consultation_id = $1", consultation_id)
    costs = await _leg_costs(conn, [consultation_id])
    await _enqueue(conn, record_of(row, costs[consultation_id]), path)


async def _enqueue(conn: asyncpg.Connection, record: ConsultationRecord, path: str) -> None:
    await Outbox.enqueue(conn, kind=KIND, path=path,
                         payload={"kind": KIND, **record.to_json()},
                         message_id=fact_message_id(KIND, record.consultation_id),
                         merchant_id=record.merchant_id)


class ConsultationRecords:
    """The callback site's records: each stored once, with its message to the edge.
    ``customer_leg``: the call-back's customer leg as rated so far; None (no billing
    here): a record goes as saved, without waiting for that leg."""

    def __init__(self, pool: asyncpg.Pool, *, path: str = EVENTS_PATH,
                 customer_leg: CustomerLeg | None = None) -> None:
        self.pool = pool
        self.path = path
        self.customer_leg = customer_leg

    @survives_database_restarts
    async def save(self, record: ConsultationRecord) -> bool:
        """Store ``record`` and enqueue its ``consultation`` message (message id from the
        consultation id) in one transaction, with the call-back's customer leg among its
        leg costs: a leg not rated yet keeps the message waiting for it (module doc).
        False, writing nothing, if a record of that ``consultation_id`` is already
        stored: a second save never sends a second message (a save whose commit was lost
        in a database restart is repeated, and then says False)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if await insert_record(conn, record) is None:
                return False
            call_id = record.customer_call_id
            if self.customer_leg is None or call_id is None \
                    or any(c.call_id == call_id for c in record.leg_costs):
                await _enqueue(conn, record, self.path)
                return True
            leg = await self.customer_leg(conn, call_id)
            if leg is not None:
                await _send_with(conn, record.consultation_id, leg, self.path)
            else:
                await conn.execute(
                    """INSERT INTO consultations_awaiting_customer_leg (consultation_id,
                           customer_call_id, path) VALUES ($1, $2, $3)""",
                    record.consultation_id, call_id, self.path)
            return True

    async def get(self, merchant_id: str, consultation_id: str) -> dict[str, Any] | None:
        return await read_record(self.pool, merchant_id, consultation_id)

    async def page(self, q: ListQuery) -> Page:
        return await list_records(self.pool, q)
