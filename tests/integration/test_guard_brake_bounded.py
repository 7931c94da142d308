"""The anomaly brake's count in the database, bounded at threshold + 1 (``guard_brake_count``,
migration 1030), on the real PostgreSQL: a burst of new numbers below, at and above the
threshold decides as the full count does, the bounded count stops reading once it has
found its limit, and with the brake's window NULL (the brake off) nothing is counted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from callback_server.guard import brake
from callback_server.guard import store as sql
from callback_server.testing import merchant
from tests.integration import callback_db

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
WINDOW_S = 600

pool, clean = callback_db.fixtures([merchant("acme")])


async def burst(conn: asyncpg.Connection, numbers: int, rounds_each: int = 1,
                first: int = 0) -> None:
    """``numbers`` new numbers, each with ``rounds_each`` rounds that rang unconfirmed
    within the window, and noise the brake ignores (known, confirmed, too old)."""
    rows = []
    for i in range(first, first + numbers):
        for a in range(rounds_each):
            rows.append((f"cb-{i}", a + 1, f"+8190{i:08d}", False, True, False,
                         NOW - timedelta(seconds=1 + (i * rounds_each + a) % 500)))
        rows.append((f"known-{i}", 1, f"+8180{i:08d}", True, True, False, NOW))
        rows.append((f"conf-{i}", 1, f"+8170{i:08d}", False, True, True, NOW))
        rows.append((f"old-{i}", 1, f"+8160{i:08d}", False, True, False,
                     NOW - timedelta(seconds=WINDOW_S + 1)))
    await conn.executemany(
        "INSERT INTO guard_rounds (callback_id, attempt_no, number, merchant_id, known, rang,"
        " confirmed, ended_at) VALUES ($1, $2, $3, 'acme', $4, $5, $6, $7)", rows)


async def counts(conn: asyncpg.Connection, s: brake.BrakeSettings) -> tuple[int, int, int]:
    """(full count, bounded count, the count guard_number_facts gives the intake)."""
    since = sql.brake_since(NOW, s.window_s)
    full = await sql.unconfirmed_new_numbers(conn, NOW, s.window_s, None)
    bounded = await sql.unconfirmed_new_numbers(conn, NOW, s.window_s, s.limit)
    facts = await conn.fetch("SELECT * FROM guard_number_facts($1::text[], $2, $3, $4)",
                             ["+819011110000", "+819011110001"], NOW, since, s.limit)
    assert len({r["brake"] for r in facts}) == 1
    return full, bounded, int(facts[0]["brake"])


@pytest.mark.parametrize("numbers", [0, 1, 19, 20, 21, 22, 60])
async def test_a_burst_below_at_and_above_the_threshold(clean: asyncpg.Pool,
                                                        numbers: int) -> None:
    s = brake.BrakeSettings(threshold=20, window_s=WINDOW_S)
    async with clean.acquire() as conn:
        await burst(conn, numbers, rounds_each=2)
        full, bounded, in_facts = await counts(conn, s)
    assert full == numbers
    assert bounded == in_facts == min(numbers, s.limit)
    assert brake.engaged(bounded, s) == brake.engaged(full, s) == (numbers > 20)


async def test_threshold_zero_engages_on_the_first_new_number(clean: asyncpg.Pool) -> None:
    s = brake.BrakeSettings(threshold=0, window_s=WINDOW_S)
    async with clean.acquire() as conn:
        assert await counts(conn, s) == (0, 0, 0)
        await burst(conn, 3)
        assert await counts(conn, s) == (3, 1, 1)
    assert brake.engaged(1, s)


async def test_the_bounded_count_stops_reading_at_its_limit(clean: asyncpg.Pool) -> None:
    """2,000 new numbers in the window: the bounded count reads about its limit's rows of
    guard_rounds (newest first on its partial index), the full count every one of them."""
    s = brake.BrakeSettings(threshold=20, window_s=WINDOW_S)
    async with clean.acquire() as conn:
        await burst(conn, 2000)
        await conn.execute("ANALYZE guard_rounds")
        plan = await conn.fetchval(
            """EXPLAIN (ANALYZE, FORMAT JSON)
               SELECT g.number FROM guard_rounds g
               WHERE g.rang AND NOT g.confirmed AND NOT g.known AND g.ended_at > $1
               ORDER BY g.ended_at DESC LIMIT 25""", sql.brake_since(NOW, WINDOW_S))
        read = await rows_read(conn, sql.unconfirmed_new_numbers(conn, NOW, WINDOW_S,
                                                                  s.limit))
        read_all = await rows_read(conn, sql.unconfirmed_new_numbers(conn, NOW, WINDOW_S,
                                                                     None))
    node = plan_of(plan)
    assert node["Node Type"] == "Index Scan" and node["Index Name"] == \
        "guard_rounds_new_unconfirmed" and node["Scan Direction"] == "Backward"
    assert read <= 100, read             # a cursor's prefetch past the 21st number
    assert read_all >= 2000, read_all


def plan_of(plan: object) -> dict[str, object]:
    node = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    while node["Node Type"] == "Limit":
        node = node["Plans"][0]
    return dict(node)


async def rows_read(conn: asyncpg.Connection, counting: object) -> int:
    """guard_rounds rows the statement ``counting`` read (tuples fetched through indexes
    plus read by sequential scans), from the session's own statistics."""
    query = """SELECT coalesce(idx_tup_fetch, 0) + seq_tup_read FROM pg_stat_xact_user_tables
               WHERE relname = 'guard_rounds'"""
    async with conn.transaction():
        before = await conn.fetchval(query)
        await counting                                   # type: ignore[misc]
        after = await conn.fetchval(query)
    return int(after - before)


async def test_with_the_brake_off_nothing_is_counted(clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        await burst(conn, 30)
        facts = await conn.fetch("SELECT * FROM guard_number_facts($1::text[], $2, NULL, 21)",
                                 ["+819011110000"], NOW)
        assert await conn.fetchval("SELECT guard_brake_count(NULL, 21)") == 0
    assert [r["brake"] for r in facts] == [0]
