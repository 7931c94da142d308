"""The finish's guard record (``guard_round_ended``, migration 1100) against the function it
replaced (1030's, created here under another name from its migration's own text), on the
real PostgreSQL: for every round of a seeded random history on a few numbers (lists,
confirmations, locks, earlier rounds in and out of both windows, repeats, the brake on and
off) the same row and the same writes."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import callback_server
from callback_server.testing import merchant
from tests.integration import callback_db

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)
NUMBERS = [f"+8190555500{i:02d}" for i in range(4)]
REFERENCE = "guard_round_ended_1030"

pool, clean = callback_db.fixtures([merchant("acme")])


def reference_sql() -> str:
    """1030's ``guard_round_ended`` as :data:`REFERENCE`, from the migration's text."""
    text = (Path(callback_server.__file__).parent / "migrations"
            / "1030_guard_brake_bounded.sql").read_text()
    body = re.search(r"CREATE FUNCTION guard_round_ended\(.*?\nEND \$\$;", text, re.S)
    assert body is not None
    return body.group(0).replace("FUNCTION guard_round_ended(", f"FUNCTION {REFERENCE}(", 1)


async def state(conn: asyncpg.Connection, number: str) -> tuple[Any, ...]:
    rounds = await conn.fetch(
        """SELECT callback_id, attempt_no, merchant_id, known, rang, confirmed, ended_at
           FROM guard_rounds WHERE number = $1 ORDER BY callback_id, attempt_no""", number)
    row = await conn.fetchrow(
        """SELECT first_seen_at, confirmations, confirmed_at, locked_until, locked_at, locks
           FROM guard_numbers WHERE number = $1""", number)
    return [tuple(r) for r in rounds], None if row is None else tuple(row)


async def seed(conn: asyncpg.Connection, rng: random.Random) -> None:
    """Lists, numbers' facts and earlier rounds, each number differently."""
    for number in NUMBERS:
        if rng.random() < 0.4:
            await conn.execute(
                """INSERT INTO guard_lists (number, list, created_at, expires_at)
                   VALUES ($1, $2, $3, $4)""", number, rng.choice(["allow", "block"]),
                NOW - timedelta(days=3),
                rng.choice([None, NOW - timedelta(hours=1), NOW + timedelta(hours=1)]))
        if rng.random() < 0.75:
            confirmed = rng.random() < 0.5
            await conn.execute(
                """INSERT INTO guard_numbers (number, first_seen_at, confirmations,
                       confirmed_at, locked_until, locked_at, locks)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""", number, NOW - timedelta(days=9),
                rng.randint(1, 3) if confirmed else 0,
                NOW - timedelta(minutes=rng.choice([5, 50, 500])) if confirmed else None,
                rng.choice([None, NOW + timedelta(hours=2), NOW - timedelta(hours=2)]),
                NOW - timedelta(hours=3), rng.randint(0, 2))
        for k in range(rng.randint(0, 6)):
            await conn.execute(
                """INSERT INTO guard_rounds (callback_id, attempt_no, number, merchant_id,
                       known, rang, confirmed, ended_at)
                   VALUES ($1, 1, $2, 'acme', $3, $4, $5, $6)""", f"old-{number}-{k}",
                number, rng.random() < 0.3, rng.random() < 0.8, rng.random() < 0.2,
                NOW - timedelta(minutes=rng.choice([1, 30, 90, 600, 3 * 1440, 9 * 1440])))


async def test_the_same_row_and_writes_as_the_function_it_replaced(
        clean: asyncpg.Pool) -> None:
    rng = random.Random(20261206)
    async with clean.acquire() as conn:
        await conn.execute(reference_sql())
        try:
            for history in range(12):
                await conn.execute("TRUNCATE guard_rounds, guard_numbers, guard_lists")
                await seed(conn, rng)
                for n in range(25):
                    number = rng.choice(NUMBERS)
                    at = NOW + timedelta(seconds=n)
                    args = (f"cb-{history}-{rng.randint(0, 12)}", rng.randint(1, 2), number,
                            "acme", rng.random() < 0.7, rng.random() < 0.25, at,
                            at - timedelta(hours=1), at - timedelta(days=7),
                            rng.choice([None, at - timedelta(hours=1)]),
                            rng.choice([None, 2, 30]))
                    placeholders = ", ".join(f"${i}" for i in range(1, 12))
                    tx = conn.transaction()
                    await tx.start()
                    want = await conn.fetchrow(
                        f"SELECT * FROM {REFERENCE}({placeholders})", *args)
                    want_state = await state(conn, number)
                    await tx.rollback()
                    async with conn.transaction():
                        got = await conn.fetchrow(
                            f"SELECT * FROM guard_round_ended({placeholders})", *args)
                        got_state = await state(conn, number)
                    assert dict(got) == dict(want), args
                    assert got_state == want_state, args
        finally:
            await conn.execute(f"DROP FUNCTION {REFERENCE}")


async def test_it_keeps_its_plans(clean: asyncpg.Pool) -> None:
    """As 1060 set it: a generic plan kept for the session, no sequential scan."""
    config = await clean.fetchval(
        "SELECT proconfig FROM pg_proc WHERE proname = 'guard_round_ended'")
    assert sorted(config) == ["enable_seqscan=off", "plan_cache_mode=force_generic_plan"]
