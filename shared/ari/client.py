"""A thin typed asyncio client for the Asterisk REST Interface (ARI).

One ``AriClient`` talks to one Asterisk for one Stasis application::

    client = AriClient(base_url="http://127.0.0.1:8188", username="edge",
                       password="...", app="edge")
    await client.start()                 # never contacts Asterisk; cannot fail when it is down
    async for event in client.events():  # reconnects forever; Connected() after each connect
        ...
    await client.close()

REST calls raise the errors drawn in :mod:`shared.ari.errors`; only
``AriUnavailable`` (transport) is worth retrying. The events iterator never
raises because Asterisk is down: it logs, backs off (capped at
``reconnect_max_s``) and tries again.

Credentials travel in an ``Authorization: Basic`` header built here (aiohttp
3.14 deprecates ``BasicAuth``/``auth=``).

REST over the events websocket (``requests_over_events``): Asterisk 20.14, 21.9 and 22.4
on answer a ``RESTRequest`` sent on the events websocket with a ``RESTResponse`` event
there, the same status and body as over HTTP, without an HTTP request's parsing,
headers and authentication at either end. With it on, the requests a call makes most
(:data:`OVER_EVENTS`: a prompt's ``play``, its stop at a barge-in key, a hang-up) go that way while
the websocket is up and Asterisk answered the probe sent on each connect (a ``GET`` of
the application, answered while the events are read: until then, over HTTP; the event
filter lets ``RESTResponse`` through); otherwise, and for every other request, over HTTP
as before. A request in flight when the websocket drops raises ``AriUnavailable``, as a
lost HTTP connection does, but for a ``DELETE`` (a hang-up, a stop): that one is sent
again over HTTP, as it is idempotent (a channel or playback gone already is quiet), so
a websocket that drops while Asterisk stays up leaves no channel that was to end
parked until the next connect; a request that never left (the websocket closing as it
was sent) goes over HTTP, whatever it is. A request's answer arrives among the events,
so another task must be reading them (``events()``) while it waits, as
:class:`~shared.ari.router.EventRouter` does: a task that awaits such a request and only
then reads the events gets ``AriUnavailable`` at the request timeout.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import aiohttp

from shared.ari.errors import (
    AllocationFailed,
    AriError,
    AriHttpError,
    AriUnavailable,
    ChannelNotFound,
    Conflict,
    NotFound,
)
from shared.ari.events import Connected, Event, Unknown, decode_event
from shared.ari.models import AppState, Bridge, Channel, Endpoint, LiveRecording, Playback
from shared.metrics import common as metrics

log = logging.getLogger("ari.client")
events_log = logging.getLogger("ari.events")

ParamValue = str | int | float | bool | None

#: what a REST response on the events websocket is (an event of its own type)
REST_RESPONSE = "RESTResponse"
#: the requests sent on the events websocket with ``requests_over_events``: the IVR's
#: prompts (each a play, and a stop at the key that cuts one short), most of a call's,
#: and the hang-up of a leg (quick in Asterisk: an originate, which can hold the
#: websocket's reader while the channel is made, stays on HTTP)
OVER_EVENTS = frozenset({"play", "stop_playback", "hangup"})


class _Lost(AriUnavailable):
    """A request on the events websocket that got no answer there: ``sent`` if it left
    before the websocket dropped (Asterisk may have done it), else it never left."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class AriClient:
    """REST calls and the events websocket of one ARI application."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        app: str,
        *,
        request_timeout: float = 5.0,
        reconnect_initial_s: float = 0.1,
        reconnect_max_s: float = 2.0,
        heartbeat_s: float = 5.0,
        events_allowed: Collection[str] = (),
        requests_over_events: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.app = app
        # The event types Asterisk sends this application (its event filter, set on
        # every connect); empty: every type.
        self.events_allowed = tuple(sorted(events_allowed))
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}"}
        self._request_timeout = request_timeout
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._heartbeat_s = heartbeat_s
        self._session: aiohttp.ClientSession | None = None
        # True while the events websocket is up. ``on_disconnect`` is called when it
        # drops: events are lost from then until the next ``Connected``.
        self.connected = False
        self.on_disconnect: Callable[[], None] | None = None
        #: send :data:`OVER_EVENTS` on the events websocket when Asterisk takes them there
        self.requests_over_events = requests_over_events
        # The events websocket while requests may go on it (connected, the probe answered),
        # and the requests sent there awaiting their response, by request id.
        self._rest_ws: aiohttp.ClientWebSocketResponse | None = None
        self._awaiting: dict[str, asyncio.Future[tuple[int, str]]] = {}
        self._request_ids = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the HTTP session. Does not contact Asterisk."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AriClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise RuntimeError("AriClient.start() was not called (or close() was)")
        return self._session

    # ------------------------------------------------------------------ events

    async def events(self) -> AsyncGenerator[Event, None]:
        """Yield decoded events forever, reconnecting whenever the websocket drops.

        Each successful (re)connect sets the application's event filter
        (``events_allowed``), then yields ``Connected``; events that
        happened while disconnected are lost, so the application re-syncs
        (``list_channels``/``application``) on ``Connected``. Only one
        consumer per client.
        """
        session = self._require_session()
        ws_url = self.base_url.replace("http", "ws", 1) + "/ari/events"
        params = {"app": self.app, "subscribeAll": "false"}
        delay = self._reconnect_initial_s
        failures = 0
        connected_before = False
        while True:
            try:
                async with asyncio.timeout(self._request_timeout):
                    ws = await session.ws_connect(ws_url, params=params, headers=self._headers,
                                                  heartbeat=self._heartbeat_s)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("ARI events %s unreachable (%s); retrying every <= %.1f s",
                                self.base_url, _describe(exc), self._reconnect_max_s)
                else:
                    log.debug("ARI events connect attempt %d failed: %s", failures, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reconnect_max_s)
                continue
            log.info("ARI events connected to %s app=%s%s", self.base_url, self.app,
                     f" after {failures} failed attempts" if failures else "")
            failures = 0
            delay = self._reconnect_initial_s
            probe: asyncio.Task[None] | None = None
            try:
                await self._filter_events()
                if self.requests_over_events:
                    # Answered while this loop reads on: the reader never waits for it.
                    probe = asyncio.ensure_future(self._probe_requests(ws))
                self.connected = True
                metrics().ari_connected.set(1)
                metrics().ari_connects.labels("reconnect" if connected_before else "first").inc()
                yield Connected(reconnect=connected_before)
                connected_before = True
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        received = self._received(msg.data)
                        if received is not None:
                            yield received
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        log.warning("ARI events websocket error: %s", ws.exception())
                        break
            finally:
                self.connected = False
                if probe is not None:
                    probe.cancel()
                self._lose_requests()
                metrics().ari_connected.set(0)
                if self.on_disconnect is not None:
                    self.on_disconnect()
                await ws.close()
            log.warning("ARI events websocket to %s closed; reconnecting", self.base_url)
            await asyncio.sleep(delay)

    async def _filter_events(self) -> None:
        """Ask Asterisk to send only ``events_allowed`` (the application exists once its
        websocket is up). Should that fail, every event keeps coming: the router drops
        what nobody reads, at the CPU cost the filter saves."""
        if not self.events_allowed:
            return
        # The filter holds back REST responses too (they are events): with requests on the
        # websocket, it lets them through.
        allowed = (*self.events_allowed, REST_RESPONSE) if self.requests_over_events \
            else self.events_allowed
        try:
            await self.set_event_filter(allowed)
        except AriError as exc:
            log.warning("ARI event filter of app %s not set (%s); receiving every event",
                        self.app, exc)

    @property
    def requests_on_events(self) -> bool:
        """Whether :data:`OVER_EVENTS` go on the events websocket now (it is up and
        Asterisk answered this connection's probe)."""
        return self._rest_ws is not None

    # ------------------------------------------------------------------ REST on the events

    def _received(self, data: str) -> Event | None:
        """An event of the websocket's text frame ``data``; None for a REST response,
        handed to the request awaiting it."""
        try:
            raw = json.loads(data)
        except ValueError:
            return Unknown("", {"invalid_json": data})
        if not isinstance(raw, dict):
            return Unknown("", {"not_an_object": raw})
        if raw.get("type") != REST_RESPONSE:
            return decode_event(raw)
        waiting = self._awaiting.pop(str(raw.get("request_id")), None)
        if waiting is not None and not waiting.done():
            status = raw.get("status_code")
            body = raw.get("message_body")
            waiting.set_result((status if isinstance(status, int) else 500,
                                body if isinstance(body, str) else
                                "" if body is None else json.dumps(body)))
        return None

    async def _probe_requests(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Whether Asterisk answers REST requests on the events websocket ``ws`` (one
        ``GET`` of the application within the request timeout): if so, they go there from
        now on; meanwhile, over HTTP. Its answer arrives through the events loop's reading,
        which never waits for it (an earlier version read the websocket here until the
        answer had come *and* one more frame: on an application with no traffic, such as a
        bench's or a site's at rest, that held ``Connected`` back the whole timeout)."""
        try:
            status, _ = await self._over_events(ws, "GET", f"/applications/{self.app}", {},
                                                None)
        except AriUnavailable as exc:
            status = 0
            reason = str(exc)
        else:
            reason = f"status {status}"
        if status == 200 and not ws.closed:
            log.info("ARI requests of the calls' prompts go on the events websocket")
            self._rest_ws = ws
            return
        log.warning("ARI at %s does not answer REST requests on the events websocket (%s): "
                    "over HTTP", self.base_url, reason)

    def _lose_requests(self) -> None:
        """The events websocket is gone: the requests awaiting on it fail, as a lost
        HTTP connection's do, and the next go over HTTP."""
        self._rest_ws = None
        awaiting, self._awaiting = self._awaiting, {}
        for waiting in awaiting.values():
            if not waiting.done():
                waiting.set_exception(_Lost("ARI events websocket lost", sent=True))

    async def _over_events(self, ws: aiohttp.ClientWebSocketResponse | None, method: str,
                           path: str, query: Mapping[str, str],
                           body: Mapping[str, Any] | None) -> tuple[int, str]:
        """One request on the events websocket ``ws``: its status and body. Raises
        :class:`_Lost` if the websocket drops before the answer, ``AriUnavailable`` if
        none comes within the request timeout."""
        if ws is None or ws.closed:
            raise _Lost(f"ARI {method} {path}: events websocket not connected", sent=False)
        request_id = str(next(self._request_ids))
        uri = path.lstrip("/") + (f"?{urlencode(query)}" if query else "")
        request: dict[str, Any] = {"type": "RESTRequest", "request_id": request_id,
                                   "method": method, "uri": uri}
        if body is not None:
            request["content_type"] = "application/json"
            request["message_body"] = json.dumps(body)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[int, str]] = loop.create_future()
        self._awaiting[request_id] = answer
        try:
            try:
                await ws.send_str(json.dumps(request))
            except (aiohttp.ClientError, OSError) as exc:
                raise _Lost(f"ARI {method} {path}: {_describe(exc)}", sent=False) from exc
            # The timeout: a timer that fails the answer (``asyncio.timeout`` around the
            # await did it with a scope and a timer of its own, at several times the cost).
            expiry = loop.call_later(self._request_timeout, _expire, answer)
            try:
                return await answer
            finally:
                expiry.cancel()
        except _Lost:
            raise               # an AriUnavailable (so an OSError) already
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AriUnavailable(f"ARI {method} {path}: {_describe(exc)}") from exc
        finally:
            self._awaiting.pop(request_id, None)

    # ------------------------------------------------------------------ transport

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, ParamValue] | None = None,
        body: Mapping[str, Any] | None = None,
        *,
        allocation: bool = False,
        over_events: bool = False,
    ) -> Any:
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        if over_events and self._rest_ws is not None:
            metrics().ari_requests.labels("events").inc()
            try:
                status, text = await self._over_events(self._rest_ws, method, path, query,
                                                       body)
            except _Lost as exc:
                if exc.sent and method != "DELETE":
                    raise       # a play may have started: not sent twice
                log.info("ARI %s %s: %s; over HTTP", method, path, exc)
                status, text = await self._over_http(method, path, query, body)
        else:
            status, text = await self._over_http(method, path, query, body)
        if status >= 400:
            raise _http_error(status, text, method, path, allocation=allocation)
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise AriUnavailable(f"ARI {method} {path}: invalid JSON reply") from exc

    async def _over_http(self, method: str, path: str, query: Mapping[str, str],
                         body: Mapping[str, Any] | None) -> tuple[int, str]:
        """One request over HTTP: its status and body."""
        session = self._require_session()
        metrics().ari_requests.labels("http").inc()
        url = f"{self.base_url}/ari{path}"
        try:
            async with asyncio.timeout(self._request_timeout):
                async with session.request(method, url, params=query, json=body,
                                           headers=self._headers) as resp:
                    return resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AriUnavailable(f"ARI {method} {path}: {_describe(exc)}") from exc

    # ------------------------------------------------------------------ channels

    async def originate(
        self,
        endpoint: str,
        *,
        channel_id: str | None = None,
        app_args: Sequence[str] = (),
        caller_id: str | None = None,
        timeout: int = 30,  # noqa: ASYNC109 - ARI's ring timeout, passed to Asterisk
        variables: Mapping[str, str] | None = None,
        originator: str | None = None,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
    ) -> Channel:
        """Originate ``endpoint`` (e.g. ``PJSIP/0901234@carrier-b``) into this app.

        The channel enters Stasis (``StasisStart``) when answered; a failed
        attempt ends with ``ChannelDestroyed(cause=...)``. Raises
        ``AllocationFailed`` when Asterisk cannot even create the channel.
        Pass ``context``/``extension`` to send the answered channel to the
        dialplan instead of the app.
        """
        params: dict[str, ParamValue] = {
            "endpoint": endpoint,
            "channelId": channel_id,
            "callerId": caller_id,
            "timeout": timeout,
            "originator": originator,
        }
        if context is None and extension is None:
            params["app"] = self.app
            params["appArgs"] = ",".join(app_args)
        else:
            params.update(context=context, extension=extension, priority=priority or 1)
        body = {"variables": dict(variables)} if variables else None
        raw = await self._request("POST", "/channels", params, body, allocation=True)
        return Channel.from_json(raw)

    async def create_channel(
        self,
        endpoint: str,
        *,
        channel_id: str,
        app_args: Sequence[str] = (),
        variables: Mapping[str, str] | None = None,
        originator: str | None = None,
    ) -> Channel:
        """Create without dialling. Wait for its ``StasisStart`` before ``dial``."""
        params: dict[str, ParamValue] = {"endpoint": endpoint, "app": self.app,
                                         "appArgs": ",".join(app_args), "channelId": channel_id,
                                         "originator": originator}
        body = {"variables": dict(variables)} if variables else None
        raw = await self._request("POST", "/channels/create", params, body, allocation=True)
        return Channel.from_json(raw)

    async def dial(self, channel_id: str, *, caller: str | None = None,
                   timeout: int | None = None,  # noqa: ASYNC109 - ring timeout for Asterisk
                   ) -> None:
        await self._request("POST", f"/channels/{channel_id}/dial",
                            {"caller": caller, "timeout": timeout})

    async def answer(self, channel_id: str) -> None:
        await self._request("POST", f"/channels/{channel_id}/answer")

    async def ring(self, channel_id: str) -> None:
        """Send 180 Ringing on an unanswered inbound channel."""
        await self._request("POST", f"/channels/{channel_id}/ring")

    async def ring_stop(self, channel_id: str) -> None:
        await self._request("DELETE", f"/channels/{channel_id}/ring")

    async def play(self, channel_id: str, media: Sequence[str], *,
                   playback_id: str | None = None, lang: str | None = None) -> Playback:
        """Play media (``sound:cbgw/received``, ``digits:123``, ...).

        On an unanswered inbound channel this sends 183 and plays early media.
        """
        path = f"/channels/{channel_id}/play" + (f"/{playback_id}" if playback_id else "")
        raw = await self._request("POST", path, {"media": ",".join(media), "lang": lang},
                                  over_events=self.requests_over_events)
        return Playback.from_json(raw)

    async def record(self, channel_id: str, name: str, *, max_duration_s: int = 0,
                     max_silence_s: int = 0, beep: bool = True,
                     terminate_on: str = "#") -> LiveRecording:
        """Record the channel into Asterisk's ``recording`` spool as ``<name>.wav``
        (replacing one of that name); 0: no limit. Its end is ``RecordingFinished``."""
        raw = await self._request("POST", f"/channels/{channel_id}/record", {
            "name": name, "format": "wav", "maxDurationSeconds": max_duration_s,
            "maxSilenceSeconds": max_silence_s, "ifExists": "overwrite",
            "beep": beep, "terminateOn": terminate_on})
        return LiveRecording.from_json(raw)

    async def start_moh(self, channel_id: str) -> None:
        """Music on hold to the channel (its default class) until :meth:`stop_moh`."""
        await self._request("POST", f"/channels/{channel_id}/moh")

    async def stop_moh(self, channel_id: str) -> None:
        await self._request("DELETE", f"/channels/{channel_id}/moh")

    async def stop_playback(self, playback_id: str) -> None:
        try:
            await self._request("DELETE", f"/playbacks/{playback_id}",
                                over_events=self.requests_over_events)
        except NotFound:
            pass

    async def send_dtmf(self, channel_id: str, dtmf: str, *, duration_ms: int | None = None,
                        between_ms: int | None = None) -> None:
        await self._request("POST", f"/channels/{channel_id}/dtmf",
                            {"dtmf": dtmf, "duration": duration_ms, "between": between_ms})

    async def hangup(self, channel_id: str, *, reason: str | None = None,
                     reason_code: int | None = None) -> None:
        """Hang up. ``reason``: normal, busy (486), congestion (503), no_answer (480),
        unallocated (404), ...; or a Q.850 ``reason_code`` (21 -> 403).
        A channel that is already gone is not an error."""
        if reason is not None and reason_code is not None:
            raise ValueError("give reason or reason_code, not both")
        try:
            await self._request("DELETE", f"/channels/{channel_id}",
                                {"reason": reason, "reason_code": reason_code},
                                over_events=self.requests_over_events)
        except ChannelNotFound:
            log.debug("hangup %s: already gone", channel_id)

    async def get_channel(self, channel_id: str) -> Channel | None:
        try:
            raw = await self._request("GET", f"/channels/{channel_id}")
        except ChannelNotFound:
            return None
        return Channel.from_json(raw)

    async def list_channels(self) -> list[Channel]:
        """Every channel on this Asterisk (not only this application's)."""
        raw = await self._request("GET", "/channels")
        return [Channel.from_json(c) for c in raw or []]

    async def get_variable(self, channel_id: str, name: str) -> str | None:
        """A channel variable or function value; ``None`` when absent (HTTP 404/500)."""
        try:
            raw = await self._request("GET", f"/channels/{channel_id}/variable",
                                      {"variable": name})
        except AriHttpError as exc:
            if exc.status in (404, 500):
                return None
            raise
        value = raw.get("value") if isinstance(raw, dict) else None
        return value if isinstance(value, str) else None

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self._request("POST", f"/channels/{channel_id}/variable",
                            {"variable": name, "value": value})

    async def continue_in_dialplan(self, channel_id: str, *, context: str | None = None,
                                   extension: str | None = None, priority: int | None = None,
                                   label: str | None = None) -> None:
        await self._request("POST", f"/channels/{channel_id}/continue",
                            {"context": context, "extension": extension,
                             "priority": priority, "label": label})

    # ------------------------------------------------------------------ bridges

    async def create_bridge(self, bridge_id: str, *, type: str = "mixing",
                            name: str | None = None) -> Bridge:
        """Create a bridge. Use ``mixing,dtmf_events`` to keep DTMF events flowing."""
        raw = await self._request("POST", f"/bridges/{bridge_id}", {"type": type, "name": name})
        return Bridge.from_json(raw)

    async def add_channel(self, bridge_id: str, channel_ids: str | Sequence[str]) -> None:
        ids = [channel_ids] if isinstance(channel_ids, str) else list(channel_ids)
        await self._request("POST", f"/bridges/{bridge_id}/addChannel",
                            {"channel": ",".join(ids)})

    async def remove_channel(self, bridge_id: str, channel_id: str) -> None:
        await self._request("POST", f"/bridges/{bridge_id}/removeChannel",
                            {"channel": channel_id})

    async def destroy_bridge(self, bridge_id: str) -> None:
        try:
            await self._request("DELETE", f"/bridges/{bridge_id}")
        except NotFound:
            log.debug("destroy_bridge %s: already gone", bridge_id)

    async def list_bridges(self) -> list[Bridge]:
        raw = await self._request("GET", "/bridges")
        return [Bridge.from_json(b) for b in raw or []]

    # ------------------------------------------------------------------ system

    async def application(self) -> AppState:
        """What Asterisk says this application owns (channels, bridges)."""
        return AppState.from_json(await self._request("GET", f"/applications/{self.app}"))

    async def set_event_filter(self, allowed: Collection[str]) -> AppState:
        """Only ``allowed`` event types reach this application (empty: every type)."""
        body = {"allowed": [{"type": kind} for kind in allowed], "disallowed": []}
        return AppState.from_json(
            await self._request("PUT", f"/applications/{self.app}/eventFilter", body=body))

    async def asterisk_info(self) -> dict[str, Any]:
        raw = await self._request("GET", "/asterisk/info")
        return dict(raw) if isinstance(raw, dict) else {}

    async def system_name(self) -> str | None:
        """The Asterisk's ``systemname`` (``asterisk.conf``), else its entity id."""
        info = await self.asterisk_info()
        config, system = info.get("config"), info.get("system")
        name = (config.get("name") if isinstance(config, dict) else None) or \
            (system.get("entity_id") if isinstance(system, dict) else None)
        return str(name) if name else None

    async def put_config(self, config_class: str, object_type: str, object_id: str,
                         fields: Sequence[tuple[str, str]]) -> None:
        """Create or replace a sorcery object (ARI push configuration: the type needs a
        writable wizard such as ``memory`` in sorcery.conf; 403 otherwise). The reply,
        every field of the object, is dropped: it may hold secrets."""
        await self._request(
            "PUT", f"/asterisk/config/dynamic/{config_class}/{object_type}/{object_id}",
            body={"fields": [{"attribute": a, "value": v} for a, v in fields]})

    async def delete_config(self, config_class: str, object_type: str, object_id: str
                            ) -> bool:
        """Delete a pushed sorcery object; False if Asterisk has none of that id."""
        try:
            await self._request(
                "DELETE", f"/asterisk/config/dynamic/{config_class}/{object_type}/{object_id}")
        except NotFound:
            return False
        return True

    async def list_endpoints(self, technology: str) -> list[Endpoint]:
        """Every endpoint of ``technology`` (``PJSIP``), from config files or pushed."""
        raw = await self._request("GET", f"/endpoints/{technology}")
        return [Endpoint.from_json(e) for e in raw or [] if isinstance(e, dict)]

    async def get_endpoint(self, technology: str, resource: str) -> Endpoint | None:
        """``state`` is ``online`` once a qualified trunk answers OPTIONS."""
        try:
            raw = await self._request("GET", f"/endpoints/{technology}/{resource}")
        except NotFound:
            return None
        return Endpoint.from_json(raw)


def _expire(answer: asyncio.Future[tuple[int, str]]) -> None:
    """A request's answer did not come within the request timeout."""
    if not answer.done():
        answer.set_exception(TimeoutError())


def _param(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _http_error(status: int, text: str, method: str, path: str, *,
                allocation: bool) -> AriHttpError:
    message = text
    try:
        raw = json.loads(text)
        if isinstance(raw, dict) and isinstance(raw.get("message"), str):
            message = raw["message"]
    except ValueError:
        pass
    cls: type[AriHttpError] = AriHttpError
    if status == 404:
        cls = ChannelNotFound if path.startswith("/channels") else NotFound
    elif status == 409:
        cls = Conflict
    elif status == 500 and allocation:
        cls = AllocationFailed
    return cls(status, message, method=method, path=path)
