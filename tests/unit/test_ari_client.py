"""AriClient against an in-process fake ARI: error mapping, auth, reconnect forever."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType, web

from shared.ari import (
    AllocationFailed,
    AriClient,
    AriHttpError,
    AriUnavailable,
    ChannelNotFound,
    Conflict,
    Connected,
    StasisStart,
)

AUTH = "Basic " + base64.b64encode(b"edge:secret").decode()
CHANNEL = {"id": "c1", "name": "PJSIP/x-1", "state": "Ring",
           "caller": {"number": "0901", "name": ""}, "dialplan": {"exten": "0120"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FakeAri:
    """A few ARI routes; ``drop()`` closes every events websocket."""

    def __init__(self) -> None:
        self.sockets: list[web.WebSocketResponse] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[object] = []
        self.runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ari/events", self.events)
        app.router.add_route("*", "/ari/{tail:.*}", self.rest)
        return app

    async def start(self, port: int) -> None:
        self.runner = web.AppRunner(self.app())
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        for ws in self.sockets:
            await ws.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        if request.headers.get("Authorization") != AUTH:
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_json({"type": "StasisStart", "args": ["inbound"], "channel": CHANNEL})
        async for msg in ws:
            if msg.type == WSMsgType.CLOSE:
                break
        return ws

    async def drop(self) -> None:
        for ws in self.sockets:
            await ws.close()

    async def rest(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        self.requests.append((request.method, tail, dict(request.query)))
        if request.can_read_body:
            self.bodies.append(await request.json())
        if request.headers.get("Authorization") != AUTH:
            return web.json_response({"message": "auth"}, status=401)
        routes: dict[tuple[str, str], tuple[int, object]] = {
            ("GET", "channels/c1"): (200, CHANNEL),
            ("GET", "channels/gone"): (404, {"message": "Channel not found"}),
            ("DELETE", "channels/gone"): (404, {"message": "Channel not found"}),
            ("DELETE", "channels/c1"): (204, None),
            ("POST", "channels/c1/dial"): (409, {"message": "Channel not in Stasis application"}),
            ("POST", "channels"): (500, {"message": "Allocation failed"}),
            ("GET", "channels/c1/variable"): (500, {"message": "Unable to read provided function"}),
            ("GET", "bridges/b1"): (503, {"message": "?"}),
            ("PUT", "applications/edge/eventFilter"): (200, {"name": "edge"}),
        }
        status, body = routes.get((request.method, tail), (404, {"message": "no route"}))
        if body is None:
            return web.Response(status=status)
        return web.json_response(body, status=status)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeAri, AriClient, int]]:
    port = free_port()
    server = FakeAri()
    await server.start(port)
    client = AriClient(f"http://127.0.0.1:{port}", "edge", "secret", "edge",
                       reconnect_initial_s=0.02, reconnect_max_s=0.1, request_timeout=2)
    await client.start()
    yield server, client, port
    await client.close()
    await server.stop()


async def test_error_tree(fake: tuple[FakeAri, AriClient, int]) -> None:
    server, ari, _ = fake
    channel = await ari.get_channel("c1")
    assert channel is not None and channel.caller_number == "0901"
    assert await ari.get_channel("gone") is None
    await ari.hangup("gone")                                  # already gone: swallowed
    await ari.hangup("c1", reason="busy")
    assert server.requests[-1] == ("DELETE", "channels/c1", {"reason": "busy"})
    with pytest.raises(Conflict) as conflict:
        await ari.dial("c1")
    assert conflict.value.status == 409 and "Stasis" in conflict.value.message
    with pytest.raises(AllocationFailed):
        await ari.originate("PJSIP/1@carrier-a", channel_id="x", app_args=["a", "b"])
    assert server.requests[-1][2]["appArgs"] == "a,b"
    assert await ari.get_variable("c1", "PJSIP_HEADER(read,P-Asserted-Identity)") is None
    with pytest.raises(AriHttpError) as other:
        await ari._request("GET", "/bridges/b1")
    assert other.value.status == 503 and not isinstance(other.value, ChannelNotFound)
    with pytest.raises(ValueError):
        await ari.hangup("c1", reason="busy", reason_code=21)


async def test_unreachable_is_ari_unavailable() -> None:
    async with AriClient(f"http://127.0.0.1:{free_port()}", "u", "p", "edge") as ari:
        with pytest.raises(AriUnavailable):
            await ari.list_channels()
        with pytest.raises(ConnectionError):                  # also a builtin ConnectionError
            await ari.answer("c1")


async def test_the_event_filter_is_set_on_every_connect_before_connected() -> None:
    port = free_port()
    server = FakeAri()
    await server.start(port)
    filter_put = ("PUT", "applications/edge/eventFilter", {})
    body = {"allowed": [{"type": "PlaybackFinished"}, {"type": "StasisStart"}],
            "disallowed": []}
    async with AriClient(f"http://127.0.0.1:{port}", "edge", "secret", "edge",
                         reconnect_initial_s=0.02, reconnect_max_s=0.1,
                         events_allowed={"StasisStart", "PlaybackFinished"}) as ari:
        events = ari.events()
        try:
            assert await asyncio.wait_for(anext(events), 3) == Connected(reconnect=False)
            assert (server.requests, server.bodies) == ([filter_put], [body])
            await asyncio.wait_for(anext(events), 3)
            await server.drop()
            assert await asyncio.wait_for(anext(events), 3) == Connected(reconnect=True)
            assert (server.requests, server.bodies) == ([filter_put] * 2, [body] * 2)
        finally:
            await events.aclose()
            await server.stop()


async def test_a_refused_event_filter_still_lets_every_event_through(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    server = FakeAri()
    await server.start(port)
    async with AriClient(f"http://127.0.0.1:{port}", "edge", "secret", "other",
                         events_allowed={"StasisStart"}) as ari:   # the fake has no "other"
        events = ari.events()
        try:
            assert await asyncio.wait_for(anext(events), 3) == Connected(reconnect=False)
            assert isinstance(await asyncio.wait_for(anext(events), 3), StasisStart)
        finally:
            await events.aclose()
            await server.stop()
    assert "event filter of app other not set" in caplog.text


async def test_events_wait_for_asterisk_then_reconnect_forever() -> None:
    port = free_port()
    server = FakeAri()
    async with AriClient(f"http://127.0.0.1:{port}", "edge", "secret", "edge",
                         reconnect_initial_s=0.02, reconnect_max_s=0.1) as ari:
        events = ari.events()
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.3)                              # Asterisk down: keeps trying
        assert not first.done()
        await server.start(port)
        try:
            assert await asyncio.wait_for(first, 3) == Connected(reconnect=False)
            start = await asyncio.wait_for(anext(events), 3)
            assert isinstance(start, StasisStart) and start.args == ("inbound",)
            await server.drop()                               # websocket drops
            assert await asyncio.wait_for(anext(events), 3) == Connected(reconnect=True)
            assert isinstance(await asyncio.wait_for(anext(events), 3), StasisStart)
            assert server.requests == []                      # no filter asked: none set
        finally:
            await events.aclose()
            await server.stop()
