"""What a dump of a database would show: every table whose rows, every column of them in
their text form (``row::text``: text, numbers, jsonb, bytea as hex), hold a string."""

from __future__ import annotations

import asyncpg


async def tables_holding(pool: asyncpg.Pool, needle: str) -> dict[str, int]:
    """Each table (of any schema but the catalog's) with rows holding ``needle``, or its
    UTF-8 bytes in a bytea column, and how many rows."""
    tables = await pool.fetch(
        "SELECT format('%I.%I', table_schema, table_name) AS name "
        "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")
    as_hex = needle.encode().hex()
    found: dict[str, int] = {}
    for table in tables:
        rows = await pool.fetchval(
            f"SELECT count(*) FROM {table['name']} t "
            "WHERE strpos(t::text, $1) > 0 OR strpos(t::text, $2) > 0", needle, as_hex)
        if rows:
            found[table["name"]] = rows
    return found
