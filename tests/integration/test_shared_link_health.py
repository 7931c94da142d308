"""Route health against real HTTP peers: a busy peer (its /healthz answering 503, a slow
answer, a 503 with Retry-After) is not a broken route, one slow probe does not flip a
route, and the only route of a link stays in use whatever its probes say."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shared.link import LinkBusy, LinkClient
from shared.link_policy import HealthSettings, LinkPolicy
from tests.faults.linklab import link_client

pytestmark = pytest.mark.integration

#: probes only when the test asks (probe_once), and a timeout the test can outwait
PROBES = HealthSettings(interval_s=1000, timeout_s=0.5)


@dataclass
class Peer:
    """A real HTTP peer whose answers the test sets."""

    health_status: int = 200
    health_delay_s: float = 0.0
    post_status: int = 200
    retry_after: str | None = None
    posts: int = 0

    async def healthz(self, _request: web.Request) -> web.Response:
        await asyncio.sleep(self.health_delay_s)
        return web.json_response({"status": "ok"}, status=self.health_status)

    async def post(self, request: web.Request) -> web.Response:
        await request.read()
        self.posts += 1
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return web.json_response({"ok": self.post_status < 300}, status=self.post_status,
                                 headers=headers)


@pytest.fixture
async def peers() -> AsyncIterator[tuple[tuple[Peer, str], tuple[Peer, str]]]:
    servers = []
    for _ in range(2):
        peer = Peer()
        app = web.Application()
        app.router.add_get("/healthz", peer.healthz)
        app.router.add_post("/v1/link/events", peer.post)
        server = TestServer(app)
        await server.start_server()
        servers.append((peer, server))
    yield tuple((p, str(s.make_url(""))) for p, s in servers)  # type: ignore[misc]
    for _, server in servers:
        await server.close()


async def started(client: LinkClient) -> None:
    """Start the client and let its first (background) round of probes finish."""
    await client.start()
    deadline = asyncio.get_running_loop().time() + 30
    while any(st.probes == 0 for st in client.route_status().values()):
        assert asyncio.get_running_loop().time() < deadline, "no probe in 30 s"
        await asyncio.sleep(0.01)


async def test_the_only_route_stays_in_use_while_its_probes_fail(
        peers: tuple[tuple[Peer, str], tuple[Peer, str]], pki_dir: Path) -> None:
    (peer, url), _ = peers
    peer.health_delay_s = 2.0                     # every probe times out
    client = link_client(pki_dir, [("only", url)], policy=LinkPolicy(health=PROBES))
    try:
        await started(client)
        for _ in range(PROBES.fall + 2):
            assert await client.probe_once() == {"only": False}
        status = client.route_status()["only"]
        assert status.up and status.fail_streak == PROBES.fall + 3
        delivered = await client.post("/v1/link/events", b"{}", "m-1", kind="cdr")
        assert delivered.route == "only" and peer.posts == 1
    finally:
        await client.close()


async def test_two_routes_do_not_flap_on_a_busy_peer_or_one_slow_probe(
        peers: tuple[tuple[Peer, str], tuple[Peer, str]], pki_dir: Path) -> None:
    (first, first_url), (second, second_url) = peers
    first.health_status = 503                     # its database is slow: still answering
    client = link_client(pki_dir, [("internet", first_url), ("leased", second_url)],
                         policy=LinkPolicy(health=PROBES))
    names = lambda: [r.name for r in client.ordered_routes()]  # noqa: E731
    try:
        await started(client)
        for _ in range(PROBES.fall + 1):
            await client.probe_once()
        assert names() == ["internet", "leased"]
        first.health_delay_s = 2.0                # one probe slower than the timeout
        assert await client.probe_once() == {"internet": False, "leased": True}
        first.health_delay_s = 0.0
        assert names() == ["internet", "leased"] and client.route_status()["internet"].up
        # A busy peer refuses with 503 + Retry-After: the route answered; the message is
        # not sent again over the other route (the same peer), the caller waits.
        first.post_status, first.retry_after = 503, "7"
        with pytest.raises(LinkBusy) as busy:
            await client.post("/v1/link/events", b"{}", "m-2", kind="cdr")
        assert (busy.value.status, busy.value.retry_after_s) == (503, 7.0)
        assert (first.posts, second.posts) == (1, 0)
        assert names() == ["internet", "leased"] and client.route_status()["internet"].up
        # Only a streak of failures takes a route down, and a streak of successes back up.
        first.health_delay_s = 2.0
        for _ in range(PROBES.fall):
            await client.probe_once()
        assert names() == ["leased", "internet"]
        first.health_delay_s = 0.0
        await client.probe_once()
        assert names() == ["leased", "internet"]
        await client.probe_once()
        assert names() == ["internet", "leased"]
    finally:
        await client.close()
