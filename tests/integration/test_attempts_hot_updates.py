"""Storage settings for fewer WAL records a call-back (callback migration 1050, link migration
0006), on the real PostgreSQL: callback_attempts and outbox keep room on their pages, the
two indexes no query read are gone (the constraints stay), a leg's updates are HOT, and the
one query that filters on what they indexed, the guard's cap snapshot, read neither of
them when they were there and answers the same without them."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from callback_server.guard import store as sql
from callback_server.store.leg_end import write_leg_result
from callback_server.testing import merchant
from tests.integration import callback_db

pytestmark = pytest.mark.integration

pool, clean = callback_db.fixtures([merchant("acme")])

#: the two indexes 1050 drops, as 0100 created them
DROPPED = {
    "callback_attempts_live": "CREATE INDEX callback_attempts_live ON callback_attempts "
                              "(carrier_id) WHERE leg = 'customer' AND status IN "
                              "('dialing', 'originated', 'answered')",
    "callback_attempts_recent": "CREATE INDEX callback_attempts_recent ON callback_attempts "
                                "(created_at)",
}


async def fillfactor(conn: asyncpg.Connection, table: str) -> str | None:
    options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE oid = $1::regclass",
                                  table) or []
    return next((o.split("=", 1)[1] for o in options if o.startswith("fillfactor=")), None)


async def add_legs(conn: asyncpg.Connection, requests: int, legs_each: int) -> None:
    await conn.execute(
        """INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller,
               received_at, message_id, max_attempts, next_attempt_at)
           SELECT 'cb-' || i, 'edge-' || i, 'acme', '+8190' || lpad(i::text, 8, '0'),
                  now(), 'm-' || i, 3, now()
           FROM generate_series(1, $1) i""", requests)
    await conn.execute(
        """INSERT INTO callback_attempts (channel_id, callback_id, merchant_id, attempt_no,
               leg_seq, leg, carrier_id, endpoint, worker, status, created_at)
           SELECT 'ch-' || i || '-' || s, 'cb-' || i, 'acme', 1, s,
                  (ARRAY['customer', 'transfer', 'advisor', 'operator'])[1 + (i + s) % 4],
                  'carrier-' || (i % 3), 'PJSIP/x', 'w1',
                  (ARRAY['dialing', 'originated', 'answered', 'ended', 'failed'])[1 + i % 5],
                  now() - (i % 4) * interval '1 second'
           FROM generate_series(1, $1) i, generate_series(1, $2) s""", requests, legs_each)


async def test_storage_settings_and_indexes_in_place(clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        assert await fillfactor(conn, "callback_attempts") == "70"
        assert await fillfactor(conn, "outbox") == "70"
        indexes = {r["indexname"] for r in await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'callback_attempts'")}
        assert indexes == {"callback_attempts_pkey",
                           "callback_attempts_callback_id_leg_seq_key"}


async def updates(conn: asyncpg.Connection) -> tuple[int, int]:
    """callback_attempts' updates and HOT updates so far (this session's flushed first)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")  # flushed once idle
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                              "WHERE relid = 'callback_attempts'::regclass")
    return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])


async def test_a_legs_updates_are_hot(clean: asyncpg.Pool) -> None:
    """Each leg's results in their own transactions, as the worker writes them."""
    async with clean.acquire() as conn:
        await add_legs(conn, 20, 1)
        updated, hot = await updates(conn)
        for status, cause in (("originated", None), ("answered", None), ("ended", 16)):
            for i in range(1, 21):
                await write_leg_result(conn, f"ch-{i}-1", status, cause)
        after = await updates(conn)
    assert after == (updated + 60, hot + 60)  # none wrote an index entry


async def test_cap_snapshot_read_neither_index_and_answers_the_same(
        clean: asyncpg.Pool) -> None:
    day = datetime.now(UTC).date()
    async with clean.acquire() as conn:
        await add_legs(conn, 1500, 2)
        async with conn.transaction():
            for statement in DROPPED.values():
                await conn.execute(statement)
            await conn.execute("ANALYZE callback_attempts")
            with_them = await sql.cap_snapshot(conn, day)
            scans = {r["indexrelname"]: r["idx_scan"] for r in await conn.fetch(
                "SELECT indexrelname, pg_stat_get_xact_numscans(indexrelid) AS idx_scan "
                "FROM pg_stat_user_indexes WHERE indexrelname = ANY($1::text[])",
                list(DROPPED))}
            assert scans == dict.fromkeys(DROPPED, 0)
            await conn.execute(f"DROP INDEX {', '.join(DROPPED)}")
            without = await sql.cap_snapshot(conn, day)
    assert without == with_them
    assert with_them.channels["global"] > 0 and with_them.cps["global"] > 0
