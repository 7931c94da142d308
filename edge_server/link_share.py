"""The link's share of the edge's database pool.

The messages the callback site sends (``/v1/link/events``, their batches, rate decks)
come in bursts, and each holds a pool connection while it is written; the edge's outbox
relay, ``[peer] passes_in_flight`` claims under way at once, settles each batch's answer
with a statement of its own. Unbounded, either takes every connection, and an inbound
call then waits for one to store its request (the caller hears nothing meanwhile; past
``[edge.timings] store_s`` the call is kept on the toll-free line). :class:`LinkShare`
lets at most ``size`` of those statements hold a connection at once (``[database]
max_connections`` less ``[edge] store_reserve_connections``), the link's handlers and
the relay's claims and settlements together; the others wait here, in order, not in the
pool's queue, so the reserve stays free for the calls' request store and release and
the sweeper.
The waits are ``cbgw_edge_link_db_wait_seconds``; the share in use
``cbgw_edge_link_db_connections``; the connections held, ``cbgw_db_pool_holders{holder="link"}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from edge_server.metrics import edge
from shared.db import holding

#: ``[edge] store_reserve_connections`` by default
DEFAULT_RESERVE = 3


class LinkShare:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"the link's share of the pool must be at least 1, not {size}")
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self.in_use = 0

    @asynccontextmanager
    async def acquire(self, pool: asyncpg.Pool, *,
                      holder: str = "link") -> AsyncIterator[asyncpg.Connection]:
        """A connection of ``pool``, once one of the share's ``size`` slots is free, held
        as ``holder``'s (``cbgw_db_pool_holders``)."""
        m = edge()
        started = time.monotonic()
        async with self._slots:
            m.link_db_wait.observe(time.monotonic() - started)
            self.in_use += 1
            m.link_db_connections.set(self.in_use)
            try:
                with holding(holder):
                    conn = await pool.acquire()
                try:
                    yield conn
                finally:
                    await pool.release(conn)
            finally:
                self.in_use -= 1
                m.link_db_connections.set(self.in_use)
