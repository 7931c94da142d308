"""The worker of a durable outbox (call notifications, SMS): :class:`ClaimWorker` claims
a batch of due rows and delivers them side by side; :func:`claim_forever` runs it again at
once while batches come full, otherwise after a NOTIFY on the outbox's channel (rows
queued at a commit) or ``poll_s`` (retries come due, a lost LISTEN connection is opened
again). A database that cannot be reached pauses the loop for ``poll_s``; it never ends
it."""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import asyncpg

from shared.db import CONNECTION_ERRORS, listening
from shared.waits import within

CLAIM_BATCH = 32
C = TypeVar("C")


class ClaimWorker(abc.ABC, Generic[C]):
    """An outbox's worker: ``_claim`` leases up to :data:`CLAIM_BATCH` due rows,
    ``_deliver`` sends one and records its result (only while its lease holds)."""

    def __init__(self, *, channel: str, what: str, poll_s: float,
                 log: logging.Logger) -> None:
        self._channel, self._what, self._poll_s, self._log = channel, what, poll_s, log

    async def run(self, db_url: str | None = None) -> None:
        """Deliver what is due, forever: woken by NOTIFY through ``db_url``, and every
        ``poll_s``."""
        await claim_forever(self.run_once, batch=CLAIM_BATCH, poll_s=self._poll_s,
                            channel=self._channel, db_url=db_url, what=self._what,
                            log=self._log)

    async def run_once(self) -> int:
        """Claim a batch of due rows and deliver them side by side; how many."""
        claimed = await self._claim()
        await asyncio.gather(*(self._deliver(c) for c in claimed))
        return len(claimed)

    @abc.abstractmethod
    async def _claim(self) -> list[C]: ...

    @abc.abstractmethod
    async def _deliver(self, claimed: C) -> None: ...


async def claim_forever(run_once: Callable[[], Awaitable[int]], *, batch: int, poll_s: float,
                        channel: str, db_url: str | None, what: str,
                        log: logging.Logger) -> None:
    """``run_once`` claims and delivers what is due and says how many it claimed; with
    ``db_url`` a dedicated connection LISTENs on ``channel``."""
    while True:
        try:
            if db_url is None:
                await _claim_forever(run_once, batch, poll_s, None)
            else:
                async with listening(db_url, channel) as woken:
                    await _claim_forever(run_once, batch, poll_s, woken)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("%s paused: database: %s", what, exc)
            await asyncio.sleep(poll_s)


async def _claim_forever(run_once: Callable[[], Awaitable[int]], batch: int, poll_s: float,
                         woken: asyncio.Queue[str] | None) -> None:
    while True:
        if await run_once() >= batch:
            continue
        if woken is None:
            await asyncio.sleep(poll_s)
            continue
        await within(woken.get(), poll_s)
        while not woken.empty():
            woken.get_nowait()
