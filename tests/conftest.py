"""Fixtures shared by every test tier.

PostgreSQL: the embedded server from ``pgserver`` (started once per session),
or the server in ``DATABASE_URL``. Each test module that asks for ``pg_url``
gets a freshly created database, so modules never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import hangs

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


async def fresh_database(server_url: str, name: str) -> str:
    """A freshly created database (see :func:`shared.db.fresh_database`)."""
    from shared.db import fresh_database as create

    return await create(server_url, re.sub(r"[^a-z0-9_]", "_", name.lower())[:60])


async def drop_database(server_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def pg_url(pg_server_url: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    # The pid keeps two test runs on one machine (a developer's and CI's) apart.
    module = request.module.__name__.rsplit(".", 1)[-1]
    name = re.sub(r"[^a-z0-9_]", "_", f"t{os.getpid()}_{module}".lower())[:60]
    yield await fresh_database(pg_server_url, name)
    await drop_database(pg_server_url, name)


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from shared.pki import init

    directory = tmp_path_factory.mktemp("pki")
    init(directory, ["edge", "callback"])
    yield directory


@pytest.fixture(scope="session", autouse=True)
async def _session_loop() -> None:
    """The session's event loop: a wider default executor, and the hang watchdog's."""
    hangs.widen_executor(asyncio.get_running_loop())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    hangs.start(item)
    try:
        yield
    finally:
        hangs.stop(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, Any, None]:
    outcome = yield
    hangs.annotate(item, outcome.get_result())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The Asterisks the session started are stopped (left running, they would take CPU
    from whatever runs next, a benchmark say), once no other session's stack is using
    them: its lock taken first."""
    from tests.harness.asterisk import stack_lock, started_here, stop_started

    if started_here():
        with stack_lock():
            stop_started()
