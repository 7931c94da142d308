"""ARI adapter: runs one call-back round as one asyncio task.

:class:`CallRunner` owns the round's dialer state, the IVR state once the
customer answers, its timers and one inbox. ARI events for its channels reach
the inbox through the :class:`~shared.ari.router.EventRouter` (subscribed
*before* each originate, so no event is missed); timers and follow-up events
go to the same inbox, so the two pure machines see one ordered stream.

Commands run one at a time, in order. ``PersistAttempt`` is awaited (and
committed) before the ``Originate`` that follows it; if our lease on the job
is gone, nothing is dialled.

:class:`StasisApp` is the per-process side: it reads the events websocket,
and on every (re)connect re-syncs: channels of our application that no
running call owns are hung up (a crashed predecessor's legs, parked in
Stasis), and running calls check that their legs still exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import InvalidOperation
from typing import Protocol

from callback_server import dialer, ivr
from callback_server.dialer import DialerState, Phase
from callback_server.dialer_messages import (
    Answered,
    Begin,
    CancelTimer,
    ChannelGone,
    Command,
    CreateBridge,
    DestroyBridge,
    EndCall,
    Finish,
    Hangup,
    Job,
    OperatorRequested,
    Originate,
    Originated,
    OriginateFailed,
    OriginateRefused,
    PersistAttempt,
    Reason,
    RecordCdr,
    RecordLegResult,
    Route,
    Shutdown,
    StartIvr,
    StartTimer,
    TimerFired,
)
from callback_server.dialer_messages import Event as DialerEvent
from callback_server.guard.reasons import GuardRefused
from callback_server.ivr_flow import Flow
from callback_server.legrecord import LegRecord, LegRecords, answer_time
from callback_server.store.queue_store import LeaseLost
from shared import ari
from shared.money import Money
from shared.phone import E164

log = logging.getLogger("callback.stasis")

NORMAL = 16


def utcnow() -> datetime:
    return datetime.now(UTC)


class CallStore(Protocol):
    async def persist_leg(self, cmd: PersistAttempt, merchant_id: str) -> None: ...
    async def leg_result(self, channel_id: str, status: str, cause: int | None) -> None: ...
    async def record_cdr(self, cdr: RecordCdr, *, edge_call_id: str, merchant_id: str,
                         billed_s: int, carrier_cost: Money | None,
                         direct_cost: Money | None) -> bool: ...
    async def record_info(self, submit: ivr.Submit, *, callback_id: str, edge_call_id: str,
                          merchant_id: str, caller: E164, collected_at: datetime,
                          seq: int) -> str: ...
    async def finish(self, callback_id: str, outcome: Finish) -> bool: ...


class LegRecordSource(Protocol):
    """Asterisk's own record of a leg (``callback_server.legrecord.LegRecords``)."""

    async def fetch(self, channel_id: str, started_at: datetime) -> LegRecord | None: ...


class Rater(Protocol):
    """Prices a finished leg: (carrier cost, billed seconds) and the direct counterfactual."""

    def leg_cost(self, carrier_id: str, number: E164, at: datetime,
                 duration_s: int) -> tuple[Money | None, int]: ...
    def direct_cost(self, inbound_tariff: str, number: E164, at: datetime,
                    duration_s: int) -> Money | None: ...


class RoundObserver(Protocol):
    """The guard's view of a round's end (``Guard.round_ended``)."""

    async def round_ended(self, *, callback_id: str, attempt_no: int, number: E164,
                          merchant_id: str, rang: bool, confirmed: bool) -> None: ...


class AriPort(Protocol):
    async def originate(self, endpoint: str, *, channel_id: str | None = None,
                        app_args: tuple[str, ...] | list[str] = (),
                        caller_id: str | None = None,
                        timeout: int = 30,  # noqa: ASYNC109
                        variables: Mapping[str, str] | None = None) -> ari.Channel: ...
    async def hangup(self, channel_id: str, *, reason: str | None = None) -> None: ...
    async def play(self, channel_id: str, media: tuple[str, ...] | list[str], *,
                   playback_id: str | None = None) -> ari.Playback: ...
    async def stop_playback(self, playback_id: str) -> None: ...
    async def create_bridge(self, bridge_id: str, *, type: str = "mixing") -> ari.Bridge: ...
    async def add_channel(self, bridge_id: str, channel_ids: str | list[str]) -> None: ...
    async def destroy_bridge(self, bridge_id: str) -> None: ...
    async def get_channel(self, channel_id: str) -> ari.Channel | None: ...
    async def get_variable(self, channel_id: str, name: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class CallContext:
    edge_call_id: str
    inbound_tariff: str
    flow: Flow


Inbox = asyncio.Queue[object]


class CallRunner:
    """One round of one job: dialer + IVR driven by ARI events."""

    def __init__(self, job: Job, ctx: CallContext, *, client: AriPort, router: ari.EventRouter,
                 store: CallStore, rater: Rater, guard: RoundObserver | None = None,
                 records: LegRecordSource | None = None) -> None:
        self.job = job
        self.records = records           # Asterisk's own leg records (after missed events)
        self.guard = guard
        self.confirmed = False           # the customer passed the flow's confirm gate
        self.rang = False                # a customer leg was originated this round
        self._refused: set[str] = set()  # legs the guard refused: never originated
        self.ctx = ctx
        self.client = client
        self.router = router
        self.store = store
        self.rater = rater
        self.state = DialerState.new(job)
        self.ivr: ivr.IvrState | None = None
        self.inbox: Inbox = asyncio.Queue()
        self._ari_queue: asyncio.Queue[ari.Event] = asyncio.Queue()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._pending: deque[object] = deque()
        self._hangup_causes: dict[str, int] = {}
        self._submits = 0
        self.outcome: Finish | None = None

    @property
    def channel_ids(self) -> tuple[str, ...]:
        legs = (self.state.customer, self.state.operator)
        return tuple(leg.channel_id for leg in legs if leg is not None and not leg.ended)

    async def run(self, routes: tuple[Route, ...]) -> Finish | None:
        pump = asyncio.create_task(self._pump(), name=f"pump {self.job.callback_id}")
        try:
            self._pending.append(Begin(routes, utcnow()))
            while self.state.phase is not Phase.DONE:
                event = self._pending.popleft() if self._pending else await self.inbox.get()
                await self._handle(event)
        except LeaseLost as exc:
            log.error("%s; abandoning the round without dialling", exc)
            await self._hangup_all()
        finally:
            pump.cancel()
            for handle in self._timers.values():
                handle.cancel()
            for cid in {c for c in self.router.channel_ids if c.startswith(self.job.callback_id)}:
                self.router.release(cid)
        return self.outcome

    def shutdown(self) -> None:
        self.inbox.put_nowait(Shutdown(utcnow()))

    async def resync(self, lost_at: datetime | None = None) -> None:
        """After an events reconnect: catch up on what our legs did meanwhile.

        A leg answered meanwhile is reported answered; a leg that ended meanwhile is
        reported gone, with Asterisk's own answer and end times and cause when it
        recorded them (so an answered call still gets its CDR). A leg Asterisk has no
        record of died with it (killed or crashed: its hangup handler never ran); it is
        reported gone at ``lost_at``, when the events websocket was lost: the last moment
        the leg is known to have been up, so the customer is never billed for the outage.
        """
        for leg in (self.state.customer, self.state.operator):
            if leg is None or leg.ended:
                continue
            cid = leg.channel_id
            try:
                channel = await self.client.get_channel(cid)
            except ari.AriError:
                continue
            if channel is not None:
                if channel.state == "Up" and leg.answered_at is None:
                    log.warning("%s was answered while the events websocket was down", cid)
                    self.inbox.put_nowait(Answered(cid, await self._answer_time(cid)))
                continue
            record = None
            if self.records is not None:
                try:
                    record = await self.records.fetch(cid, leg.started_at)
                except (ari.AriError, TimeoutError) as exc:
                    log.warning("no leg record of %s: %s", cid, exc)
            log.warning("%s ended while the events websocket was down (%s)", cid,
                        record or "Asterisk has no record of it")
            if record is not None and record.answered_at is not None \
                    and leg.answered_at is None:
                self.inbox.put_nowait(Answered(cid, record.answered_at))
            cause = record.cause if record is not None else self._hangup_causes.get(cid, 0)
            now = utcnow()
            if record is not None:
                ended_at = record.ended_at
            elif lost_at is not None:   # never before the leg began, nor after now
                ended_at = min(now, max(lost_at, leg.answered_at or leg.started_at))
            else:
                ended_at = now
            self.inbox.put_nowait(ChannelGone(cid, cause, ended_at))

    async def _answer_time(self, cid: str) -> datetime:
        """When Asterisk answered ``cid`` (its CDR), else now."""
        try:
            answered_at = answer_time(await self.client.get_variable(cid, "CDR(answer,u)"))
        except (ari.AriError, InvalidOperation):
            answered_at = None
        return answered_at or utcnow()

    async def _pump(self) -> None:
        while True:
            self.inbox.put_nowait(await self._ari_queue.get())

    # --- events -------------------------------------------------------------------------

    async def _handle(self, event: object) -> None:
        log.debug("%s <- %s", self.job.callback_id, event)
        if isinstance(event, Begin | Originated | OriginateFailed | OriginateRefused | Answered
                      | ChannelGone | TimerFired | OperatorRequested | EndCall | Shutdown):
            await self._dialer(event)
        elif isinstance(event, ivr.Timeout):
            await self._ivr(event)
        elif isinstance(event, ari.StasisStart):
            await self._dialer(Answered(event.channel.id, event.timestamp or utcnow()))
        elif (isinstance(event, ari.ChannelHangupRequest) and event.cause is not None
              and not event.soft):
            # A soft request's "cause" is Asterisk's soft-hangup flag (32 = explicit), not Q.850.
            self._hangup_causes[event.channel.id] = event.cause
        elif isinstance(event, ari.ChannelDestroyed):
            await self._leg_gone(event.channel.id, event.cause, event.timestamp)
        elif isinstance(event, ari.StasisEnd):
            cause = self._hangup_causes.get(event.channel.id, NORMAL)
            await self._leg_gone(event.channel.id, cause, event.timestamp)
        elif isinstance(event, ari.ChannelDtmfReceived):
            if self._is_customer(event.channel.id):
                await self._ivr(ivr.Dtmf(event.digit))
        elif isinstance(event, ari.PlaybackFinished):
            await self._ivr(ivr.PlaybackFinished(event.playback.id))

    def _is_customer(self, cid: str) -> bool:
        return self.state.customer is not None and self.state.customer.channel_id == cid

    async def _leg_gone(self, cid: str, cause: int, at: datetime | None) -> None:
        op = self.state.operator
        operator_unanswered = (op is not None and op.channel_id == cid and not op.ended
                               and op.answered_at is None)
        customer = self._is_customer(cid)
        await self._dialer(ChannelGone(cid, cause, at or utcnow()))
        if customer:
            await self._ivr(ivr.CallerHangup())
        elif operator_unanswered:
            await self._ivr(ivr.OperatorFailed())

    async def _dialer(self, event: DialerEvent) -> None:
        self.state, commands = dialer.transition(self.state, event)
        for cmd in commands:
            await self._run(cmd)

    async def _ivr(self, event: ivr.Event) -> None:
        if self.ivr is None:
            return
        before = self.ivr.node
        self.ivr, commands = ivr.transition(self.ivr, event)
        gate = self.ctx.flow.confirm_callback
        if gate is not None and before == gate and self.ivr.node == self.ctx.flow.confirm_yes:
            self.confirmed = True
            log.info("%s: the customer confirmed the call-back", self.job.callback_id)
        for cmd in commands:
            await self._run_ivr(cmd)

    # --- dialer commands ------------------------------------------------------------------

    async def _run(self, cmd: Command) -> None:  # noqa: C901 - one branch per command type
        log.debug("%s -> %s", self.job.callback_id, cmd)
        if isinstance(cmd, PersistAttempt):
            self.router.subscribe(cmd.channel_id, self._ari_queue)
            self._refused.discard(cmd.channel_id)    # a refused leg's id is used again
            try:
                await self.store.persist_leg(cmd, self.job.merchant_id)
            except GuardRefused as refused:
                log.warning("%s: leg %s via %s refused: %s", self.job.callback_id,
                            cmd.channel_id, cmd.carrier_id, refused.verdict)
                self.router.release(cmd.channel_id)
                self._refused.add(cmd.channel_id)
                self._pending.appendleft(OriginateRefused(
                    cmd.channel_id, refused.verdict.reason, refused.retry_in_s or 30, utcnow()))
        elif isinstance(cmd, Originate):
            await self._originate(cmd)
        elif isinstance(cmd, Hangup):
            await self._safely(self.client.hangup(cmd.channel_id, reason=cmd.reason))
        elif isinstance(cmd, StartTimer):
            self._start_timer(cmd.name, cmd.seconds, _fired(cmd.name))
        elif isinstance(cmd, CancelTimer):
            self._cancel_timer(cmd.name)
        elif isinstance(cmd, RecordLegResult):
            await self.store.leg_result(cmd.channel_id, cmd.status, cmd.cause)
        elif isinstance(cmd, StartIvr):
            self.ivr, commands = ivr.start(self.ctx.flow, cmd.channel_id)
            for c in commands:
                await self._run_ivr(c)
        elif isinstance(cmd, CreateBridge):
            await self._bridge(cmd)
        elif isinstance(cmd, DestroyBridge):
            await self._safely(self.client.destroy_bridge(cmd.bridge_id))
        elif isinstance(cmd, RecordCdr):
            await self._cdr(cmd)
        else:
            await self._finish(cmd)

    async def _originate(self, cmd: Originate) -> None:
        if cmd.channel_id in self._refused:
            return                  # its PersistAttempt was refused: never dial it
        try:
            await self.client.originate(cmd.endpoint, channel_id=cmd.channel_id,
                                        app_args=list(cmd.app_args), caller_id=cmd.caller_id,
                                        timeout=cmd.timeout_s,
                                        variables=dict(cmd.variables) or None)
        except ari.AllocationFailed as exc:
            log.warning("originate %s via %s: allocation failed", cmd.channel_id, cmd.endpoint)
            self._pending.appendleft(OriginateFailed(cmd.channel_id, str(exc), utcnow()))
            return
        except ari.AriError as exc:
            log.warning("originate %s via %s failed: %s", cmd.channel_id, cmd.endpoint, exc)
            self._pending.appendleft(OriginateFailed(cmd.channel_id, str(exc), utcnow()))
            return
        log.info("originated %s via %s", cmd.channel_id, cmd.endpoint)
        if self._is_customer(cmd.channel_id):
            self.rang = True
        self._pending.appendleft(Originated(cmd.channel_id, utcnow()))

    async def _bridge(self, cmd: CreateBridge) -> None:
        try:
            await self.client.create_bridge(cmd.bridge_id, type=cmd.bridge_type)
            await self.client.add_channel(cmd.bridge_id, list(cmd.channel_ids))
        except ari.AriError as exc:
            log.error("bridge %s failed: %s; ending the operator leg", cmd.bridge_id, exc)
            await self._safely(self.client.hangup(cmd.channel_ids[-1]))

    async def _cdr(self, cmd: RecordCdr) -> None:
        await store_cdr(self.store, self.rater, cmd, destination=self.job.destination,
                        inbound_tariff=self.ctx.inbound_tariff,
                        edge_call_id=self.ctx.edge_call_id, merchant_id=self.job.merchant_id)

    async def _finish(self, cmd: Finish) -> None:
        self.outcome = cmd
        if self.guard is not None:      # before the job can be queued again
            rang = self.rang and cmd.reason not in _NOT_RUNG
            try:
                await self.guard.round_ended(
                    callback_id=self.job.callback_id, attempt_no=self.job.attempt_no,
                    number=self.job.destination, merchant_id=self.job.merchant_id,
                    rang=rang, confirmed=self.confirmed)
            except Exception:
                log.exception("%s: the guard could not record the round", self.job.callback_id)
        if not await self.store.finish(self.job.callback_id, cmd):
            log.error("%s: lease lost; outcome %s dropped", self.job.callback_id, cmd)
        log.info("%s round %d: %s (%s)%s", self.job.callback_id, self.job.attempt_no,
                 cmd.status, cmd.reason,
                 f", retry in {cmd.retry_in_s} s" if cmd.retry_in_s is not None else "")

    # --- IVR commands ---------------------------------------------------------------------

    async def _run_ivr(self, cmd: ivr.Command) -> None:
        log.debug("%s -> ivr %s", self.job.callback_id, cmd)
        customer = self.state.customer
        if isinstance(cmd, ivr.Play) and customer is not None:
            await self._safely(self.client.play(customer.channel_id, list(cmd.media),
                                                playback_id=cmd.playback_id))
        elif isinstance(cmd, ivr.StopPlayback):
            await self._safely(self.client.stop_playback(cmd.playback_id))
        elif isinstance(cmd, ivr.StartTimer):
            self._start_timer(cmd.timer_id, cmd.seconds, _timeout(cmd.timer_id))
        elif isinstance(cmd, ivr.CancelTimer):
            self._cancel_timer(cmd.timer_id)
        elif isinstance(cmd, ivr.Submit):
            self._submits += 1
            await self.store.record_info(
                cmd, callback_id=self.job.callback_id, edge_call_id=self.ctx.edge_call_id,
                merchant_id=self.job.merchant_id, caller=self.job.destination,
                collected_at=utcnow(), seq=self._submits)
            log.info("%s collected %s %s", self.job.callback_id, cmd.category, cmd.as_dict())
        elif isinstance(cmd, ivr.DialOperator):
            self._pending.append(OperatorRequested(utcnow()))
        elif isinstance(cmd, ivr.Hangup):
            self._pending.append(EndCall(utcnow()))

    # --- helpers --------------------------------------------------------------------------

    def _start_timer(self, name: str, seconds: float, make: Callable[[], object]) -> None:
        self._cancel_timer(name)
        loop = asyncio.get_running_loop()
        self._timers[name] = loop.call_later(seconds, lambda: self.inbox.put_nowait(make()))

    def _cancel_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    async def _safely(self, call: object) -> None:
        try:
            await call  # type: ignore[misc]
        except ari.AriError as exc:
            log.warning("%s: ARI call failed: %s", self.job.callback_id, exc)

    async def _hangup_all(self) -> None:
        for cid in self.channel_ids:
            await self._safely(self.client.hangup(cid))


# Rounds that end with these reasons never rang the customer's phone.
_NOT_RUNG = frozenset({Reason.CARRIERS_EXHAUSTED, Reason.NO_ROUTE})


def _fired(name: str) -> Callable[[], object]:
    return lambda: TimerFired(name, utcnow())


def _timeout(timer_id: str) -> Callable[[], object]:
    return lambda: ivr.Timeout(timer_id)


async def store_cdr(store: CallStore, rater: Rater, cmd: RecordCdr, *, destination: E164,
                    inbound_tariff: str, edge_call_id: str, merchant_id: str) -> None:
    """Rate one leg's CDR (carrier cost, toll-free counterfactual) and store it.

    A rating problem never loses the CDR: it is stored without cost."""
    seconds = int(cmd.duration_s.to_integral_value(rounding="ROUND_CEILING"))
    carrier_cost, billed_s, direct = None, seconds, None
    if cmd.leg == "customer" and cmd.answered_at is not None:
        try:
            carrier_cost, billed_s = rater.leg_cost(cmd.carrier_id, destination,
                                                    cmd.answered_at, seconds)
            direct = rater.direct_cost(inbound_tariff, destination, cmd.answered_at, seconds)
        except Exception:
            log.exception("rating %s failed; CDR stored without cost", cmd.call_id)
    await store.record_cdr(cmd, edge_call_id=edge_call_id, merchant_id=merchant_id,
                           billed_s=billed_s, carrier_cost=carrier_cost, direct_cost=direct)
    log.info("CDR %s %s %s %ss cause %s", cmd.call_id, cmd.carrier_id, cmd.disposition,
             cmd.duration_s, cmd.hangup_cause)


def no_answer_outcome(job: Job) -> Finish:
    """The outcome of a round that rang and was lost (rescue): counted, normal backoff."""
    if job.attempt_no < job.policy.max_attempts:
        return Finish("retry", Reason.NO_ANSWER, job.attempt_no,
                      job.policy.delay_after(job.attempt_no))
    return Finish("failed", Reason.NO_ANSWER, job.attempt_no)


class StasisApp:
    """Reads the events websocket for the whole process; re-syncs on every (re)connect."""

    def __init__(self, client: ari.AriClient,
                 runners: Callable[[], Mapping[str, CallRunner]], *,
                 records: LegRecords | None = None,
                 settle_stray: Callable[[ari.Channel], Awaitable[None]] | None = None,
                 identified: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.runners = runners
        # Lookups of Asterisk's leg records arrive as StasisStarts of our own.
        self.records = records
        # Settles a leg parked in our app that no call owns (hang-up, then its end and
        # CDR from Asterisk's record), so the job's rescue never mistakes an answered
        # call for one that never rang. Without it, strays are only hung up.
        self.settle_stray = settle_stray
        # Told the Asterisk's systemname on every connect (legs record where they live).
        self.identified = identified
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
            info = await self.client.asterisk_info()
        except ari.AriError as exc:
            log.warning("cannot read the Asterisk's name: %s", exc)
            return
        config = info.get("config")
        system = info.get("system")
        name = (config.get("name") if isinstance(config, dict) else None) or \
            (system.get("entity_id") if isinstance(system, dict) else None)
        if name:
            self.identified(str(name))

    async def _resync(self) -> None:
        try:
            state = await self.client.application()
        except ari.AriError as exc:
            log.warning("re-sync after connect failed: %s", exc)
            return
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
