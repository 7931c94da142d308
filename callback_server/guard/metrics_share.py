"""The guard's counters of every server process on a host, from whichever one answers.

Several processes serve the callback site's port (the full server and its
``serve --role intake`` processes, ``[http] reuse_port``), so a scrape of ``GET
/metrics`` reaches one of them at random. Each process publishes its counters
(:meth:`~callback_server.guard.metrics.Metrics.snapshot`) to ``process_metrics``
every ``PUBLISH_EVERY_S`` and when it stops; the process answering a scrape adds
the latest snapshots of the other processes on its host to its own live counters.
A process that ended keeps its row, so the host's counters never go down; rows
not updated for ``KEEP_S`` are purged by the full server.

Per host, not per site: each host is its own scrape target, and summing those is
the site. Counters reach the sum within ``PUBLISH_EVERY_S``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from callback_server.guard.metrics import Metrics

log = logging.getLogger("callback.guard.metrics")

PUBLISH_EVERY_S = 2.0
KEEP_S = 7 * 24 * 3600
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class MetricsShare:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, *, process: str, role: str,
                 host: str | None = None) -> None:
        self.pool = pool
        self.metrics = metrics
        self.process = process
        self.role = role
        self.host = host or socket.gethostname()

    async def publish(self) -> None:
        await self.pool.execute(
            "INSERT INTO process_metrics (process, host, role, snapshot) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (process) DO UPDATE SET snapshot = EXCLUDED.snapshot,"
            " role = EXCLUDED.role, updated_at = now()",
            self.process, self.host, self.role, self.metrics.snapshot())

    async def others(self) -> list[dict[str, Any]]:
        """The latest snapshots of the other processes on this host."""
        rows = await self.pool.fetch(
            "SELECT snapshot FROM process_metrics WHERE host = $1 AND process <> $2",
            self.host, self.process)
        return [dict(r["snapshot"]) for r in rows]

    async def render(self) -> str:
        """``GET /metrics``: this host's counters; this process's alone (and a comment
        saying so) while the database cannot be asked."""
        try:
            others = await self.others()
        except _DB_ERRORS as exc:
            return (f"# other processes' counters unavailable ({type(exc).__name__}); "
                    f"this process only\n" + self.metrics.render())
        return self.metrics.render(others)

    @asynccontextmanager
    async def publishing(self) -> AsyncIterator[None]:
        """Publish every ``PUBLISH_EVERY_S`` meanwhile, and once more at the end."""
        task = asyncio.create_task(self._publish_forever(), name="metrics publish")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:
                await self.publish()
            except _DB_ERRORS as exc:
                log.warning("last publication of the guard's counters failed: %s", exc)

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_EVERY_S)
            try:
                await self.publish()
            except _DB_ERRORS as exc:
                log.warning("publishing the guard's counters failed (%s); next in %.0f s",
                            exc, PUBLISH_EVERY_S)


async def purge(conn: asyncpg.Connection, keep_s: int = KEEP_S) -> int:
    """Forget processes whose counters were not published for ``keep_s``."""
    result: str = await conn.execute(
        "DELETE FROM process_metrics WHERE updated_at < now() - $1 * interval '1 second'",
        keep_s)
    return int(result.split()[-1])
