"""The embedded PostgreSQL (``shared.db.embedded_url``, what development, the tests and
the benches run on) keeps every commit it acknowledges: a commit returns once its WAL is
flushed to disk (``fsync``, ``synchronous_commit``), and a page torn by a crash is rebuilt
from the WAL (``full_page_writes``). No speed setting may change these, and none of the
server's settings is where its CPU a call-back goes (``bench/README.md``, "PostgreSQL's
CPU a call-back, by process")."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import embedded_url
from tests.conftest import TEST_DATA_DIR

pytestmark = pytest.mark.integration

CRASH_SAFE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


async def test_the_embedded_server_flushes_every_commit_before_acknowledging_it() -> None:
    url = await asyncio.to_thread(embedded_url, "postgres", TEST_DATA_DIR)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT name, setting FROM pg_settings "
                                "WHERE name = any($1::text[])", list(CRASH_SAFE))
        # what a session of ours gets: nothing in the database or the role turns it off
        session = {name: await conn.fetchval("SELECT current_setting($1)", name)
                   for name in CRASH_SAFE}
    finally:
        await conn.close()
    assert {r["name"]: r["setting"] for r in rows} == CRASH_SAFE
    assert session == CRASH_SAFE
