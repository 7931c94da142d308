"""What a piece of code asks of PostgreSQL, counted on a one-connection pool: the
statements (round trips) and the transactions as ``pg_stat_database`` counts them (a
``BEGIN`` ... ``COMMIT``, or one statement outside a transaction; the pool's reset when a
connection is given back is one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from shared.db import create_pool


@dataclass
class Statements:
    queries: list[str] = field(default_factory=list)

    @property
    def transactions(self) -> int:
        count, inside = 0, False
        for query in self.queries:
            word = query.lstrip().split(None, 1)[0].rstrip(";").upper() if query.strip() else ""
            if word in ("BEGIN", "START"):
                count, inside = count + 1, True
            elif word in ("COMMIT", "ROLLBACK", "END") and "SAVEPOINT" not in query.upper():
                inside = False
            elif not inside:
                count += 1
        return count

    def clear(self) -> None:
        self.queries.clear()

    async def heard(self) -> None:
        """Once the statements sent so far are in: asyncpg calls a query logger at the
        event loop's next turn (a pool connection's release no longer takes one)."""
        await asyncio.sleep(0)

    def __str__(self) -> str:
        return "\n".join(" ".join(q.split())[:160] for q in self.queries)


@asynccontextmanager
async def counted_pool(url: str) -> AsyncIterator[tuple[asyncpg.Pool, Statements]]:
    """A pool of one connection whose every statement is recorded."""
    pool = await create_pool(url, min_size=1, max_size=1)
    statements = Statements()
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda q: statements.queries.append(q.query))
        statements.clear()
        yield pool, statements
    finally:
        await pool.close()
