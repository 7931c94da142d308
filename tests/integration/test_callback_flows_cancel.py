"""The flow activations' listener (``ActiveFlows.run``, LISTEN ``ivr_flows`` on the real
PostgreSQL) ends on a cancellation that arrives in the same event-loop turn as an
activation's notification: ``asyncio.wait_for`` on 3.11 returned the notification and
dropped the cancellation, so the listener refreshed again and ran on, and whoever stopped
it waited for ever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from callback_server import active_flows
from callback_server.active_flows import CHANNEL, ActiveFlows
from shared.db import listening
from tests.integration import callback_db
from tests.integration.test_callback_http import MERCHANTS
from tests.unit.test_shared_waits_cancel import ends_within, stop_runaway, until

pytestmark = pytest.mark.integration
pool, clean = callback_db.fixtures(MERCHANTS)


class Counted(ActiveFlows):
    """The listener as it runs, counting its refreshes."""

    refreshes = 0

    async def refresh(self) -> int:
        self.refreshes += 1
        return await super().refresh()


async def test_a_notification_with_the_cancellation_still_stops_the_listener(
        clean: asyncpg.Pool, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    queues: list[asyncio.Queue[str]] = []

    @asynccontextmanager
    async def heard(url: str, channel: str) -> AsyncIterator[asyncio.Queue[str]]:
        """``shared.db.listening`` itself; the test keeps a hand on its queue."""
        async with listening(url, channel) as queue:
            queues.append(queue)
            yield queue

    monkeypatch.setattr(active_flows, "listening", heard)
    flows = Counted(clean, pg_url, sweep_s=300.0)
    listener = asyncio.create_task(flows.run())
    try:
        await until(lambda: flows.refreshes == 1)
        # a real NOTIFY reaches it: it refreshes, then is idle again
        await clean.execute("SELECT pg_notify($1, $2)", CHANNEL, "acme")
        await until(lambda: flows.refreshes == 2)
        await asyncio.sleep(0.1)
        [queue] = queues
        queue.put_nowait("acme")            # what a NOTIFY does, and in the same turn:
        listener.cancel()
        assert await ends_within(listener), "the listener still runs 2 s after its cancel"
        assert listener.cancelled()
        assert flows.refreshes == 2         # no refresh after the cancellation
    finally:
        await stop_runaway(listener)
