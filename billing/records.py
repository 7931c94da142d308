"""Billing records: what one charge of a consultation came to, revenue beside cost.

A :class:`BillingRecord` is written on the callback site in the transaction of the
settlement it records (:func:`write`, called by :meth:`billing.ledger.Ledger.settle`), with
its ``billing_record`` outbox message to the edge (message id from the ``record_id``:
exactly once over the link). The edge stores it (:func:`insert_record`, inside
:func:`shared.link.accept_once`) and lists it for the call center (:func:`list_records`).
Both sites keep the table ``billing_records`` (migration set :data:`MIGRATIONS`).

Revenue is the charge (integer yen, tax included); cost is the sum of the call's legs'
carrier costs (the consultation's ``consultation_leg_costs`` as stored when the charge is
recorded) converted to yen with the site's FX table at that moment, which the record keeps
(``fx``); the margin is revenue less cost. All three are exact ``Decimal`` (no rounding:
a USD cost times a rate keeps its digits). A leg without a cost (not rated), or in a
currency the FX table has no rate for, adds nothing and is listed with ``cost_yen`` null.
Records are append-only: a later outcome of the same consultation is a new record with its
own ``record_id``.

The call-back's customer leg is part of the cost, but its CDR is stored when that leg
ends, after the consultation was settled or charged. So a record waits for it: the CDR
store hands each rated customer leg to :func:`customer_leg_rated` in the CDR's
transaction, which keeps it (``billing_customer_legs``) and writes, with that leg, the
records written before it (``billing_records_awaiting``). A record whose customer leg is
known by then (or among the consultation's leg costs) is written at once, with it; one
of a consultation without a customer leg (no record, or none named) at once, without.
The leg counts in the call-back's first consultation only (a second consultation on the
same call does not count it again). Both sides take the leg's advisory lock, so a record
and its leg never miss each other, and each record is written once (its ``record_id``;
the waiting row goes in the same transaction). A record waits at most the site's
``[billing] customer_leg_wait_s`` (:func:`send_overdue`): then it goes without the leg's
cost, the customer leg listed with ``cost_unknown`` true (no carrier, no cost); a CDR
stored later sends nothing again (the record left the waiting table with its message).
The consultation records' messages wait for the same leg the same way
(:mod:`advisors.record_store`): :func:`customer_leg` answers their save, and the leg's
CDR and :func:`send_overdue` send those too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg

from advisors import record_store
from advisors.records import LegCost
from shared.db import MigrationSet
from shared.http import InvalidField, require_str, require_timestamp
from shared.money import FxTable, MissingFxRate, Money, MoneyError
from shared.openapi import MONEY, TIMESTAMP, Schema, nullable, string
from shared.outbox import EVENTS_PATH, Outbox, fact_message_id, isoformat
from shared.paging import ListQuery, Page, page_of

#: the table, on both sites (the callback site after ``billing``, the edge after ``edge``)
MIGRATIONS = MigrationSet("billing_records",
                          Path(__file__).resolve().parent.joinpath("migrations_records"))
#: the link message's kind
KIND = "billing_record"
#: the listings' filters (query parameters): integer, text
ID_FILTERS = ("advisor_id",)
TEXT_FILTERS = ("account",)
YEN = "JPY"
PaidBy = Literal["prepaid", "card"]
State = Literal["settled", "charged", "failed", "dunning"]
PAID_BY: tuple[PaidBy, ...] = ("prepaid", "card")
STATES: tuple[State, ...] = ("settled", "charged", "failed", "dunning")
_MAX_INT = 2**31 - 1
Choice = TypeVar("Choice", bound=str)
_MAX_LEGS = 32
#: the longest pause between two looks for records past their customer leg's wait
OVERDUE_EVERY_S = 60
log = logging.getLogger("billing.records")


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg of the consultation's call and its carrier cost (None: not rated).
    ``cost_unknown``: the leg's CDR did not come within the wait (:func:`send_overdue`)."""

    call_id: str
    role: str
    carrier_id: str | None
    cost: Money | None
    cost_unknown: bool = False

    def cost_yen(self, fx: FxTable) -> Decimal | None:
        """The cost in yen; None when the leg is not rated or ``fx`` has no rate for its
        currency (the leg then adds nothing to the record's cost)."""
        if self.cost is None:
            return None
        try:
            return fx.convert(self.cost, YEN).amount
        except MissingFxRate:
            return None

    def to_json(self, fx: FxTable) -> dict[str, Any]:
        yen = self.cost_yen(fx)
        known = {"call_id": self.call_id, "role": self.role, "carrier_id": self.carrier_id,
                 "cost": None if self.cost is None else self.cost.to_json(),
                 "cost_yen": None if yen is None else str(yen)}
        return {**known, "cost_unknown": True} if self.cost_unknown else known


@dataclass(frozen=True, slots=True)
class BillingRecord:
    record_id: str
    merchant_id: str
    consultation_id: str
    advisor_id: int | None
    account: str
    paid_by: PaidBy
    state: State
    price_per_minute_yen: int
    talk_s: int
    billed_s: int
    total_yen: int
    tax_yen: int
    legs: tuple[Leg, ...]
    fx: FxTable
    at: datetime

    @property
    def cost_yen(self) -> Decimal:
        return sum((leg.cost_yen(self.fx) or Decimal(0) for leg in self.legs), Decimal(0))

    @property
    def revenue_yen(self) -> int:
        """The charge once it is paid (settled from the balance, charged to the card); 0
        while it failed (the cost is spent all the same)."""
        return self.total_yen if self.state in ("settled", "charged") else 0

    @property
    def margin_yen(self) -> Decimal:
        return self.revenue_yen - self.cost_yen

    def to_json(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "merchant_id": self.merchant_id,
                "consultation_id": self.consultation_id, "advisor_id": self.advisor_id,
                "account": self.account, "paid_by": self.paid_by, "state": self.state,
                "price_per_minute_yen": self.price_per_minute_yen, "talk_s": self.talk_s,
                "billed_s": self.billed_s, "total_yen": self.total_yen,
                "tax_yen": self.tax_yen, "legs": [leg.to_json(self.fx) for leg in self.legs],
                "fx": _fx_json(self.fx), "revenue_yen": str(self.revenue_yen),
                "cost_yen": str(self.cost_yen), "margin_yen": str(self.margin_yen),
                "at": isoformat(self.at)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BillingRecord:
        """The record as sent; ``InvalidField`` naming the first bad field. The derived
        figures (``cost_yen``, ``margin_yen``, each leg's ``cost_yen``) must be what the
        legs and the FX table give."""
        unknown = sorted(set(data) - set(PROPERTIES) - {"kind"})
        if unknown:
            raise InvalidField(unknown[0], "not a field of a billing record")
        total, tax = _int(data, "total_yen"), _int(data, "tax_yen")
        if tax > total:
            raise InvalidField("tax_yen", "more than total_yen")
        advisor = data.get("advisor_id")
        if advisor is not None and (type(advisor) is not int or not 0 < advisor <= _MAX_INT):
            raise InvalidField("advisor_id", "expected a positive integer or null")
        record = cls(
            require_str(data, "record_id", max_len=200),
            require_str(data, "merchant_id", max_len=64),
            require_str(data, "consultation_id", max_len=128), advisor,
            require_str(data, "account", max_len=64),
            _choice(data, "paid_by", PAID_BY), _choice(data, "state", STATES),
            _int(data, "price_per_minute_yen"), _int(data, "talk_s"), _int(data, "billed_s"),
            total, tax, _legs(data.get("legs")), _fx(data.get("fx")),
            require_timestamp(data, "at"))
        expected = record.to_json()
        for name in ("cost_yen", "margin_yen", "revenue_yen", "legs"):
            if data.get(name) != expected[name]:
                raise InvalidField(name, "not what the legs and the FX table give")
        return record


def _int(data: Mapping[str, Any], field: str) -> int:
    value = data.get(field)
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise InvalidField(field, "expected a non-negative integer")
    return value


def _choice(data: Mapping[str, Any], field: str, choices: Sequence[Choice]) -> Choice:
    value = data.get(field)
    for choice in choices:
        if value == choice:
            return choice
    raise InvalidField(field, f"expected one of {', '.join(choices)}")


def _fx_json(fx: FxTable) -> dict[str, Any]:
    return {"base": fx.base, "rates": {c: str(r) for c, r in sorted(fx.rates.items())}}


def _fx(value: Any) -> FxTable:
    if not isinstance(value, dict) or not isinstance(value.get("rates"), dict) \
            or not isinstance(value.get("base"), str) or len(value["rates"]) > 200:
        raise InvalidField("fx", "expected {base, rates}")
    try:
        return FxTable.from_mapping(value["base"], {
            str(k): v if isinstance(v, str) else "x" for k, v in value["rates"].items()})
    except MoneyError as exc:
        raise InvalidField("fx", str(exc)) from None


def _legs(value: Any) -> tuple[Leg, ...]:
    if not isinstance(value, list) or len(value) > _MAX_LEGS:
        raise InvalidField("legs", f"expected an array of at most {_MAX_LEGS} legs")
    legs = []
    for i, item in enumerate(value):
        field = f"legs[{i}]"
        if not isinstance(item, dict):
            raise InvalidField(field, "expected an object")
        carrier = item.get("carrier_id")
        if carrier is not None and (not isinstance(carrier, str) or len(carrier) > 64):
            raise InvalidField(f"{field}.carrier_id", "expected a short string or null")
        cost = item.get("cost")
        if cost is not None and (not isinstance(cost, dict) or set(cost) != {"amount", "currency"}
                                 or not all(isinstance(v, str) for v in cost.values())):
            raise InvalidField(f"{field}.cost", "expected {amount, currency} as strings or null")
        try:
            money = None if cost is None else Money.from_json(cost)
        except MoneyError as exc:
            raise InvalidField(f"{field}.cost", str(exc)) from None
        unknown = item.get("cost_unknown", False)
        if type(unknown) is not bool or unknown and money is not None:
            raise InvalidField(f"{field}.cost_unknown", "expected true without a cost, or "
                                                        "false")
        legs.append(Leg(require_str(item, "call_id", max_len=128),
                        require_str(item, "role", max_len=32), carrier, money, unknown))
    return tuple(legs)


# --- the schema of the record on the wire and in the listing ----------------------------

_DECIMAL = string(40)
_LEG: Schema = {"type": "object", "required": ["call_id", "role", "carrier_id", "cost",
                                               "cost_yen"],
                "properties": {"call_id": string(128), "role": string(32),
                               "carrier_id": nullable(string(64)), "cost": nullable(MONEY),
                               "cost_yen": nullable(_DECIMAL),
                               "cost_unknown": {"type": "boolean"}}}
_COUNT: Schema = {"type": "integer", "minimum": 0, "maximum": _MAX_INT}
PROPERTIES: dict[str, Schema] = {
    "record_id": string(200), "merchant_id": string(64), "consultation_id": string(128),
    "advisor_id": nullable({"type": "integer", "minimum": 1}), "account": string(64),
    "paid_by": {"enum": list(PAID_BY)}, "state": {"enum": list(STATES)},
    "price_per_minute_yen": _COUNT, "talk_s": _COUNT, "billed_s": _COUNT,
    "total_yen": _COUNT, "tax_yen": _COUNT,
    "legs": {"type": "array", "maxItems": _MAX_LEGS, "items": _LEG},
    "fx": {"type": "object", "required": ["base", "rates"],
           "properties": {"base": string(3),
                          "rates": {"type": "object", "additionalProperties": _DECIMAL}}},
    "revenue_yen": _DECIMAL, "cost_yen": _DECIMAL, "margin_yen": _DECIMAL, "at": TIMESTAMP}
#: the link message (``POST /v1/link/events``)
MESSAGE: Schema = {"type": "object", "required": ["kind", *PROPERTIES],
                   "properties": {"kind": {"const": KIND}, **PROPERTIES},
                   "additionalProperties": False}
#: a listed record: the wire form and when this site stored it
LISTED: Schema = {"type": "object", "required": [*PROPERTIES, "recorded_at"],
                  "properties": {**PROPERTIES, "recorded_at": TIMESTAMP},
                  "additionalProperties": False}
#: a record as sent: 2 minutes at 300 yen, the advisor leg rated at 0.0125 USD a minute
EXAMPLE: dict[str, Any] = {
    "record_id": "co-7f3a/settlement-17", "merchant_id": "acme", "consultation_id": "co-7f3a",
    "advisor_id": 12, "account": "member-42", "paid_by": "prepaid", "state": "settled",
    "price_per_minute_yen": 300, "talk_s": 95, "billed_s": 120, "total_yen": 600,
    "tax_yen": 54,
    "legs": [{"call_id": "co-7f3a-r2", "role": "advisor", "carrier_id": "carrier-a",
              "cost": {"amount": "0.0250", "currency": "USD"}, "cost_yen": "3.8750"}],
    "fx": {"base": "JPY", "rates": {"USD": "155"}}, "revenue_yen": "600",
    "cost_yen": "3.8750", "margin_yen": "596.1250", "at": "2026-11-22T01:06:10.000000Z"}


# --- storing and reading -------------------------------------------------------------------

_COLUMNS = ("record_id, merchant_id, consultation_id, advisor_id, account, paid_by, state, "
            "price_per_minute_yen, talk_s, billed_s, total_yen, tax_yen, legs, fx, at")


async def insert_record(conn: asyncpg.Connection, record: BillingRecord) -> int | None:
    """Store ``record`` in the caller's transaction; its row id, or None (nothing written)
    if one of that ``record_id`` is stored."""
    row = record.to_json()
    row_id: int | None = await conn.fetchval(
        f"""INSERT INTO billing_records ({_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
            ON CONFLICT (record_id) DO NOTHING RETURNING id""",
        *(row[c] for c in _COLUMNS.split(", ")[:-1]), record.at)
    return row_id


async def write(conn: asyncpg.Connection, record: BillingRecord) -> bool:
    """Store ``record`` with its consultation's customer leg and enqueue its
    ``billing_record`` message (message id from the ``record_id``) in the caller's
    transaction, or, that leg not rated yet, keep it until it is
    (:func:`customer_leg_rated`); False (nothing written) if stored or kept before."""
    call_id = await record_store.first_of_leg(conn, record.consultation_id)
    if call_id is None or any(leg.call_id == call_id for leg in record.legs):
        return await _send(conn, record)
    await _lock(conn, call_id)
    leg = await _customer_leg(conn, call_id)
    if leg is not None:
        return await _send(conn, _with(record, leg))
    if await conn.fetchval("SELECT 1 FROM billing_records WHERE record_id = $1",
                           record.record_id):
        return False
    kept: bool | None = await conn.fetchval(
        """INSERT INTO billing_records_awaiting (record_id, customer_call_id, record)
           VALUES ($1, $2, $3) ON CONFLICT (record_id) DO NOTHING RETURNING true""",
        record.record_id, call_id, record.to_json())
    return bool(kept)


#: the SQLSTATE of :func:`customer_leg_rated_query` ``alone`` finding records waiting
RECORDS_WAITING = "CBW01"


def customer_leg_rated_query(call_id: str, carrier_id: str, cost_amount: str,
                             cost_currency: str, *, alone: bool = False) -> str:
    """:func:`customer_leg_rated`'s statement part: the leg kept and what waited for it
    taken (migration 0017's ``billing_customer_leg_rated``, under the leg's lock), given
    the parameters (``$n``) of the leg's call id, carrier and cost: alone, or carried by
    the statement storing the leg's CDR; its value goes to :func:`customer_leg_waited`.
    ``alone``: the statement commits on its own, so a record waiting for the leg fails it
    with SQLSTATE :data:`RECORDS_WAITING` (nothing written), to be run in a transaction
    that sends them."""
    return (f"billing_customer_leg_rated({call_id}, {carrier_id}, {cost_amount}::numeric, "
            f"{cost_currency}, {'true' if alone else 'false'})")


async def customer_leg_rated(conn: asyncpg.Connection, leg: Leg) -> int:
    """A call-back's customer leg, its CDR stored (in that transaction): kept for the
    records of its consultation, and those that waited for it written now, with it; how
    many billing records (the consultation records that waited for it go too)."""
    waiting = await conn.fetchval(
        f"SELECT {customer_leg_rated_query('$1', '$2', '$3', '$4')}", leg.call_id,
        leg.carrier_id, None if leg.cost is None else leg.cost.amount,
        None if leg.cost is None else leg.cost.currency)
    return await customer_leg_waited(conn, leg, waiting)


async def customer_leg_waited(conn: asyncpg.Connection, leg: Leg,
                              waiting: Mapping[str, Any]) -> int:
    """Send, in the transaction that took them, the billing and consultation records that
    waited for ``leg`` (``waiting``: :func:`customer_leg_rated_query`'s value), with it;
    how many billing records."""
    for record in waiting["records"]:
        await _send(conn, _with(BillingRecord.from_json(record), leg))
    await record_store.customer_leg_waited(
        conn, LegCost(leg.call_id, "customer", leg.carrier_id, leg.cost),
        [(c["consultation_id"], c["path"]) for c in waiting["consultations"]])
    return len(waiting["records"])


async def customer_leg(conn: asyncpg.Connection, call_id: str) -> LegCost | None:
    """The call-back's customer leg as rated, taking its lock in the caller's transaction
    (None: its CDR is not stored yet): what a consultation record's save asks
    (:class:`advisors.record_store.ConsultationRecords`)."""
    await _lock(conn, call_id)
    leg = await _customer_leg(conn, call_id)
    return None if leg is None else LegCost(call_id, "customer", leg.carrier_id, leg.cost)


async def send_overdue(pool: asyncpg.Pool, wait_s: int, *, limit: int = 100) -> int:
    """Send the billing and consultation records that waited more than ``wait_s`` for
    their customer leg's CDR, that leg listed with ``cost_unknown``; how many. Each under
    the leg's lock, in its own transaction: one whose CDR came meanwhile was sent with it
    and is passed over, and a CDR stored after this sends nothing again."""
    rows = await pool.fetch(
        """SELECT record_id, customer_call_id FROM billing_records_awaiting
           WHERE created_at <= now() - make_interval(secs => $1)
           ORDER BY created_at, record_id LIMIT $2""", wait_s, limit)
    waiting: list[tuple[str, Callable[[asyncpg.Connection], Awaitable[bool]]]] = [
        (r["customer_call_id"], partial(_send_unknown, record_id=r["record_id"]))
        for r in rows]
    waiting += [(call_id, partial(record_store.send_without_customer_leg,
                                  consultation_id=consultation_id))
                for consultation_id, call_id in await record_store.overdue(pool, wait_s,
                                                                           limit)]
    sent = 0
    for call_id, send in waiting:
        async with pool.acquire() as conn, conn.transaction():
            await _lock(conn, call_id)
            sent += await send(conn)
    return sent


async def _send_unknown(conn: asyncpg.Connection, *, record_id: str) -> bool:
    kept = await conn.fetchrow("DELETE FROM billing_records_awaiting WHERE record_id = $1 "
                               "RETURNING record, customer_call_id", record_id)
    if kept is None:
        return False
    unknown = Leg(kept["customer_call_id"], "customer", None, None, cost_unknown=True)
    return await _send(conn, _with(BillingRecord.from_json(kept["record"]), unknown))


async def send_overdue_forever(pool: asyncpg.Pool, wait_s: int) -> None:
    """:func:`send_overdue` every ``OVERDUE_EVERY_S`` (or ``wait_s``, when shorter); the
    database away: logged, tried again next time."""
    while True:
        await asyncio.sleep(min(OVERDUE_EVERY_S, wait_s))
        try:
            if sent := await send_overdue(pool, wait_s):
                log.warning("%d billing or consultation record(s) sent without their "
                            "customer leg's cost (no CDR within %d s)", sent, wait_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("billing records past their customer leg's wait not sent: %s", exc)


async def _lock(conn: asyncpg.Connection, call_id: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       "billing-customer-leg:" + call_id)


async def _customer_leg(conn: asyncpg.Connection, call_id: str) -> Leg | None:
    row = await conn.fetchrow("SELECT * FROM billing_customer_legs WHERE call_id = $1",
                              call_id)
    if row is None:
        return None
    cost = (None if row["cost_amount"] is None
            else Money(row["cost_amount"], row["cost_currency"]))
    return Leg(call_id, "customer", row["carrier_id"], cost)


def _with(record: BillingRecord, leg: Leg) -> BillingRecord:
    """``record`` counting ``leg`` (once: a leg it has is not added again)."""
    if any(known.call_id == leg.call_id for known in record.legs):
        return record
    return replace(record, legs=(*record.legs, leg))


async def _send(conn: asyncpg.Connection, record: BillingRecord) -> bool:
    if await insert_record(conn, record) is None:
        return False
    await Outbox.enqueue(conn, kind=KIND, path=EVENTS_PATH,
                         payload={"kind": KIND, **record.to_json()},
                         message_id=fact_message_id(KIND, record.record_id),
                         merchant_id=record.merchant_id)
    return True


async def call_legs(conn: asyncpg.Connection, consultation_id: str
                    ) -> tuple[int | None, tuple[Leg, ...]]:
    """The consultation's advisor and its legs' costs, as the callback site stored its
    record (no record yet: no advisor, no legs)."""
    advisor = await conn.fetchval(
        "SELECT advisor_id FROM consultations WHERE consultation_id = $1", consultation_id)
    rows = await conn.fetch(
        """SELECT call_id, role, carrier_id, cost_amount, cost_currency, cost_unknown
           FROM consultation_leg_costs WHERE consultation_id = $1 ORDER BY position""",
        consultation_id)
    return advisor, tuple(
        Leg(r["call_id"], r["role"], r["carrier_id"],
            None if r["cost_amount"] is None else Money(r["cost_amount"], r["cost_currency"]),
            r["cost_unknown"])
        for r in rows)


def _record(row: asyncpg.Record) -> BillingRecord:
    return BillingRecord(
        row["record_id"], row["merchant_id"], row["consultation_id"], row["advisor_id"],
        row["account"], row["paid_by"], row["state"], row["price_per_minute_yen"],
        row["talk_s"], row["billed_s"], row["total_yen"], row["tax_yen"], _legs(row["legs"]),
        _fx(row["fx"]), row["at"])


def _of(row: asyncpg.Record) -> dict[str, Any]:
    """A stored row as the APIs give it: the record's wire form and ``recorded_at``."""
    return {**_record(row).to_json(), "recorded_at": isoformat(row["recorded_at"])}


async def between(db: asyncpg.Pool | asyncpg.Connection, merchant_id: str, start: datetime,
                  end: datetime) -> list[BillingRecord]:
    """A merchant's billing records with ``at`` in [start, end), oldest first."""
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM billing_records
            WHERE merchant_id = $1 AND at >= $2 AND at < $3 ORDER BY at, id""",
        merchant_id, start, end)
    return [_record(r) for r in rows]


async def list_records(db: asyncpg.Pool | asyncpg.Connection, q: ListQuery) -> Page:
    """One page of a merchant's billing records, oldest stored first; ``since``/``until``
    on ``at``, ``advisor_id``, ``account``."""
    rows = await db.fetch(
        f"""SELECT id, recorded_at, {_COLUMNS} FROM billing_records
            WHERE merchant_id = $1 AND id > $2
              AND ($3::timestamptz IS NULL OR at >= $3)
              AND ($4::timestamptz IS NULL OR at < $4)
              AND ($6::bigint IS NULL OR advisor_id = $6)
              AND ($7::text IS NULL OR account = $7)
            ORDER BY id LIMIT $5""",
        q.merchant_id, q.after_id, q.since, q.until, q.limit + 1, q.filters.get("advisor_id"),
        q.text.get("account"))
    return page_of(rows, q.limit, _of)


async def consultation_records(db: asyncpg.Pool | asyncpg.Connection, merchant_id: str,
                               consultation_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"""SELECT id, recorded_at, {_COLUMNS} FROM billing_records
            WHERE merchant_id = $1 AND consultation_id = $2 ORDER BY id""",
        merchant_id, consultation_id)
    return [_of(r) for r in rows]
