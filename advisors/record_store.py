"""Consultation records in the database, on both sites (tables ``consultations`` and
``consultation_leg_costs``: the migration set :data:`MIGRATIONS`, applied by both).

* :class:`ConsultationRecords` (the callback site): :meth:`~ConsultationRecords.save`
  stores a record and enqueues its ``consultation`` message to the edge in one
  transaction, once per ``consultation_id``; reads for the merchant API.
* :func:`insert_record` and :func:`list_records` are what the edge uses for the records it
  receives (inside :func:`shared.link.accept_once`) and lists for the call center.
"""

from __future__ import annotations

from collections.abc import Sequence
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
                   carrier_id, cost_amount, cost_currency)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            [(record.consultation_id, i, c.call_id, c.role, c.carrier_id,
              None if c.cost is None else c.cost.amount,
              None if c.cost is None else c.cost.currency)
             for i, c in enumerate(record.leg_costs)])
    return row_id


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
        """SELECT consultation_id, call_id, role, carrier_id, cost_amount, cost_currency
           FROM consultation_leg_costs WHERE consultation_id = ANY($1::text[])
           ORDER BY consultation_id, position""", consultation_ids)
    found: dict[str, list[LegCost]] = {}
    for r in rows:
        cost = None if r["cost_amount"] is None else Money(r["cost_amount"], r["cost_currency"])
        found.setdefault(r["consultation_id"], []).append(
            LegCost(r["call_id"], r["role"], r["carrier_id"], cost))
    return found


class ConsultationRecords:
    """The callback site's records: each stored once, with its message to the edge."""

    def __init__(self, pool: asyncpg.Pool, *, path: str = EVENTS_PATH) -> None:
        self.pool = pool
        self.path = path

    @survives_database_restarts
    async def save(self, record: ConsultationRecord) -> bool:
        """Store ``record`` and enqueue its ``consultation`` message (message id from the
        consultation id) in one transaction. False, writing nothing, if a record of that
        ``consultation_id`` is already stored: a second save never sends a second message
        (a save whose commit was lost in a database restart is repeated, and then says
        False)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if await insert_record(conn, record) is None:
                return False
            await Outbox.enqueue(conn, kind=KIND, path=self.path,
                                 payload={"kind": KIND, **record.to_json()},
                                 message_id=fact_message_id(KIND, record.consultation_id),
                                 merchant_id=record.merchant_id)
            return True

    async def get(self, merchant_id: str, consultation_id: str) -> dict[str, Any] | None:
        return await read_record(self.pool, merchant_id, consultation_id)

    async def page(self, q: ListQuery) -> Page:
        return await list_records(self.pool, q)
