"""A callback-site database for integration tests: migrated, tenants synced, emptied."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

import callback_server
import shared
from callback_server.store import CallbackStore
from shared.config import Merchant
from shared.db import create_pool, migrate_url, package_migrations

TABLES = ("cdrs, request_info, callback_attempts, click_to_call_requests, click_web_calls, "
          "callback_requests, "
          "outbox, inbound_messages, "
          "guard_lists, guard_numbers, guard_callbacks, guard_rounds, guard_refusals, "
          "guard_spend, guard_trips, guard_alerts, guard_live, guard_cps")


async def open_pool(pg_url: str, merchants: Sequence[Merchant]) -> asyncpg.Pool:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("callback", callback_server.__file__)])
    pool = await create_pool(pg_url, max_size=20)
    await CallbackStore(pool, owner="setup").sync_merchants(merchants)
    return pool


async def emptied(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute(f"TRUNCATE {TABLES}")
    return pool


def fixtures(merchants: Sequence[Merchant]) -> tuple[Any, Any]:
    """``pool`` (per module: migrated, ``merchants`` synced) and ``clean`` (per test: the
    same pool, emptied) for a test module: ``pool, clean = callback_db.fixtures([ACME])``."""

    @pytest.fixture(scope="module")
    async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
        p = await open_pool(pg_url, merchants)
        yield p
        await p.close()

    @pytest.fixture
    async def clean(pool: asyncpg.Pool) -> asyncpg.Pool:
        return await emptied(pool)

    return pool, clean
