"""AriClient's REST requests on the events websocket (``requests_over_events``), against an
in-process fake ARI that answers them as Asterisk 22 does, or ignores them as an older
Asterisk does: the calls' prompts go there when the probe is answered, over HTTP when not,
and a request in flight when the websocket drops fails as a lost connection does (a
hang-up is sent again over HTTP); each request is counted by the way it went."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp import WSMsgType, web

from shared.ari import (
    AriClient,
    AriUnavailable,
    ChannelNotFound,
    Connected,
    Event,
    PlaybackFinished,
    StasisStart,
)
from tests import prom

CHANNEL = {"id": "c1", "name": "PJSIP/x-1", "state": "Up",
           "caller": {"number": "0901", "name": ""}, "dialplan": {"exten": "0120"}}
MEDIA = ["sound:cbgw/welcome-menu", "digits:1234", "sound:cbgw/you-entered"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FakeAri:
    """``rest``: answers RESTRequests on the websocket (Asterisk 22.4 on); ``hold``: keeps
    them unanswered (a request in flight when the websocket drops)."""

    rest: bool = True
    hold: bool = False
    #: no event on connect nor between a request and its response: an application at rest
    quiet: bool = False
    over_http: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    over_ws: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    #: the application's event filter (None: every type), as Asterisk applies it to the
    #: REST responses too
    allowed: set[str] | None = None
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_get("/ari/events", self.events)
        app.router.add_route("*", "/ari/{tail:.*}", self.http)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        await self.drop()
        if self.runner is not None:
            await self.runner.cleanup()

    async def drop(self) -> None:
        for ws in self.sockets:
            await ws.close()

    @staticmethod
    def answer(method: str, path: str, query: dict[str, str]) -> tuple[int, object]:
        if method == "GET" and path == "applications/callback":
            return 200, {"name": "callback", "channel_ids": []}
        if method == "POST" and path.startswith("channels/c1/play/"):
            return 201, {"id": path.rsplit("/", 1)[1], "media_uri": query["media"],
                         "target_uri": "channel:c1", "state": "queued"}
        if method == "POST" and path.startswith("channels/gone/play"):
            return 404, {"message": "Channel not found"}
        if method == "DELETE" and path == "playbacks/p1":
            return 204, None
        if method == "DELETE" and path == "channels/c1":
            return 204, None
        if method == "DELETE" and path == "channels/gone":
            return 404, {"message": "Channel not found"}
        if method == "DELETE" and path == "playbacks/broken":
            return 500, {"message": "Internal Server Error"}
        return 404, {"message": "Playback not found"}

    async def http(self, request: web.Request) -> web.StreamResponse:
        tail, query = request.match_info["tail"], dict(request.query)
        if request.method == "PUT" and tail == "applications/callback/eventFilter":
            self.allowed = {kind["type"] for kind in (await request.json())["allowed"]}
            return web.json_response({"name": "callback", "channel_ids": []})
        self.over_http.append((request.method, tail, query))
        status, body = self.answer(request.method, tail, query)
        if body is None:
            return web.Response(status=status)
        return web.json_response(body, status=status)

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        if not self.quiet:
            await ws.send_json({"type": "StasisStart", "args": [], "channel": CHANNEL})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            raw = json.loads(msg.data)
            if raw.get("type") != "RESTRequest" or not self.rest:
                continue
            uri = urlsplit(raw["uri"])
            query = dict(parse_qsl(uri.query))
            self.over_ws.append((raw["method"], uri.path, query))
            if self.hold and raw["method"] != "GET":
                continue
            status, body = self.answer(raw["method"], uri.path, query)
            if not self.quiet:
                # an event between the request and its response, as Asterisk may send one
                await ws.send_json({"type": "PlaybackFinished", "playback": {
                    "id": "earlier", "target_uri": "channel:c1", "state": "done"}})
            response = {"type": "RESTResponse", "request_id": raw["request_id"],
                        "status_code": status, "reason_phrase": "", "uri": raw["uri"]}
            if body is not None:
                response |= {"content_type": "application/json",
                             "message_body": json.dumps(body)}
            if self.allowed is None or "RESTResponse" in self.allowed:
                await ws.send_json(response)
        return ws


@dataclass
class Running:
    fake: FakeAri
    client: AriClient
    events: list[Event]


@pytest.fixture
async def running(request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    fake = FakeAri(**getattr(request, "param", {}))
    port = free_port()
    await fake.start(port)
    client = AriClient(f"http://127.0.0.1:{port}", "cb", "secret", "callback",
                       reconnect_initial_s=0.02, reconnect_max_s=0.1, request_timeout=0.5,
                       events_allowed=("StasisStart", "PlaybackFinished"),
                       requests_over_events=True)
    await client.start()
    seen: list[Event] = []

    async def read() -> None:
        async for event in client.events():
            seen.append(event)

    reader = asyncio.create_task(read())
    try:
        await until(lambda: any(isinstance(e, StasisStart) for e in seen))
        if fake.rest and not fake.hold:
            await until(lambda: client.requests_on_events)     # the probe answered
        yield Running(fake, client, seen)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await client.close()
        await fake.stop()


async def until(check: Callable[[], bool], limit_s: float = 3.0) -> None:
    """Return once ``check()`` holds; AssertionError after ``limit_s``."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {limit_s} s")
        await asyncio.sleep(0.01)


async def test_prompts_go_on_the_events_websocket_with_the_same_answers(
        running: Running) -> None:
    fake, client = running.fake, running.client
    playback = await client.play("c1", MEDIA, playback_id="c1-p1", lang="ja")
    assert (playback.id, playback.media_uri, playback.channel_id) == (
        "c1-p1", ",".join(MEDIA), "c1")
    await client.stop_playback("p1")
    await client.stop_playback("stopped-already")            # 404: nothing to stop, quiet
    with pytest.raises(ChannelNotFound):
        await client.play("gone", MEDIA)
    assert fake.over_ws == [
        ("GET", "applications/callback", {}),                 # the probe on connect
        ("POST", "channels/c1/play/c1-p1", {"media": ",".join(MEDIA), "lang": "ja"}),
        ("DELETE", "playbacks/p1", {}),
        ("DELETE", "playbacks/stopped-already", {}),
        ("POST", "channels/gone/play", {"media": ",".join(MEDIA)})]
    assert fake.over_http == [] and fake.allowed == {"StasisStart", "PlaybackFinished",
                                                     "RESTResponse"}
    # the events sent between a request and its response still come, in order
    assert [type(e) for e in running.events[:2]] == [Connected, StasisStart]
    assert sum(isinstance(e, PlaybackFinished) for e in running.events) >= 4
    assert await client.get_channel("gone") is None           # every other request: HTTP
    assert fake.over_http == [("GET", "channels/gone", {})]


async def test_a_hang_up_goes_there_too_and_a_leg_gone_already_is_quiet(
        running: Running) -> None:
    fake, client = running.fake, running.client
    await client.hangup("c1", reason="normal")
    await client.hangup("gone")                          # 404: gone already, not an error
    assert fake.over_ws[-2:] == [("DELETE", "channels/c1", {"reason": "normal"}),
                                 ("DELETE", "channels/gone", {})]
    assert fake.over_http == []


async def test_without_them_the_filter_holds_back_rest_responses(running: Running) -> None:
    running.client.requests_over_events = False
    await running.client.set_event_filter(running.client.events_allowed)
    assert running.fake.allowed == {"StasisStart", "PlaybackFinished"}


@pytest.mark.parametrize("running", [{"rest": False}], indirect=True)
async def test_an_asterisk_that_does_not_answer_them_gets_them_over_http(
        running: Running) -> None:
    playback = await running.client.play("c1", MEDIA, playback_id="c1-p1", lang="ja")
    await running.client.stop_playback("p1")
    assert playback.id == "c1-p1"
    assert running.fake.over_http == [
        ("POST", "channels/c1/play/c1-p1", {"media": ",".join(MEDIA), "lang": "ja"}),
        ("DELETE", "playbacks/p1", {})]
    assert [type(e) for e in running.events] == [Connected, StasisStart]


@pytest.mark.parametrize("running", [{"hold": True}], indirect=True)
async def test_a_request_in_flight_when_the_websocket_drops_is_unavailable(
        running: Running) -> None:
    fake, client = running.fake, running.client
    waiting = asyncio.ensure_future(client.play("c1", MEDIA, playback_id="c1-p1"))
    await until(lambda: len(fake.over_ws) == 2)
    await fake.drop()
    with pytest.raises(AriUnavailable):
        await asyncio.wait_for(waiting, 2)
    await until(lambda: [type(e) for e in running.events].count(Connected) == 2)
    fake.hold = False
    assert (await client.play("c1", MEDIA, playback_id="c1-p2")).id == "c1-p2"
    assert fake.over_ws[-1][:2] == ("POST", "channels/c1/play/c1-p2")


@pytest.mark.parametrize("running", [{"hold": True}], indirect=True)
async def test_a_hang_up_in_flight_when_the_websocket_drops_goes_again_over_http(
        running: Running) -> None:
    """Asterisk is still up: the hang-up (idempotent: a channel gone already is quiet) is
    sent again over HTTP, so the channel is not left parked until the next connect."""
    fake, client = running.fake, running.client
    events, http = (prom.sample("cbgw_ari_requests_total", transport=t)
                    for t in ("events", "http"))
    waiting = asyncio.ensure_future(client.hangup("c1", reason="busy"))
    await until(lambda: len(fake.over_ws) == 2)
    await fake.drop()
    await asyncio.wait_for(waiting, 2)
    assert fake.over_ws[-1] == ("DELETE", "channels/c1", {"reason": "busy"})
    assert fake.over_http == [("DELETE", "channels/c1", {"reason": "busy"})]
    assert prom.sample("cbgw_ari_requests_total", transport="events") == events + 1
    assert prom.sample("cbgw_ari_requests_total", transport="http") == http + 1


async def test_requests_are_counted_by_transport(running: Running) -> None:
    events, http = (prom.sample("cbgw_ari_requests_total", transport=t)
                    for t in ("events", "http"))
    await running.client.play("c1", MEDIA, playback_id="c1-p1")
    await running.client.hangup("c1")
    assert await running.client.get_channel("gone") is None
    assert prom.sample("cbgw_ari_requests_total", transport="events") == events + 2
    assert prom.sample("cbgw_ari_requests_total", transport="http") == http + 1


@pytest.mark.parametrize("running", [{"hold": True}], indirect=True)
async def test_an_unanswered_request_times_out_as_unavailable(running: Running) -> None:
    with pytest.raises(AriUnavailable):
        await running.client.play("c1", MEDIA, playback_id="c1-p1")


async def test_connected_and_the_websocket_path_come_at_once_on_a_quiet_application() -> None:
    """No frame follows the probe's answer (an application at rest, no filter): the events
    do not wait for the probe (an earlier version held ``Connected`` back until the next
    frame or the request timeout), and the prompts go on the websocket as soon as it is
    answered."""
    fake = FakeAri(quiet=True)
    port = free_port()
    await fake.start(port)
    client = AriClient(f"http://127.0.0.1:{port}", "cb", "secret", "callback",
                       request_timeout=30.0, requests_over_events=True)
    await client.start()
    events = client.events()
    try:
        assert isinstance(await asyncio.wait_for(anext(events), 2), Connected)
        reading = asyncio.ensure_future(anext(events))      # the events loop reads on
        await until(lambda: client.requests_on_events, limit_s=2)
        assert (await client.play("c1", MEDIA, playback_id="c1-p1")).id == "c1-p1"
        assert [m for m, _, _ in fake.over_ws] == ["GET", "POST"] and fake.over_http == []
        assert fake.allowed is None                          # no filter set
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    finally:
        await events.aclose()
        await client.close()
        await fake.stop()
