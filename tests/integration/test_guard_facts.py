"""What the guard reads about a number (``guard_number_facts``, migration 0400), field by
field, on the real PostgreSQL: the velocity counts and the last call-back at their window
edges, the lists with expiry, the lock and confirmations, the active requests, the brake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from callback_server.guard import store as sql
from callback_server.testing import merchant
from tests.integration import callback_db

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
NUMBER = "+819012340001"

pool, clean = callback_db.fixtures([merchant("acme")])


async def accepted(conn: asyncpg.Connection, callback_id: str, number: str, ago: timedelta
                   ) -> None:
    await conn.execute(
        "INSERT INTO guard_callbacks (callback_id, number, merchant_id, known, accepted_at)"
        " VALUES ($1, $2, 'acme', false, $3)", callback_id, number, NOW - ago)


async def listed(conn: asyncpg.Connection, number: str, list_name: str, reason: str,
                 expires_at: datetime | None) -> None:
    await conn.execute(
        "INSERT INTO guard_lists (number, list, reason, created_at, expires_at)"
        " VALUES ($1, $2, $3, $4, $5)", number, list_name, reason, NOW, expires_at)


async def test_a_number_never_seen_has_no_history(clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        facts = await sql.number_facts(conn, NUMBER, NOW)
    history = facts.history
    assert (history.known, history.active, history.last_accepted_at, history.accepted_hour,
            history.accepted_day, history.locked_until) == (False, 0, None, 0, 0, None)
    assert (facts.blocked, facts.block_reason, facts.allowed, facts.confirmations) == \
        (False, "", False, 0)


async def test_counts_and_last_call_back_at_the_window_edges(clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        await accepted(conn, "cb-1", NUMBER, timedelta(minutes=10))
        await accepted(conn, "cb-2", NUMBER, timedelta(minutes=59))
        await accepted(conn, "cb-3", NUMBER, timedelta(hours=1))          # not in the hour
        await accepted(conn, "cb-4", NUMBER, timedelta(hours=23, minutes=59))
        await accepted(conn, "cb-5", NUMBER, timedelta(days=1))           # not in the day
        await accepted(conn, "cb-6", NUMBER, timedelta(days=3))
        await accepted(conn, "cb-7", "+819012340002", timedelta(minutes=1))  # another number
        history = (await sql.number_facts(conn, NUMBER, NOW)).history
    assert (history.accepted_hour, history.accepted_day) == (2, 4)
    assert history.last_accepted_at == NOW - timedelta(minutes=10)


async def test_the_last_call_back_older_than_a_day_is_still_known(clean: asyncpg.Pool) -> None:
    """A minimum gap longer than a day must still see the call-back before it."""
    async with clean.acquire() as conn:
        await accepted(conn, "cb-old", NUMBER, timedelta(days=2))
        await accepted(conn, "cb-older", NUMBER, timedelta(days=9))
        history = (await sql.number_facts(conn, NUMBER, NOW)).history
    assert (history.accepted_hour, history.accepted_day) == (0, 0)
    assert history.last_accepted_at == NOW - timedelta(days=2)


async def test_lists_count_only_while_in_force(clean: asyncpg.Pool) -> None:
    blocked, allowed, expired, lapsed = ("+819012340010", "+819012340011", "+819012340012",
                                         "+819012340013")
    async with clean.acquire() as conn:
        await listed(conn, blocked, "block", "fraud ring", None)
        await listed(conn, allowed, "allow", "", NOW + timedelta(days=1))
        await listed(conn, expired, "block", "old", NOW - timedelta(seconds=1))
        await listed(conn, lapsed, "allow", "", NOW - timedelta(seconds=1))
        await listed(conn, lapsed, "block", "", NOW + timedelta(hours=1))  # empty reason
        facts = {n: await sql.number_facts(conn, n, NOW)
                 for n in (blocked, allowed, expired, lapsed)}
    assert (facts[blocked].blocked, facts[blocked].block_reason, facts[blocked].allowed) == \
        (True, "fraud ring", False)
    assert (facts[allowed].blocked, facts[allowed].allowed, facts[allowed].history.known) == \
        (False, True, True)
    assert (facts[expired].blocked, facts[expired].allowed) == (False, False)
    assert (facts[lapsed].blocked, facts[lapsed].block_reason, facts[lapsed].allowed,
            facts[lapsed].history.known) == (True, "", False, False)


async def test_lock_confirmations_and_active_requests(clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        await conn.execute(
            "INSERT INTO guard_numbers (number, first_seen_at, confirmations, locked_until)"
            " VALUES ($1, $2, 2, $3)", NUMBER, NOW - timedelta(days=5), NOW + timedelta(hours=3))
        for i, status in enumerate(("queued", "dialing", "completed", "refused")):
            await conn.execute(
                "INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller,"
                " received_at, message_id, max_attempts, next_attempt_at, status)"
                " VALUES ($1, $2, 'acme', $3, $4, $5, 3, $4, $6)",
                f"cb-{i}", f"edge-{i}", NUMBER, NOW, f"m-{i}", status)
        facts = await sql.number_facts(conn, NUMBER, NOW)
    assert facts.confirmations == 2 and facts.history.known
    assert facts.history.locked_until == NOW + timedelta(hours=3)
    assert facts.history.active == 2


async def test_the_brake_counts_new_numbers_left_unconfirmed_in_its_window(
        clean: asyncpg.Pool) -> None:
    async with clean.acquire() as conn:
        rows = [("cb-1", "+819012340020", False, True, False, timedelta(minutes=5)),
                ("cb-2", "+819012340020", False, True, False, timedelta(minutes=6)),  # same
                ("cb-3", "+819012340021", False, True, False, timedelta(minutes=7)),
                ("cb-4", "+819012340022", True, True, False, timedelta(minutes=5)),   # known
                ("cb-5", "+819012340023", False, False, False, timedelta(minutes=5)),  # no ring
                ("cb-6", "+819012340024", False, True, True, timedelta(minutes=5)),   # confirmed
                ("cb-7", "+819012340025", False, True, False, timedelta(hours=2))]    # too old
        for callback_id, number, known, rang, confirmed, ago in rows:
            await conn.execute(
                "INSERT INTO guard_rounds (callback_id, attempt_no, number, merchant_id, known,"
                " rang, confirmed, ended_at) VALUES ($1, 1, $2, 'acme', $3, $4, $5, $6)",
                callback_id, number, known, rang, confirmed, NOW - ago)
        found = await conn.fetch("SELECT * FROM guard_number_facts($1::text[], $2, $3)",
                                 [NUMBER, "+819012340030"], NOW, sql.brake_since(NOW, 3600))
        unwindowed = await conn.fetch("SELECT * FROM guard_number_facts($1::text[], $2, NULL)",
                                      [NUMBER], NOW)
    assert sorted(r["brake"] for r in found) == [2, 2]
    assert [r["brake"] for r in unwindowed] == [0]
