"""``LinkClient.close()`` passes on its caller's cancellation.

It cancelled its probe task and the slower routes' deliveries still running in the
background, and waited for each under ``suppress(CancelledError, Exception)``: their own
failures are nobody's concern any more (still so), but the caller's cancellation was
swallowed too and close() carried on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shared.config import LinkRoute
from shared.link import LinkClient
from shared.signing import Signer, SigningKey
from tests.unit.test_shared_waits_cancel import ends_within, stop_runaway


class Peer:
    """The peer's ``GET /healthz``, which answers only once the test is over."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def healthz(self, _: web.Request) -> web.Response:
        self.asked.set()
        await self.answer.wait()
        return web.json_response({"ok": True})


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, str]]:
    peer = Peer()
    app = web.Application()
    app.router.add_get("/healthz", peer.healthz)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield peer, str(server.make_url("")).rstrip("/")
    finally:
        peer.answer.set()
        await server.close()


async def test_close_passes_on_its_caller_s_cancellation(peer: tuple[Peer, str]) -> None:
    health, url = peer
    client = LinkClient([LinkRoute("internet", url)], Signer([SigningKey.generate("k1")]),
                        None)
    await client.start()
    prober = client._probe_task
    assert prober is not None
    async with asyncio.timeout(5):
        await health.asked.wait()           # a probe waits for its answer
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0)                  # close() has cancelled the probes and waits
    closing.cancel()                        # its caller's own cancellation
    try:
        assert await ends_within(closing), "close() did not end within 2 s"
        assert closing.cancelled(), "close() swallowed its caller's cancellation"
    finally:
        await stop_runaway(closing)
        await client.close()                # a second close() finishes the job
    assert prober.cancelled() and client._probe_task is None and client._session is None


async def test_close_alone_ends_the_probes_quietly(peer: tuple[Peer, str]) -> None:
    health, url = peer
    client = LinkClient([LinkRoute("internet", url)], Signer([SigningKey.generate("k1")]),
                        None)
    await client.start()
    prober = client._probe_task
    assert prober is not None
    async with asyncio.timeout(5):
        await health.asked.wait()
    await client.close()
    assert prober.cancelled() and client._probe_task is None and client._session is None
