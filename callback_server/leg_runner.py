"""A round's legs against ARI and the store: the leg commands of the pure machines.

:class:`Legs` runs the commands that place, hang up, time, bridge and account for legs
(``PersistAttempt`` awaited and committed before the ``Originate`` that follows it: a leg
the guard refuses is never dialled and comes back as ``OriginateRefused``; an originate
that fails comes back as ``OriginateFailed``, one that succeeds as ``Originated``, each
before any other event). It is shared by a call-back round
(:class:`~callback_server.call_runner.CallRunner`) and a web click-to-call round
(:class:`~callback_server.click_runner.ClickRunner`); :func:`leg_event` reads a leg's
answer and end from ARI events, and :func:`resync_legs` catches up on them after the
events websocket was down, for both.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import InvalidOperation
from typing import cast

from callback_server.call_ports import (
    AriPort,
    CallContext,
    CallStore,
    Inbox,
    LegRecordSource,
    Rater,
    Timers,
    safely,
    utcnow,
)
from callback_server.cdr_rating import logged, rate_cdr, store_cdr
from callback_server.dialer import Leg
from callback_server.dialer_messages import (
    Answered,
    CancelTimer,
    ChannelGone,
    CreateBridge,
    DestroyBridge,
    Hangup,
    Job,
    Originate,
    Originated,
    OriginateFailed,
    OriginateRefused,
    PersistAttempt,
    RecordCdr,
    RecordLegResult,
    StartTimer,
    TimerFired,
)
from callback_server.guard.reasons import GuardRefused
from callback_server.legrecord import answer_time
from callback_server.store.leg_end import LegEnd, StoredCdr
from shared import ari
from shared.db import holding
from shared.phone import E164

log = logging.getLogger("callback.stasis")

NORMAL = 16

LegCommand = (PersistAttempt | Originate | Hangup | StartTimer | CancelTimer | RecordLegResult
              | CreateBridge | DestroyBridge | RecordCdr)


class Legs:
    """The leg commands of one round; what they report goes first into ``pending``."""

    def __init__(self, job: Job, ctx: CallContext, *, client: AriPort, router: ari.EventRouter,
                 store: CallStore, rater: Rater, timers: Timers,
                 inbox: Inbox, pending: deque[object],
                 originated: Callable[[str], None] = lambda _channel_id: None) -> None:
        self.job = job
        self.ctx = ctx
        self.client = client
        self.router = router
        self.store = store
        self.rater = rater
        self.timers = timers
        # where the router puts our channels' ARI events: the round's inbox itself, beside
        # its timers and controls (no task of ours moves them there, one turn of the event
        # loop an event)
        self.inbox = inbox
        self.pending = pending           # the round's follow-up events, handled first
        self.originated = originated     # a leg was dialled (its channel id)
        self.refused: set[str] = set()   # legs the guard refused: never originated
        #: every channel id the round routed to its inbox (:meth:`_persist`): what its end
        #: stops routing (:meth:`release`)
        self.routed: set[str] = set()

    @property
    def _events(self) -> asyncio.Queue[ari.Event]:
        """The inbox as the router's queue of a channel: the router only puts events in
        (``put_nowait``), which an inbox of anything takes."""
        return cast("asyncio.Queue[ari.Event]", self.inbox)

    async def run(self, cmd: LegCommand) -> None:  # noqa: C901 - one branch per command type
        match cmd:
            case PersistAttempt():
                with holding("persist"):
                    await self._persist(cmd)
            case Originate():
                await self._originate(cmd)
            case Hangup(channel_id=cid, reason=reason):
                await safely(self.client.hangup(cid, reason=reason))
            case StartTimer(name=name, seconds=seconds):
                self.timers.start(name, seconds, fired(name))
            case CancelTimer(name=name):
                self.timers.cancel(name)
            case RecordLegResult(channel_id=cid, status=status, cause=cause):
                with holding("leg_result"):
                    await self.store.leg_result(cid, status, cause)
            case CreateBridge():
                await self._bridge(cmd)
            case DestroyBridge(bridge_id=bridge):
                await safely(self.client.destroy_bridge(bridge))
            case RecordCdr():
                with holding("cdr"):
                    await store_cdr(self.store, self.rater, cmd, destination=self._called(cmd),
                                inbound_tariff=self.ctx.inbound_tariff,
                                edge_call_id=self.ctx.edge_call_id,
                                merchant_id=self.job.merchant_id)

    def rated(self, cmd: RecordCdr) -> StoredCdr:
        """A leg's CDR rated, to be stored with the leg's end (:meth:`end`, or its
        round's finish)."""
        return rate_cdr(self.rater, cmd, destination=self._called(cmd),
                        inbound_tariff=self.ctx.inbound_tariff,
                        edge_call_id=self.ctx.edge_call_id, merchant_id=self.job.merchant_id)

    async def end(self, ended: LegEnd) -> None:
        """A leg's result and its CDR, in one transaction."""
        with holding("leg_end"):
            await self.store.end_leg(ended)
        if ended.cdr is not None:
            logged(ended.cdr.cdr)

    def _called(self, cmd: RecordCdr) -> E164:
        """The number a leg called: a transfer's leg a flow's number, else the customer."""
        return E164.parse(cmd.destination) if cmd.leg == "transfer" else self.job.destination

    def release(self) -> None:
        """Stop routing the round's channels (at its end): exactly those it routed, not
        a scan of every live call's."""
        for cid in self.routed:
            self.router.release(cid)
        self.routed.clear()

    async def _persist(self, cmd: PersistAttempt) -> None:
        self.router.subscribe(cmd.channel_id, self._events)
        self.routed.add(cmd.channel_id)
        self.refused.discard(cmd.channel_id)    # a refused leg's id is used again
        try:
            await self.store.persist_leg(cmd, self.job.merchant_id)
        except GuardRefused as refused:
            log.warning("leg %s via %s refused: %s", cmd.channel_id, cmd.carrier_id,
                        refused.verdict)
            self.router.release(cmd.channel_id)
            self.refused.add(cmd.channel_id)
            self.pending.appendleft(OriginateRefused(
                cmd.channel_id, refused.verdict.reason, refused.retry_in_s or 30, utcnow()))

    async def _originate(self, cmd: Originate) -> None:
        if cmd.channel_id in self.refused:
            return                  # its PersistAttempt was refused: never dial it
        try:
            await self.client.originate(cmd.endpoint, channel_id=cmd.channel_id,
                                        app_args=list(cmd.app_args), caller_id=cmd.caller_id,
                                        timeout=cmd.timeout_s,
                                        variables=dict(cmd.variables) or None)
        except ari.AllocationFailed as exc:
            log.warning("originate %s via %s: allocation failed", cmd.channel_id, cmd.endpoint)
            self.pending.appendleft(OriginateFailed(cmd.channel_id, str(exc), utcnow()))
            return
        except ari.AriUnavailable as exc:
            if not await self._placed_anyway(cmd, exc):
                self.pending.appendleft(OriginateFailed(cmd.channel_id, str(exc), utcnow()))
                return
        except ari.AriError as exc:
            log.warning("originate %s via %s failed: %s", cmd.channel_id, cmd.endpoint, exc)
            self.pending.appendleft(OriginateFailed(cmd.channel_id, str(exc), utcnow()))
            return
        log.info("originated %s via %s", cmd.channel_id, cmd.endpoint)
        self.originated(cmd.channel_id)
        self.pending.appendleft(Originated(cmd.channel_id, utcnow()))

    async def _placed_anyway(self, cmd: Originate, exc: ari.AriUnavailable) -> bool:
        """No answer to the originate (Asterisk's, or the way to it, too slow or down): it
        may have placed the leg all the same, and the customer may be answering it. The
        channel's id is ours: a leg that exists goes on as dialled (its answer and end
        come as events, routed to this round since its persist); one that does not is
        hung up by that id all the same (a request still on its way would otherwise
        place a leg no round follows) and fails over as a failed originate."""
        try:
            placed = await self.client.get_channel(cmd.channel_id) is not None
        except ari.AriError:
            placed = False
        if placed:
            log.warning("originate %s via %s: no answer (%s), but the leg is up",
                        cmd.channel_id, cmd.endpoint, exc)
            return True
        log.warning("originate %s via %s failed: %s", cmd.channel_id, cmd.endpoint, exc)
        await safely(self.client.hangup(cmd.channel_id))
        return False

    async def _bridge(self, cmd: CreateBridge) -> None:
        try:
            await self.client.create_bridge(cmd.bridge_id, type=cmd.bridge_type)
            await self.client.add_channel(cmd.bridge_id, list(cmd.channel_ids))
        except ari.AriError as exc:
            log.error("bridge %s failed: %s; ending the operator leg", cmd.bridge_id, exc)
            await safely(self.client.hangup(cmd.channel_ids[-1]))


def leg_event(event: object, causes: dict[str, int]) -> Answered | ChannelGone | None:
    """A leg's answer or end in an ARI event (None: neither). A hang-up request's cause
    is kept in ``causes`` for the ``StasisEnd`` that follows (a soft request's "cause" is
    Asterisk's soft-hangup flag, 32 = explicit, not Q.850)."""
    if isinstance(event, ari.StasisStart):
        log.debug("%s answered", event.channel.id)
        return Answered(event.channel.id, event.timestamp or utcnow())
    if isinstance(event, ari.ChannelHangupRequest):
        if event.cause is not None and not event.soft:
            causes[event.channel.id] = event.cause
        return None
    if isinstance(event, ari.ChannelDestroyed):
        return ChannelGone(event.channel.id, event.cause, event.timestamp or utcnow())
    if isinstance(event, ari.StasisEnd):
        return ChannelGone(event.channel.id, causes.get(event.channel.id, NORMAL),
                           event.timestamp or utcnow())
    return None


def fired(name: str) -> Callable[[], object]:
    return lambda: TimerFired(name, utcnow())


async def resync_legs(legs: Iterable[Leg | None], *, client: AriPort,
                      records: LegRecordSource | None, causes: Mapping[str, int],
                      inbox: Inbox, lost_at: datetime | None) -> None:
    """Catch up on what a round's legs did while the events websocket was down.

    A leg answered meanwhile is reported answered; a leg that ended meanwhile is
    reported gone, with Asterisk's own answer and end times and cause when it
    recorded them (so an answered call still gets its CDR). A leg Asterisk has no
    record of died with it (killed or crashed: its hangup handler never ran); it is
    reported gone at ``lost_at``, when the events websocket was lost: the last moment
    the leg is known to have been up, so the customer is never billed for the outage.
    """
    for leg in legs:
        if leg is None or leg.ended:
            continue
        cid = leg.channel_id
        try:
            channel = await client.get_channel(cid)
        except ari.AriError:
            continue
        if channel is not None:
            if channel.state == "Up" and leg.answered_at is None:
                log.warning("%s was answered while the events websocket was down", cid)
                inbox.put_nowait(Answered(cid, await _answer_time(client, cid)))
            continue
        record = None
        if records is not None:
            try:
                record = await records.fetch(cid, leg.started_at)
            except (ari.AriError, TimeoutError) as exc:
                log.warning("no leg record of %s: %s", cid, exc)
        log.warning("%s ended while the events websocket was down (%s)", cid,
                    record or "Asterisk has no record of it")
        if record is not None and record.answered_at is not None \
                and leg.answered_at is None:
            inbox.put_nowait(Answered(cid, record.answered_at))
        ended = record.ended_at if record is not None else None
        cause = record.cause if ended is not None and record is not None \
            else causes.get(cid, 0)
        now = utcnow()
        if ended is not None:
            ended_at = ended
        elif lost_at is not None:   # never before the leg began, nor after now
            ended_at = min(now, max(lost_at, leg.answered_at or leg.started_at))
        else:
            ended_at = now
        inbox.put_nowait(ChannelGone(cid, cause, ended_at))


async def _answer_time(client: AriPort, cid: str) -> datetime:
    """When Asterisk answered ``cid`` (its CDR), else now."""
    try:
        answered_at = answer_time(await client.get_variable(cid, "CDR(answer,u)"))
    except (ari.AriError, InvalidOperation):
        answered_at = None
    return answered_at or utcnow()
