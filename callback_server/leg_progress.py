"""The first ring (or answer) of each leg, for the carriers' post-dial delay.

Watches every ARI event the site reads (``EventRouter.observe``): the first
``ChannelStateChange`` of a leg to ``Ringing`` or ``Up`` is written into
``callback_attempts.progress_at`` (its event time; only if none is there yet), in
batches off the event reader. ``routing_rates.quality`` reads it as PDD = progress_at
- cdrs.started_at. A leg the site does not know (a lookup channel) matches no row.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from shared import ari
from shared.db import Pool, holding

log = logging.getLogger("callback.leg_progress")
PROGRESS_STATES = frozenset({"Ringing", "Up"})


class LegProgress:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._pending: dict[str, datetime] = {}
        self._wake = asyncio.Event()

    def observe(self, event: ari.Event) -> None:
        """An ARI event (synchronous, never blocks the reader)."""
        if not isinstance(event, ari.ChannelStateChange) or event.timestamp is None:
            return
        if event.channel.state in PROGRESS_STATES:
            self._pending.setdefault(event.channel.id, event.timestamp)   # the first
            self._wake.set()

    async def flush(self) -> int:
        """Write what was seen; the rows written."""
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        async with self.pool.acquire() as conn:
            status = await conn.execute(
                """UPDATE callback_attempts a SET progress_at = v.at
                   FROM unnest($1::text[], $2::timestamptz[]) AS v(id, at)
                   WHERE a.channel_id = v.id AND a.progress_at IS NULL""",
                list(pending), list(pending.values()))
        return int(status.split()[-1])

    async def run(self) -> None:
        with holding("leg_progress"):
            await self._run()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:   # the figures lose a few legs; calls go on
                log.exception("leg progress not written")
            await asyncio.sleep(0.5)
