"""Writes made during a live call survive a database restart (found by the fault run)."""

from __future__ import annotations

import asyncpg
import pytest

from shared.db import survives_database_restarts


async def test_connection_errors_are_retried_until_the_database_is_back() -> None:
    calls = 0

    @survives_database_restarts
    async def write(value: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise asyncpg.CannotConnectNowError("the database system is starting up")
        return value

    assert await write(7) == 7
    assert calls == 3


async def test_sql_errors_are_not_retried() -> None:
    calls = 0

    @survives_database_restarts
    async def write() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.UniqueViolationError("duplicate key")

    with pytest.raises(asyncpg.UniqueViolationError):
        await write()
    assert calls == 1
