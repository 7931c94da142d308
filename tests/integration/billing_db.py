"""A billing database for integration tests: its migration sets on a fresh database (with
the link's outbox and the consultation records a settlement's billing record reads and
writes to)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import billing
import shared
from advisors import record_store
from billing import records
from shared.db import MigrationSet, create_pool, migrate_url, package_migrations
from tests.conftest import drop_database, fresh_database

#: the accounts and their reservations, emptied together: no foreign key cascades from the
#: accounts to the reservations (migration 0025), and a TRUNCATE of the accounts that
#: leaves reservations is refused
ACCOUNTS = ("billing_accounts", "billing_reservations")


async def truncate(db: asyncpg.Pool | asyncpg.Connection, *tables: str) -> None:
    """Empty the billing accounts with their reservations, and ``tables``, ``CASCADE``."""
    await db.execute(f"TRUNCATE {', '.join((*ACCOUNTS, *tables))} CASCADE")


async def scrape(pool: asyncpg.Pool) -> str:
    """``GET /metrics`` of a site serving billing on ``pool``: this process's counters and
    billing's readings from the database."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from billing.http import install
    from shared.metrics_http import install as install_metrics

    app = web.Application()
    install_metrics(app, lambda _: pool)
    install(app, lambda _: pool)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        return await response.text()


def migrations() -> MigrationSet:
    return package_migrations("billing", billing.__file__)


#: what a billing database needs, in order
SETS = (package_migrations("link", shared.__file__), record_store.MIGRATIONS, migrations(),
        records.MIGRATIONS)


@asynccontextmanager
async def database_before(server_url: str, name: str, version: str) -> AsyncIterator[str]:
    """A fresh database ``name`` migrated as :data:`SETS` do, billing's only up to before
    ``version`` ("0012"), for the rows a later migration finds written as its predecessors
    left them; dropped after."""
    url = await fresh_database(server_url, name)
    try:
        with tempfile.TemporaryDirectory() as before:
            for path in sorted(migrations().directory.glob("*.sql")):
                if path.name < version:
                    shutil.copy(path, before)
            older = [*SETS]
            older[older.index(migrations())] = MigrationSet("billing", Path(before))
            await migrate_url(url, older)
        yield url
    finally:
        await drop_database(server_url, name)


def fixtures() -> tuple[Any, Any]:
    """``pool`` (per module: migrated) and ``clean`` (per test: the same pool, emptied;
    TRUNCATE is the one removal the append-only triggers let through):
    ``pool, clean = billing_db.fixtures()``."""

    @pytest.fixture(scope="module")
    async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
        await migrate_url(pg_url, list(SETS))
        p = await create_pool(pg_url, max_size=20)
        yield p
        await p.close()

    @pytest.fixture
    async def clean(pool: asyncpg.Pool) -> asyncpg.Pool:
        await truncate(pool, "billing_policies", "billing_group_policies",
                       "billing_stripe_events", "billing_records", "billing_customer_legs",
                       "billing_records_awaiting", "consultations", "outbox")
        return pool

    return pool, clean
