"""An advisors database for integration tests: its migration sets (the directory, the
consultation records, and the link's for the outbox the records write to) on a fresh
database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

import advisors
import shared
from advisors import record_store
from shared.db import MigrationSet, create_pool, migrate_url, package_migrations

TABLES = ("advisor_settings, advisors, advisor_groups, advisor_group_members, "
          "advisor_presence, advisor_events, customers, customer_numbers, consultations, "
          "consultation_leg_costs, consultations_awaiting_customer_leg, outbox, "
          "inbound_messages, advisor_queue, advisor_signin_links, advisor_sessions, "
          "edge_sip_endpoints")


def fixtures(*more: MigrationSet) -> tuple[Any, Any]:
    """``pool`` (per module: migrated, with the sets ``more`` after these) and ``clean``
    (per test: the same pool, the advisors' tables emptied):
    ``pool, clean = advisors_db.fixtures()``."""

    @pytest.fixture(scope="module")
    async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
        await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                                   package_migrations("advisors", advisors.__file__),
                                   record_store.MIGRATIONS, *more])
        p = await create_pool(pg_url, max_size=20)
        yield p
        await p.close()

    @pytest.fixture
    async def clean(pool: asyncpg.Pool) -> asyncpg.Pool:
        await pool.execute(f"TRUNCATE {TABLES}")
        return pool

    return pool, clean
