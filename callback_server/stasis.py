"""ARI adapter, per process: the events websocket and the routing of its events.

:class:`StasisApp` reads the events websocket and routes each event to the call
runner that owns its channel (:class:`~callback_server.call_runner.CallRunner`,
one per round). On every (re)connect it re-syncs: the consultations a crashed predecessor left
talking are ended (:mod:`callback_server.consult_live`), channels of our application
that no running call owns are hung up (a crashed predecessor's legs, parked in
Stasis), and running calls check that their legs still exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime

from callback_server.call_ports import utcnow
from callback_server.call_runner import CallRunner
from callback_server.click_runner import ClickRunner
from callback_server.legrecord import LegRecords
from shared import ari
from shared.db import holding

log = logging.getLogger("callback.stasis")

#: the ARI event types the call-back site reads (legs' progress, ends and answers; the
#: IVR's digits, playbacks and recordings): the application's event filter, so Asterisk
#: sends no other
EVENTS_USED = ari.event_types(
    ari.StasisStart, ari.StasisEnd, ari.ChannelHangupRequest, ari.ChannelDestroyed,
    ari.ChannelStateChange, ari.ChannelDtmfReceived, ari.PlaybackFinished,
    ari.RecordingFinished, ari.RecordingFailed)


class StasisApp:
    """Reads the events websocket for the whole process; re-syncs on every (re)connect."""

    def __init__(self, client: ari.AriClient,
                 runners: Callable[[], Mapping[str, CallRunner | ClickRunner]], *,
                 records: LegRecords | None = None,
                 settle_stray: Callable[[ari.Channel], Awaitable[None]] | None = None,
                 identified: Callable[[str], None] | None = None,
                 reconcile: Callable[[Collection[str]], Awaitable[object]] | None = None
                 ) -> None:
        self.client = client
        # The calls' prompts (a play each, a stop at the key that cuts one short: most of
        # a call-back's ARI requests) on the events websocket this app reads, where the
        # Asterisk takes REST requests (22.4 on; else over HTTP): no HTTP request each.
        client.requests_over_events = True
        self.runners = runners
        # Lookups of Asterisk's leg records arrive as StasisStarts of our own.
        self.records = records
        # Settles a leg parked in our app that no call owns (hang-up, then its end and
        # CDR from Asterisk's record), so the job's rescue never mistakes an answered
        # call for one that never rang. Without it, strays are only hung up.
        self.settle_stray = settle_stray
        # Told the Asterisk's systemname on every connect (legs record where they live).
        self.identified = identified
        # Ends the consultations a dead server left talking (given the call-backs that
        # run here), before the strays are hung up: it tells which leg ended first.
        self.reconcile = reconcile
        self.router = ari.EventRouter(on_stasis_start=self._stray, on_connected=self._connected)
        self.ready = asyncio.Event()
        # While the events websocket is down, no job may originate: its events would
        # be lost. Ready again on the next Connected, after the re-sync.
        client.on_disconnect = self._lost
        #: when the events websocket was lost (None while connected): a leg that vanished
        #: meanwhile with no record was last known up then
        self.lost_at: datetime | None = None
        self.connects = 0

    def _lost(self) -> None:
        self.ready.clear()
        if self.lost_at is None:
            self.lost_at = utcnow()

    async def run(self) -> None:
        with holding("ari_events"):     # what the events' handlers write (a resync ...)
            await self.router.run(self.client.events())

    async def _connected(self, event: ari.Connected) -> None:
        self.connects += 1
        log.info("ARI connected (%s)", "reconnect" if event.reconnect else "first connect")
        try:
            await self._identify()
            await self._resync()
        finally:
            self.lost_at = None
            self.ready.set()        # jobs may originate again

    async def _identify(self) -> None:
        if self.identified is None:
            return
        try:
            name = await self.client.system_name()
        except ari.AriError as exc:
            log.warning("cannot read the Asterisk's name: %s", exc)
            return
        if name:
            self.identified(name)

    async def _resync(self) -> None:
        try:
            state = await self.client.application()
        except ari.AriError as exc:
            log.warning("re-sync after connect failed: %s", exc)
            return
        if self.reconcile is not None:
            await self.reconcile(set(self.runners()))
        owned = self.router.channel_ids
        for cid in state.channel_ids:
            if cid not in owned:
                await self._hang_up_stray(cid)
        for runner in list(self.runners().values()):
            await runner.resync(self.lost_at)

    async def _hang_up_stray(self, cid: str) -> None:
        """A channel parked in our app that no running call owns: a lost job's leg."""
        try:
            channel = await self.client.get_channel(cid)
        except ari.AriError as exc:
            log.warning("cannot ask about stray %s: %s", cid, exc)
            return
        if channel is None:
            return
        log.warning("hanging up %s (%s): parked in our Stasis app, owned by no call",
                    cid, channel.state)
        await self._end_stray(channel)

    async def _end_stray(self, channel: ari.Channel) -> None:
        if self.settle_stray is not None:
            try:
                await self.settle_stray(channel)
            except Exception:
                log.exception("settling stray %s failed", channel.id)
            return
        try:
            await self.client.hangup(channel.id)
        except ari.AriError as exc:
            log.warning("hang-up of stray %s failed: %s", channel.id, exc)

    async def _stray(self, start: ari.StasisStart, _queue: asyncio.Queue[ari.Event]) -> None:
        """A channel entered our app that no call originated: a leg-record lookup, an
        inbound call, or a lost job's leg answered after its worker died."""
        if self.records is not None and self.records.on_stasis_start(start):
            try:
                await self.client.hangup(start.channel.id)
            except ari.AriError:
                pass
            return
        log.warning("hanging up %s (%s): entered Stasis unowned", start.channel.id,
                    start.channel.name)
        await self._end_stray(start.channel)
