"""PostgreSQL side of rate decks: tariffs, deck versions, rows, activation.

A deck is in force for a tariff from its ``effective_from`` until the next
scheduled deck's. Activation is one UPDATE of one ``rates_decks`` row (the rows
were written before, in the import transaction), followed by
``NOTIFY routing_rates_activated``: readers see the old deck or the new one,
never half of one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from routing_rates.carriers import Carrier
from routing_rates.index import Row
from routing_rates.tariff import Terms
from shared.db import Connection, MigrationSet, package_migrations

log = logging.getLogger("rates.store")

CHANNEL = "routing_rates_activated"


def migrations() -> MigrationSet:
    return package_migrations("routing_rates", __file__)


class DeckStateError(RuntimeError):
    """A deck cannot move to the requested state (unknown id, wrong state ...)."""


@dataclass(frozen=True, slots=True)
class DeckInfo:
    id: int
    tariff_id: str
    state: str                      # staged | scheduled | cancelled
    effective_from: datetime | None
    decimals: int
    source: str
    sha256: str
    profile: str
    row_count: int
    duplicates: int
    imported_at: datetime
    origin: str = "import"               # import (a file on this site) | link (distributed)
    origin_version: int | None = None    # link: the deck's id on the callback site
    content_sha256: str | None = None    # the canonical rows' hash (routing_rates.distribute)

    def status(self, now: datetime, in_force: int | None) -> str:
        """staged, cancelled, pending (future), active (in force now) or superseded."""
        if self.state != "scheduled":
            return self.state
        assert self.effective_from is not None
        if self.effective_from > now:
            return "pending"
        return "active" if in_force == self.id else "superseded"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "tariff_id": self.tariff_id, "state": self.state,
                "effective_from": self.effective_from.isoformat() if self.effective_from
                else None, "decimals": self.decimals, "source": self.source,
                "sha256": self.sha256, "profile": self.profile, "rows": self.row_count,
                "imported_at": self.imported_at.isoformat(), "origin": self.origin,
                "origin_version": self.origin_version, "content_sha256": self.content_sha256}


_DECK_COLS = ("id, tariff_id, state, effective_from, decimals, source, sha256, profile, "
              "row_count, duplicates, imported_at, origin, origin_version, content_sha256")


def _deck(r: Any) -> DeckInfo:
    return DeckInfo(r["id"], r["tariff_id"], r["state"], r["effective_from"], r["decimals"],
                    r["source"], r["sha256"], r["profile"], r["row_count"], r["duplicates"],
                    r["imported_at"], r["origin"], r["origin_version"], r["content_sha256"])


def partition(deck_id: int) -> str:
    """The name of a deck's own partition of ``rates_rows``."""
    return f"rates_rows_d{deck_id}"


async def create_partition(conn: Connection, deck_id: int) -> str:
    """A fresh, index-less table for a deck's rows, to COPY into (then
    :func:`attach_partition`, in the same transaction)."""
    part = partition(deck_id)
    await conn.execute(
        f"CREATE TABLE {part} (LIKE rates_rows INCLUDING DEFAULTS INCLUDING "
        f"CONSTRAINTS, CHECK (deck_id = {deck_id}))")
    await conn.execute(f"ALTER TABLE {part} ALTER deck_id SET DEFAULT {deck_id}")
    return part


def key_index(table: str) -> str:
    """The statement building a deck partition's unique key index (also the longest-prefix
    lookup index)."""
    return (f"CREATE UNIQUE INDEX ON {table} (deck_id, prefix, origins, period, valid_from) "
            "NULLS NOT DISTINCT")


async def attach_partition(conn: Connection, deck_id: int, rows: int, duplicates: int) -> None:
    """Attach a deck's filled and indexed partition, with planner statistics, and record
    its row count."""
    part = partition(deck_id)
    await conn.execute(f"ALTER TABLE rates_rows ATTACH PARTITION {part} "
                       f"FOR VALUES IN ({deck_id})")
    await conn.execute(f"ANALYZE {part}")  # planner statistics for the new rows
    await conn.execute("UPDATE rates_decks SET row_count = $2, duplicates = $3 "
                       "WHERE id = $1", deck_id, rows, duplicates)


async def upsert_tariffs(conn: Connection, carriers: Sequence[Carrier]) -> None:
    await conn.executemany(
        "INSERT INTO rates_tariffs (id, kind, config) VALUES ($1, $2, $3::text::jsonb) "
        "ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, config = EXCLUDED.config, "
        "updated_at = now()",
        [(c.id, c.kind, json.dumps(c.to_json())) for c in carriers])
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                       json.dumps({"tariffs": [c.id for c in carriers]}))


async def load_tariffs(conn: Connection) -> list[Carrier]:
    rows = await conn.fetch("SELECT config::text AS config FROM rates_tariffs ORDER BY id")
    return [Carrier.from_json(json.loads(r["config"])) for r in rows]


async def get_deck(conn: Connection, deck_id: int) -> DeckInfo:
    row = await conn.fetchrow(f"SELECT {_DECK_COLS} FROM rates_decks WHERE id = $1", deck_id)
    if row is None:
        raise DeckStateError(f"no deck {deck_id}")
    return _deck(row)


async def list_decks(conn: Connection, tariff_id: str | None = None) -> list[DeckInfo]:
    rows = await conn.fetch(
        f"SELECT {_DECK_COLS} FROM rates_decks WHERE $1::text IS NULL OR tariff_id = $1 "
        "ORDER BY tariff_id, effective_from NULLS LAST, id", tariff_id)
    return [_deck(r) for r in rows]


async def decks_in_force(conn: Connection, at: datetime) -> dict[str, DeckInfo]:
    """Per tariff, the deck in force at ``at``."""
    rows = await conn.fetch(
        f"SELECT DISTINCT ON (tariff_id) {_DECK_COLS} FROM rates_decks "
        "WHERE state = 'scheduled' AND effective_from <= $1 "
        "ORDER BY tariff_id, effective_from DESC", at)
    return {r["tariff_id"]: _deck(r) for r in rows}


async def next_change(conn: Connection, after: datetime) -> datetime | None:
    """When the next future-dated deck comes into force, if any."""
    value: datetime | None = await conn.fetchval(
        "SELECT min(effective_from) FROM rates_decks "
        "WHERE state = 'scheduled' AND effective_from > $1", after)
    return value


async def history(conn: Connection) -> dict[str, list[tuple[datetime, int]]]:
    """Per tariff, every scheduled deck as (effective_from, deck_id), oldest first."""
    rows = await conn.fetch(
        "SELECT tariff_id, effective_from, id FROM rates_decks WHERE state = 'scheduled' "
        "ORDER BY tariff_id, effective_from")
    out: dict[str, list[tuple[datetime, int]]] = {}
    for r in rows:
        out.setdefault(r["tariff_id"], []).append((r["effective_from"], r["id"]))
    return out


async def schedule(conn: Connection, deck_id: int, at: datetime | None = None) -> DeckInfo:
    """Put a staged (or pending) deck in force from ``at`` (default: now). Atomic."""
    when = at or datetime.now(UTC)
    async with conn.transaction():
        deck = await get_deck(conn, deck_id)
        if deck.state == "cancelled":
            raise DeckStateError(f"deck {deck_id} was cancelled")
        clash = await conn.fetchval(
            "SELECT id FROM rates_decks WHERE tariff_id = $1 AND state = 'scheduled' "
            "AND effective_from = $2 AND id <> $3", deck.tariff_id, when, deck_id)
        if clash is not None:
            raise DeckStateError(f"deck {clash} of {deck.tariff_id} already starts at {when}")
        await conn.execute(
            "UPDATE rates_decks SET state = 'scheduled', effective_from = $2, "
            "scheduled_at = now() WHERE id = $1", deck_id, when)
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps(
            {"deck_id": deck_id, "tariff_id": deck.tariff_id,
             "effective_from": when.isoformat()}))
    log.info("deck %s of %s in force from %s", deck_id, deck.tariff_id, when.isoformat())
    return await get_deck(conn, deck_id)


async def cancel(conn: Connection, deck_id: int) -> DeckInfo:
    """Withdraw a staged or pending deck. Decks that were in force stay (history)."""
    async with conn.transaction():
        deck = await get_deck(conn, deck_id)
        if deck.state == "scheduled" and deck.effective_from is not None \
                and deck.effective_from <= datetime.now(UTC):
            raise DeckStateError(f"deck {deck_id} has been in force; import a new one instead")
        await conn.execute("UPDATE rates_decks SET state = 'cancelled' WHERE id = $1", deck_id)
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                           json.dumps({"deck_id": deck_id, "tariff_id": deck.tariff_id}))
    return await get_deck(conn, deck_id)


class TermsPool:
    """Interns :class:`Terms` so the many rows sharing a rate share one object."""

    def __init__(self) -> None:
        self._pool: dict[tuple[Any, ...], Terms] = {}

    def get(self, rate: Decimal, unit_s: int, initial_s: int, increment_s: int,
            connect_fee: Decimal, min_cost: Decimal, currency: str, decimals: int) -> Terms:
        key = (rate, unit_s, initial_s, increment_s, connect_fee, min_cost, currency, decimals)
        terms = self._pool.get(key)
        if terms is None:
            terms = self._pool[key] = Terms(rate, unit_s, initial_s, increment_s, connect_fee,
                                            min_cost, currency, decimals)
        return terms


async def load_rows(conn: Connection, deck: DeckInfo, pool: TermsPool | None = None,
                    ) -> list[Row]:
    terms = pool or TermsPool()
    records = await conn.fetch(
        "SELECT prefix, destination, rate, unit_s, initial_s, increment_s, connect_fee, "
        "min_cost, currency, origins, period, valid_from, valid_to FROM rates_rows "
        "WHERE deck_id = $1", deck.id)
    dests: dict[str, str] = {}
    out: list[Row] = []
    for r in records:
        dest = r["destination"]
        dest = dests.setdefault(dest, dest)
        t = terms.get(r["rate"], r["unit_s"], r["initial_s"], r["increment_s"],
                      r["connect_fee"], r["min_cost"], r["currency"], deck.decimals)
        origins = r["origins"]
        out.append(Row(r["prefix"], dest, t, tuple(origins.split()) if origins else (),
                       r["period"], r["valid_from"], r["valid_to"]))
    return out


async def save_ratings(conn: Connection, rated: Sequence[Any]) -> int:
    """Upsert rated CDR legs (``routing_rates.cdr.RatedCdr``) into rates_cdr_ratings."""
    records = []
    for r in rated:
        c = r.cdr
        records.append((
            c.call_id, c.leg, c.merchant_id, c.callback_id, r.tariff_id, r.deck_id, r.prefix,
            str(c.destination), c.started_at, c.duration_s, r.billed_s, r.cost.amount,
            r.cost.currency, r.direct_tariff, r.direct_deck_id,
            r.direct_cost.amount if r.direct_cost else None,
            r.direct_cost.currency if r.direct_cost else None, r.base_currency, r.cost_base,
            r.direct_base, r.problem))
    await conn.executemany(
        "INSERT INTO rates_cdr_ratings (call_id, leg, merchant_id, callback_id, tariff_id, "
        "deck_id, prefix, destination, started_at, duration_s, billed_s, cost, cost_currency, "
        "direct_tariff_id, direct_deck_id, direct_cost, direct_currency, base_currency, "
        "cost_base, direct_base, problem) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
        "$11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) "
        "ON CONFLICT (call_id, leg) DO UPDATE SET tariff_id = EXCLUDED.tariff_id, "
        "deck_id = EXCLUDED.deck_id, prefix = EXCLUDED.prefix, billed_s = EXCLUDED.billed_s, "
        "cost = EXCLUDED.cost, cost_currency = EXCLUDED.cost_currency, "
        "direct_tariff_id = EXCLUDED.direct_tariff_id, "
        "direct_deck_id = EXCLUDED.direct_deck_id, direct_cost = EXCLUDED.direct_cost, "
        "direct_currency = EXCLUDED.direct_currency, base_currency = EXCLUDED.base_currency, "
        "cost_base = EXCLUDED.cost_base, direct_base = EXCLUDED.direct_base, "
        "problem = EXCLUDED.problem, rated_at = now()", records)
    return len(records)


async def rows_by_deck(conn: Connection, deck_ids: Sequence[int]) -> dict[int, list[Row]]:
    pool = TermsPool()
    out: dict[int, list[Row]] = {}
    for deck_id in deck_ids:
        out[deck_id] = await load_rows(conn, await get_deck(conn, deck_id), pool)
    return out
