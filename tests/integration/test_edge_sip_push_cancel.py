"""The edge's SIP endpoint listener (``EndpointPusher.listen``, LISTEN ``sip_endpoints`` on
the real PostgreSQL) ends on a cancellation that arrives in the same event-loop turn as a
change's notification: ``asyncio.wait_for`` on 3.11 returned the notification and dropped
the cancellation, so the listener ran on and the edge server's shutdown waited for ever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from edge_server import sip_push
from edge_server.sip_endpoints import CHANNEL, SipEndpoints
from edge_server.sip_push import EndpointPusher, SipEndpointSettings
from shared.db import listening
from tests.integration.test_edge_http import pool  # noqa: F401 (the pool fixture)
from tests.unit.test_shared_waits_cancel import ends_within, stop_runaway, until

pytestmark = pytest.mark.integration


async def test_a_notification_with_the_cancellation_still_stops_the_listener(
        pool: asyncpg.Pool, pg_url: str,  # noqa: F811 (test_edge_http's)
        monkeypatch: pytest.MonkeyPatch) -> None:
    queues: list[asyncio.Queue[str]] = []

    @asynccontextmanager
    async def heard(url: str, channel: str) -> AsyncIterator[asyncio.Queue[str]]:
        """``shared.db.listening`` itself; the test keeps a hand on its queue."""
        async with listening(url, channel) as queue:
            queues.append(queue)
            yield queue

    monkeypatch.setattr(sip_push, "listening", heard)
    pusher = EndpointPusher(None, SipEndpoints(pool), SipEndpointSettings(),  # type: ignore[arg-type]
                            sweep_s=300.0)
    listener = asyncio.create_task(pusher.listen(pg_url))
    try:
        await until(lambda: len(queues) == 1)        # it LISTENs
        # a real NOTIFY reaches it; it is idle again once it has taken it
        await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, "acme.first")
        await until(lambda: "acme.first" in pusher._changed)
        await asyncio.sleep(0.1)
        pusher._changed.clear()
        [queue] = queues
        queue.put_nowait("acme.second")     # what a NOTIFY does, and in the same turn:
        listener.cancel()
        assert await ends_within(listener), "the listener still runs 2 s after its cancel"
        assert listener.cancelled()
        assert pusher._changed == set()     # the change came with the cancel: not taken
    finally:
        await stop_runaway(listener)
