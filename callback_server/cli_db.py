"""What the callback site's command-line tools share: the config loaded with its errors
on stderr, and the database as ``serve`` opens it (the config's URL, the site's
migrations applied and its merchants synced first)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from callback_server.app import migration_sets
from callback_server.config import CallbackSettings
from callback_server.store import CallbackStore
from shared.config import ConfigError
from shared.db import create_pool, migrate, resolve_url


def load_settings(path: Path, merchant_id: str) -> CallbackSettings | None:
    """The settings, if they load and have the merchant; else None, the errors printed
    as ``config error:`` lines."""
    try:
        settings = CallbackSettings.load(path)
        settings.merchant(merchant_id)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"config error: {line}", file=sys.stderr)
        return None
    return settings


@asynccontextmanager
async def site_pool(settings: CallbackSettings, owner: str) -> AsyncIterator[asyncpg.Pool]:
    url = await asyncio.to_thread(resolve_url, settings.database.url, settings.database.name)
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, migration_sets(settings.rates.enabled))
        await CallbackStore(pool, owner=owner).sync_merchants(settings.merchants)
        yield pool
    finally:
        await pool.close()
