"""What every call task at the edge does with its channel, whichever machine it runs.

A :class:`ChannelSession` owns one inbound channel's inbox of machine events: the
ARI events it translates (the caller hung up, our playback finished), timer
expiries and the results of slow steps run as child tasks. It plays prompts,
hangs up, reads channel variables and keeps the guard timers; the sessions built on
it (:class:`edge_server.stasis.CallSession` for customers,
:class:`edge_server.presence_stasis.PresenceSession` for advisors calling a presence
number) feed their own pure machine and execute its commands.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import unquote

from edge_server.flow_messages import CallerHungUp, PlaybackFinished, Timeout
from shared import ari
from shared.language import Language

log = logging.getLogger("edge.stasis")

PRESENTATION_VAR = "CALLERID(pres)"
PAI_VAR = "PJSIP_HEADER(read,P-Asserted-Identity)"
#: what the dialplan passes after ``inbound`` (the PAI URI-encoded: it may hold commas)
HEADER_ARGS = (PRESENTATION_VAR, PAI_VAR)
_PAI_USER = re.compile(r"<?\s*(?:sips?|tel):([^@;>\s]+)", re.IGNORECASE)

#: what a machine's inbox holds: its own events and these, which every session makes
E = TypeVar("E")
ChannelEvent = CallerHungUp | PlaybackFinished | Timeout


def asserted_number(header: str | None) -> str | None:
    """The user part of a P-Asserted-Identity header (``<sip:+81...@host>``, ``<tel:...>``)."""
    if not header:
        return None
    match = _PAI_USER.search(header)
    return match.group(1) if match else None


class AriGateway(Protocol):
    """The part of ``shared.ari.AriClient`` the edge uses."""

    async def answer(self, channel_id: str) -> None: ...
    async def play(self, channel_id: str, media: Sequence[str], *,
                   playback_id: str | None = None, lang: str | None = None) -> ari.Playback: ...
    async def hangup(self, channel_id: str, *, reason: str | None = None,
                     reason_code: int | None = None) -> None: ...
    async def get_variable(self, channel_id: str, name: str) -> str | None: ...
    async def get_channel(self, channel_id: str) -> ari.Channel | None: ...
    async def continue_in_dialplan(self, channel_id: str, *, context: str | None = None,
                                   extension: str | None = None, priority: int | None = None,
                                   label: str | None = None) -> None: ...
    async def application(self) -> ari.AppState: ...


class ChannelSession(Generic[E]):
    """One inbound channel's inbox, timers, child tasks, prompts and hang-up."""

    def __init__(self, gateway: AriGateway, start: ari.StasisStart,
                 ari_queue: asyncio.Queue[ari.Event]) -> None:
        self.gateway = gateway
        self.channel = start.channel
        self.stasis_args = start.args
        self.channel_id = start.channel.id
        self.ari_queue = ari_queue
        self.inbox: asyncio.Queue[E | ChannelEvent] = asyncio.Queue()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._children: set[asyncio.Task[None]] = set()
        self._playback_ids = (f"{self.channel_id}-pb{n}" for n in itertools.count(1))
        self._playback: str | None = None

    def notify_gone(self) -> None:
        """The channel vanished while events were lost (found by a re-sync)."""
        self.inbox.put_nowait(CallerHungUp())

    def _start_forwarding(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._forward_ari_events(), name=f"ari-in {self.channel_id}")

    def _stop(self, forwarder: asyncio.Task[None]) -> None:
        """The call is over: its forwarder, timers and child tasks go."""
        forwarder.cancel()
        for handle in self._timers.values():
            handle.cancel()
        for child in self._children:
            child.cancel()

    async def _forward_ari_events(self) -> None:
        while True:
            translated = self._translate(await self.ari_queue.get())
            if translated is not None:
                self.inbox.put_nowait(translated)

    def _translate(self, event: ari.Event) -> ChannelEvent | None:
        match event:
            case ari.StasisEnd():
                # the channel left the application, whatever ended it (the caller, our
                # hang-up, a destroy): Asterisk always sends it, so the hang-up request
                # and the destroy before it are not asked for (``EVENTS_USED``)
                return CallerHungUp()
            case ari.PlaybackFinished(playback=playback) if playback.id == self._playback:
                self._playback = None
                return PlaybackFinished(failed=playback.state == "failed")
        return None

    async def _caller_headers(self) -> tuple[str | None, str | None]:
        """The caller's presentation (``CALLERID(pres)``) and asserted number (PAI).

        The edge's dialplan passes both as the Stasis arguments after the first
        (``Stasis(edge,inbound,${CALLERID(pres)},${URIENCODE(${PJSIP_HEADER(read,
        P-Asserted-Identity)})})``), so no request to Asterisk is needed; a channel that
        came without them (another dialplan) has them read over ARI."""
        if len(self.stasis_args) >= len(HEADER_ARGS) + 1:
            given = self.stasis_args[1]
            return given or None, asserted_number(unquote(self.stasis_args[2]))
        pres, pai = await asyncio.gather(self._variable(PRESENTATION_VAR),
                                         self._variable(PAI_VAR))
        return pres, asserted_number(pai)

    async def _variable(self, name: str) -> str | None:
        try:
            return await self.gateway.get_variable(self.channel_id, name)
        except ari.AriError as exc:
            log.warning("cannot read %s: %s", name, exc)
            return None

    def _start_timer(self, name: str, seconds: float) -> None:
        self._cancel_timer(name)
        self._timers[name] = asyncio.get_running_loop().call_later(
            seconds, self.inbox.put_nowait, Timeout(name))

    def _cancel_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"{what} {self.channel_id}")
        self._children.add(task)
        task.add_done_callback(self._children.discard)

    async def _play(self, media: str, language: Language) -> None:
        playback_id = next(self._playback_ids)
        self._playback = playback_id
        try:
            await self.gateway.play(self.channel_id, [media], playback_id=playback_id,
                                    lang=language.value)
        except ari.ChannelNotFound:
            log.info("gone before %s could play", media)
            self.inbox.put_nowait(CallerHungUp())
        except ari.AriError as exc:
            log.warning("cannot play %s: %s", media, exc)
            self.inbox.put_nowait(PlaybackFinished(failed=True))

    async def _ari_step(self, what: str, step: Awaitable[None]) -> None:
        try:
            await step
        except ari.ChannelNotFound:
            log.info("%s on a channel that is gone", what)
            self.inbox.put_nowait(CallerHungUp())
        except ari.AriError as exc:
            log.warning("%s failed: %s", what, exc)

    async def _safe_hangup(self, reason: str) -> None:
        try:
            await self.gateway.hangup(self.channel_id, reason=reason)
        except ari.AriError as exc:
            log.warning("hangup(%s) failed: %s", reason, exc)
