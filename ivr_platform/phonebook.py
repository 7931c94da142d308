"""A merchant's phonebook: the company and name a call notification shows for a caller's
number (table ``phonebook``, migration ``ivr_platform/0003``). The advisors' customers
(``advisors``) are the consultation lines' accounts and have no company; the phonebook
is the notifications' own, filled by the merchant over ``/v1/phonebook``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.phone import E164

MAX_TEXT = 200


@dataclass(frozen=True, slots=True)
class Entry:
    number: E164
    company: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"number": str(self.number), "company": self.company, "name": self.name}


class Phonebook:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def get(self, merchant_id: str, number: E164) -> Entry | None:
        row = await self.pool.fetchrow(
            "SELECT number, company, name FROM phonebook WHERE merchant_id = $1 "
            "AND number = $2", merchant_id, str(number))
        return None if row is None else Entry(E164.parse(row["number"]), row["company"],
                                              row["name"])

    async def put(self, merchant_id: str, entry: Entry) -> bool:
        """Add or replace the number's entry; True if it is new."""
        if not (entry.company or entry.name):
            raise ValueError("an entry has a company, a name or both")
        if max(len(entry.company), len(entry.name)) > MAX_TEXT:
            raise ValueError(f"company and name have at most {MAX_TEXT} characters")
        inserted: bool = await self.pool.fetchval(
            "INSERT INTO phonebook (merchant_id, number, company, name) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (merchant_id, number) DO UPDATE "
            "SET company = EXCLUDED.company, name = EXCLUDED.name RETURNING xmax = 0",
            merchant_id, str(entry.number), entry.company, entry.name)
        return inserted

    async def delete(self, merchant_id: str, number: E164) -> bool:
        done = await self.pool.fetchval(
            "DELETE FROM phonebook WHERE merchant_id = $1 AND number = $2 RETURNING true",
            merchant_id, str(number))
        return bool(done)

    async def list(self, merchant_id: str, *, limit: int = 100, offset: int = 0
                   ) -> list[Entry]:
        rows = await self.pool.fetch(
            "SELECT number, company, name FROM phonebook WHERE merchant_id = $1 "
            "ORDER BY number LIMIT $2 OFFSET $3", merchant_id, limit, offset)
        return [Entry(E164.parse(r["number"]), r["company"], r["name"]) for r in rows]
