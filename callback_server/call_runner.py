"""ARI adapter: runs one call-back round as one asyncio task.

:class:`CallRunner` owns the round's dialer state, its timers and one inbox, and
hands the customer's leg to an :class:`~callback_server.ivr_runner.IvrRunner` once
they answer. ARI events for its channels reach the inbox through the
:class:`~shared.ari.router.EventRouter` (subscribed *before* each originate, so no
event is missed); timers and follow-up events go to the same inbox, so the two
pure machines see one ordered stream.

Commands run one at a time, in order. ``PersistAttempt`` is awaited (and
committed) before the ``Originate`` that follows it; if our lease on the job
is gone, nothing is dialled. A leg's CDR is rated and stored by
:func:`callback_server.cdr_rating.store_cdr`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import InvalidOperation

from callback_server import consult, consult_meter, dialer, ivr
from callback_server.advisor_desk import AdvisorPort
from callback_server.call_ports import (
    AriPort,
    CallContext,
    CallStore,
    Inbox,
    IvrPort,
    LegRecordSource,
    Rater,
    RoundObserver,
    Timers,
    safely,
    utcnow,
)
from callback_server.cdr_rating import store_cdr
from callback_server.consult_billing import BillingPort
from callback_server.consult_runner import ConsultRunner, RecordSink
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
    LegsUsed,
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
from callback_server.ivr_runner import IvrRunner
from callback_server.legrecord import answer_time
from callback_server.metrics import callback as callback_metrics
from callback_server.store.queue_store import LeaseLost
from shared import ari, logs

log = logging.getLogger("callback.stasis")

NORMAL = 16


class CallRunner:
    """One round of one job: the dialer driven by ARI events; the IVR step is ``self.ivr``."""

    def __init__(self, job: Job, ctx: CallContext, *, client: AriPort, router: ari.EventRouter,
                 store: CallStore, rater: Rater, guard: RoundObserver | None = None,
                 records: LegRecordSource | None = None, desk: AdvisorPort | None = None,
                 consultations: RecordSink | None = None,
                 billing: BillingPort | None = None, services: IvrPort | None = None) -> None:
        self.job = job
        self.records = records           # Asterisk's own leg records (after missed events)
        self.guard = guard
        self.rang = False                # a customer leg was originated this round
        self._refused: set[str] = set()  # legs the guard refused: never originated
        self.ctx = ctx
        self.client = client
        self.router = router
        self.store = store
        self.rater = rater
        self.state = DialerState.new(job)
        self.inbox: Inbox = asyncio.Queue()
        self._ari_queue: asyncio.Queue[ari.Event] = asyncio.Queue()
        self.timers = Timers(self.inbox)
        self._pending: deque[object] = deque()
        self._hangup_causes: dict[str, int] = {}
        self.ivr = IvrRunner(job, ctx, client=client, store=store, timers=self.timers,
                             customer=self._customer_channel, follow_up=self._pending.append,
                             post=self.inbox.put_nowait, services=services)
        self.consult = ConsultRunner(job, ctx, client=client, store=store, rater=rater,
                                     desk=desk, records=consultations, run_leg=self._run,
                                     follow_up=self._pending.append, billing=billing)
        self.outcome: Finish | None = None

    @property
    def channel_ids(self) -> tuple[str, ...]:
        legs = (self.state.customer, self.state.operator)
        ids = tuple(leg.channel_id for leg in legs if leg is not None and not leg.ended)
        return (*ids, *self.consult.channel_ids)

    def _bound(self) -> AbstractContextManager[logs.LogContext]:
        """The round's log context (the worker binds the same for the whole job)."""
        return logs.bind(call_id=self.ctx.edge_call_id, request_id=self.job.callback_id,
                         merchant=self.job.merchant_id)

    async def run(self, routes: tuple[Route, ...]) -> Finish | None:
        with self._bound():
            return await self._run_round(routes)

    async def _run_round(self, routes: tuple[Route, ...]) -> Finish | None:
        pump = asyncio.create_task(self._pump(), name=f"pump {self.job.callback_id}")
        try:
            self._pending.append(Begin(routes, utcnow()))
            while self.state.phase is not Phase.DONE or self.consult.live:
                event = self._pending.popleft() if self._pending else await self.inbox.get()
                await self._handle(event)
        except LeaseLost as exc:
            log.error("%s; abandoning the round without dialling", exc)
            await self._hangup_all()
        finally:
            pump.cancel()
            self.timers.cancel_all()
            for cid in {c for c in self.router.channel_ids if c.startswith(self.job.callback_id)}:
                self.router.release(cid)
        return self.outcome

    def shutdown(self) -> None:
        self.inbox.put_nowait(Shutdown(utcnow()))

    def operator(self, consultation_id: str, event: consult.Operator) -> bool:
        """An operator's control of the round's consultation ``consultation_id`` (if it
        is the one in progress; the machine ignores what does not apply in its phase)."""
        state = self.consult.state
        if state is None or state.request.consultation_id != consultation_id \
                or not self.consult.live:
            return False
        self.inbox.put_nowait(event)
        return True

    async def resync(self, lost_at: datetime | None = None) -> None:
        """After an events reconnect (in the events task): see :meth:`_resync`."""
        with self._bound():
            await self._resync(lost_at)

    async def _resync(self, lost_at: datetime | None) -> None:
        """Catch up on what our legs did while the events websocket was down.

        A leg answered meanwhile is reported answered; a leg that ended meanwhile is
        reported gone, with Asterisk's own answer and end times and cause when it
        recorded them (so an answered call still gets its CDR). A leg Asterisk has no
        record of died with it (killed or crashed: its hangup handler never ran); it is
        reported gone at ``lost_at``, when the events websocket was lost: the last moment
        the leg is known to have been up, so the customer is never billed for the outage.
        """
        consulting = self.consult.state.live_legs if self.consult.state is not None else ()
        for leg in (self.state.customer, self.state.operator, *consulting):
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
            ended = record.ended_at if record is not None else None
            cause = record.cause if ended is not None and record is not None \
                else self._hangup_causes.get(cid, 0)
            now = utcnow()
            if ended is not None:
                ended_at = ended
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

    async def _handle(self, event: object) -> None:  # noqa: C901 - one branch per event
        log.debug("<- %s", event)
        if isinstance(event, Originated | OriginateFailed | OriginateRefused | Answered
                      | ChannelGone) and self.consult.owns(event.channel_id) \
                or isinstance(event, TimerFired) and (
                    event.name in consult.TIMERS
                    or event.name.startswith(consult_meter.TIMER_PREFIX)):
            await self._consult(event)
        elif isinstance(event, Begin | Originated | OriginateFailed | OriginateRefused | Answered
                        | ChannelGone | TimerFired | OperatorRequested | EndCall | Shutdown):
            await self._dialer(event)
        elif isinstance(event, ivr.ConnectAdvisor):
            await self.consult.start(event, self._customer_channel(), self.state.leg_seq)
            await self._sync_legs()
        elif isinstance(event, ivr.ListAdvisors):
            await self.consult.list_advisors(event)
        elif isinstance(event, ivr.Timeout | ivr.AdvisorUnavailable | ivr.AdvisorsListed
                        | ivr.ConsultBusy | ivr.ConsultFailed | ivr.ConsultRefused
                        | ivr.ConsultEnded | ivr.HoursChecked | ivr.Recorded
                        | ivr.WebhookAnswered | ivr.WebhookFailed | ivr.TransferFailed):
            await self.ivr.handle(event)
        elif isinstance(event, ari.StasisStart):
            log.info("%s answered", event.channel.id)
            await self._handle(Answered(event.channel.id, event.timestamp or utcnow()))
        elif (isinstance(event, ari.ChannelHangupRequest) and event.cause is not None
              and not event.soft):
            # A soft request's "cause" is Asterisk's soft-hangup flag (32 = explicit), not Q.850.
            self._hangup_causes[event.channel.id] = event.cause
        elif isinstance(event, ari.ChannelDestroyed):
            await self._leg_gone(event.channel.id, event.cause, event.timestamp)
        elif isinstance(event, ari.StasisEnd):
            cause = self._hangup_causes.get(event.channel.id, NORMAL)
            await self._leg_gone(event.channel.id, cause, event.timestamp)
        elif isinstance(event, ari.RecordingFinished | ari.RecordingFailed):
            await self.ivr.recorded(event.recording.name,
                                    isinstance(event, ari.RecordingFinished))
        elif isinstance(event, ari.ChannelDtmfReceived):
            if self._is_customer(event.channel.id):
                await self.ivr.handle(ivr.Dtmf(event.digit))
        elif isinstance(event, ari.PlaybackFinished):
            if self.consult.owns_playback(event.playback.id):
                await self._consult(consult.FarewellDone(event.playback.id))
            else:
                await self.ivr.handle(ivr.PlaybackFinished(event.playback.id))
        elif isinstance(event, consult.OPERATOR_EVENTS):
            await self._consult(event)

    def _customer_channel(self) -> str | None:
        return None if self.state.customer is None else self.state.customer.channel_id

    def _is_customer(self, cid: str) -> bool:
        return self.state.customer is not None and self.state.customer.channel_id == cid

    async def _leg_gone(self, cid: str, cause: int, at: datetime | None) -> None:
        if self.consult.owns(cid):
            await self._consult(ChannelGone(cid, cause, at or utcnow()))
            return
        op = self.state.operator
        operator_unanswered = (op is not None and op.channel_id == cid and not op.ended
                               and op.answered_at is None)
        customer = self._is_customer(cid)
        await self._dialer(ChannelGone(cid, cause, at or utcnow()))
        if customer:
            await self.ivr.handle(ivr.CallerHangup())
            await self._consult(consult.CustomerGone(at or utcnow()))
        elif operator_unanswered:
            await self.ivr.handle(ivr.OperatorFailed())

    async def _consult(self, event: consult.Event) -> None:
        await self.consult.handle(event)
        await self._sync_legs()

    async def _sync_legs(self) -> None:
        """The consultation's legs are numbered in the round's sequence too."""
        state = self.consult.state
        if state is not None and state.leg_seq > self.state.leg_seq:
            await self._dialer(LegsUsed(state.leg_seq))

    async def _dialer(self, event: DialerEvent) -> None:
        self.state, commands = dialer.transition(self.state, event)
        for cmd in commands:
            await self._run(cmd)

    # --- dialer commands ------------------------------------------------------------------

    async def _run(self, cmd: Command) -> None:  # noqa: C901 - one branch per command type
        log.debug("-> %s", cmd)
        if isinstance(cmd, PersistAttempt):
            self.router.subscribe(cmd.channel_id, self._ari_queue)
            self._refused.discard(cmd.channel_id)    # a refused leg's id is used again
            try:
                await self.store.persist_leg(cmd, self.job.merchant_id)
            except GuardRefused as refused:
                log.warning("leg %s via %s refused: %s", cmd.channel_id, cmd.carrier_id,
                            refused.verdict)
                self.router.release(cmd.channel_id)
                self._refused.add(cmd.channel_id)
                self._pending.appendleft(OriginateRefused(
                    cmd.channel_id, refused.verdict.reason, refused.retry_in_s or 30, utcnow()))
        elif isinstance(cmd, Originate):
            await self._originate(cmd)
        elif isinstance(cmd, Hangup):
            await safely(self.client.hangup(cmd.channel_id, reason=cmd.reason))
        elif isinstance(cmd, StartTimer):
            self.timers.start(cmd.name, cmd.seconds, _fired(cmd.name))
        elif isinstance(cmd, CancelTimer):
            self.timers.cancel(cmd.name)
        elif isinstance(cmd, RecordLegResult):
            await self.store.leg_result(cmd.channel_id, cmd.status, cmd.cause)
        elif isinstance(cmd, StartIvr):
            await self.ivr.start(cmd.channel_id)
        elif isinstance(cmd, CreateBridge):
            await self._bridge(cmd)
        elif isinstance(cmd, DestroyBridge):
            await safely(self.client.destroy_bridge(cmd.bridge_id))
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
            self._observe_latency()
            self.rang = True
        self._pending.appendleft(Originated(cmd.channel_id, utcnow()))

    def _observe_latency(self) -> None:
        """The job's first call-back INVITE is out: how long after the caller hung up at
        the edge (the sites' clocks are NTP-synchronised; a negative skew counts as 0)."""
        if self.job.attempt_no != 1 or self.rang or self.ctx.hungup_at is None:
            return                  # a retry, or a failover leg of the same round
        waited = (utcnow() - self.ctx.hungup_at).total_seconds()
        callback_metrics().latency.labels(self.job.merchant_id).observe(max(0.0, waited))

    async def _bridge(self, cmd: CreateBridge) -> None:
        try:
            await self.client.create_bridge(cmd.bridge_id, type=cmd.bridge_type)
            await self.client.add_channel(cmd.bridge_id, list(cmd.channel_ids))
        except ari.AriError as exc:
            log.error("bridge %s failed: %s; ending the operator leg", cmd.bridge_id, exc)
            await safely(self.client.hangup(cmd.channel_ids[-1]))

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
                    rang=rang, confirmed=self.ivr.confirmed)
            except Exception:
                log.exception("the guard could not record the round")
        if not await self.store.finish(self.job.callback_id, cmd):
            log.error("lease lost; outcome %s dropped", cmd)
        log.info("round %d: %s (%s)%s", self.job.attempt_no, cmd.status, cmd.reason,
                 f", retry in {cmd.retry_in_s} s" if cmd.retry_in_s is not None else "")

    # --- helpers --------------------------------------------------------------------------

    async def _hangup_all(self) -> None:
        for cid in self.channel_ids:
            await safely(self.client.hangup(cid))


# Rounds that end with these reasons never rang the customer's phone.
_NOT_RUNG = frozenset({Reason.CARRIERS_EXHAUSTED, Reason.NO_ROUTE})


def _fired(name: str) -> Callable[[], object]:
    return lambda: TimerFired(name, utcnow())


def no_answer_outcome(job: Job) -> Finish:
    """The outcome of a round that rang and was lost (rescue): counted, normal backoff."""
    if job.attempt_no < job.policy.max_attempts:
        return Finish("retry", Reason.NO_ANSWER, job.attempt_no,
                      job.policy.delay_after(job.attempt_no))
    return Finish("failed", Reason.NO_ANSWER, job.attempt_no)
