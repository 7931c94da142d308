"""Fixtures shared by every test tier.

PostgreSQL: the embedded server from ``pgserver`` (started once per session),
or the server in ``DATABASE_URL``. Each test module that asks for ``pg_url``
gets a freshly created database, so modules never see each other's rows.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = Path(os.environ.get("CBGW_TEST_DATA_DIR", "/tmp/cbgw-test"))


def _server_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    try:
        from shared.db import embedded_url
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError(f"PostgreSQL component missing: {exc}") from exc
    try:
        return embedded_url("postgres", TEST_DATA_DIR)
    except Exception as exc:  # pragma: no cover - fail loudly, never skip
        raise RuntimeError(f"embedded PostgreSQL (pgserver) did not start: {exc}") from exc


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return _server_url()


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def fresh_database(server_url: str, name: str) -> str:
    """Drop and create database ``name``; return its URL."""
    name = re.sub(r"[^a-z0-9_]", "_", name.lower())[:60]
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_db(server_url, name)


@pytest.fixture(scope="module")
async def pg_url(pg_server_url: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    module = request.module.__name__.rsplit(".", 1)[-1]
    yield await fresh_database(pg_server_url, f"t_{module}")


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from shared.pki import init

    directory = tmp_path_factory.mktemp("pki")
    init(directory, ["edge", "callback"])
    yield directory
