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

import logging
from dataclasses import replace
from datetime import datetime

from callback_server import consult, dialer, ivr
from callback_server.advisor_desk import AdvisorPort
from callback_server.call_ports import (
    AriPort,
    CallContext,
    CallStore,
    IvrPort,
    LegRecordSource,
    Rater,
    utcnow,
)
from callback_server.consult_billing import BillingPort
from callback_server.consult_runner import ConsultRunner, LiveSink, RecordSink
from callback_server.dialer import DialerState, Leg, Phase
from callback_server.dialer_messages import (
    Answered,
    Begin,
    CancelTimer,
    ChannelGone,
    Command,
    EndCall,
    Finish,
    Job,
    LegsUsed,
    OperatorRequested,
    Originated,
    OriginateFailed,
    OriginateRefused,
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
from callback_server.ivr_runner import IvrRunner
from callback_server.leg_runner import leg_event
from callback_server.metrics import callback as callback_metrics
from callback_server.round_runner import RoundRunner
from callback_server.store.leg_end import LegEnd
from shared import ari
from shared.phone import E164

log = logging.getLogger("callback.stasis")


class CallRunner(RoundRunner):
    """One round of one job: the dialer driven by ARI events; the IVR step is ``self.ivr``."""

    def __init__(self, job: Job, ctx: CallContext, *, client: AriPort, router: ari.EventRouter,
                 store: CallStore, rater: Rater,
                 records: LegRecordSource | None = None, desk: AdvisorPort | None = None,
                 consultations: RecordSink | None = None,
                 billing: BillingPort | None = None, services: IvrPort | None = None,
                 live: LiveSink | None = None) -> None:
        super().__init__(job, ctx, client=client, router=router, store=store, rater=rater,
                         records=records, originated=self._originated)
        self.desk = desk                 # the advisors, and the routes to a number
        self.rang = False                # a customer leg was originated this round
        self.state = DialerState.new(job)
        self.ivr = IvrRunner(job, ctx, client=client, store=store, timers=self.timers,
                             customer=self._customer_channel, follow_up=self._pending.append,
                             post=self.inbox.put_nowait, services=services)
        self.consult = ConsultRunner(job, ctx, client=client, store=store, rater=rater,
                                     desk=desk, records=consultations, run_leg=self._run,
                                     follow_up=self._pending.append, billing=billing,
                                     live=live)

    @property
    def channel_ids(self) -> tuple[str, ...]:
        legs = (self.state.customer, self.state.operator)
        ids = tuple(leg.channel_id for leg in legs if leg is not None and not leg.ended)
        return (*ids, *self.consult.channel_ids)

    def _live_legs(self) -> tuple[Leg | None, ...]:
        consulting = self.consult.state.live_legs if self.consult.state is not None else ()
        return (self.state.customer, self.state.operator, *consulting)

    def _running(self) -> bool:
        return self.state.phase is not Phase.DONE or self.consult.live

    async def run(self, routes: tuple[Route, ...]) -> Finish | None:
        async def begin() -> None:
            self._pending.append(Begin(routes, utcnow()))

        with self._bound():
            await self._loop(begin)
        return self.outcome

    # --- events -------------------------------------------------------------------------

    async def _handle(self, event: object) -> None:  # noqa: C901 - one branch per event
        log.debug("<- %s", event)
        # The IVR's keys and prompts' ends first: most of a call's events (each class
        # below is matched by one branch only, so the order is only the cost of getting
        # there; the classes are tuples made once, not unions built at every event).
        if isinstance(event, ari.ChannelDtmfReceived):
            if self._is_customer(event.channel.id):
                await self.ivr.handle(ivr.Dtmf(event.digit))
        elif isinstance(event, ari.PlaybackFinished):
            if self.consult.owns_playback(event.playback.id):
                await self.consult.playback_finished(event.playback.id)
                await self._sync_legs()
            else:
                await self.ivr.handle(ivr.PlaybackFinished(event.playback.id))
        elif isinstance(event, _LEG_MESSAGES) and self.consult.owns(event.channel_id) \
                or isinstance(event, TimerFired) and self.consult.owns_timer(event.name):
            await self._consult(event)
        elif isinstance(event, _LEG_REFUSED):
            failed = self._unanswered_second_leg(event.channel_id)
            await self._dialer(event)
            await self._second_leg_failed(event.channel_id, failed)
        elif isinstance(event, _DIALER_EVENTS):
            await self._dialer(event)
        elif isinstance(event, ivr.ConnectAdvisor):
            await self.consult.start(event, self._customer_channel(), self.state.leg_seq)
            await self._sync_legs()
        elif isinstance(event, ivr.ListAdvisors):
            await self.consult.list_advisors(event)
        elif isinstance(event, ivr.TransferCall):
            await self._transfer(event)
        elif isinstance(event, _IVR_EVENTS):
            await self.ivr.handle(event)
        elif isinstance(event, _ARI_LEG_EVENTS):
            leg = leg_event(event, self._hangup_causes)
            if isinstance(leg, Answered):
                await self._handle(leg)
            elif leg is not None:
                await self._leg_gone(leg.channel_id, leg.cause, leg.at)
        elif isinstance(event, _ARI_RECORDINGS):
            await self.ivr.recorded(event.recording.name,
                                    isinstance(event, ari.RecordingFinished))
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
        unanswered = self._unanswered_second_leg(cid)
        customer = self._is_customer(cid)
        await self._dialer(ChannelGone(cid, cause, at or utcnow()))
        if customer:
            await self.ivr.handle(ivr.CallerHangup())
            await self._consult(consult.CustomerGone(at or utcnow()))
        else:
            await self._second_leg_failed(cid, unanswered)

    async def _second_leg_failed(self, cid: str,
                                 failed: ivr.OperatorFailed | ivr.TransferFailed | None) -> None:
        """The IVR's ``on_fail`` for the operator's or a transfer's leg ``cid`` that ended
        unanswered, unless the dialer placed the transfer again on another carrier."""
        op = self.state.operator
        retried = op is not None and not op.ended     # the failed leg is ended or gone
        if failed is not None and not retried:
            await self.ivr.handle(failed)

    def _unanswered_second_leg(self, cid: str) -> ivr.OperatorFailed | ivr.TransferFailed | None:
        """What the IVR hears when ``cid``, the operator's or a transfer's leg not yet
        answered, ends or cannot be dialled (None: ``cid`` is no such leg)."""
        op = self.state.operator
        if op is None or op.channel_id != cid or op.ended or op.answered_at is not None:
            return None
        return ivr.TransferFailed() if op.role == "transfer" else ivr.OperatorFailed()

    async def _transfer(self, cmd: ivr.TransferCall) -> None:
        """A flow's transfer: the number's cheapest carrier, as the round's second leg."""
        number = E164.parse(cmd.number)
        routes = await self.desk.number_routes(number, utcnow()) if self.desk else ()
        if not routes:
            log.warning("transfer to %s: no route", number)
            await self.ivr.handle(ivr.TransferFailed())
            return
        await self._dialer(OperatorRequested(utcnow(), number, routes, cmd.ring_s))

    async def _consult(self, event: consult.Event) -> None:
        await self.consult.handle(event)
        await self._sync_legs()

    async def _sync_legs(self) -> None:
        """The consultation's legs are numbered in the round's sequence too."""
        state = self.consult.state
        if state is not None and state.leg_seq > self.state.leg_seq:
            await self._dialer(LegsUsed(state.leg_seq))

    async def _dialer(self, event: DialerEvent) -> None:
        """The dialer's commands for ``event``, in order; a leg's end (its result and CDR)
        is written in one transaction, with the round's finish when that follows it
        (nothing but timers in between)."""
        self.state, commands = dialer.transition(self.state, event)
        ended: LegEnd | None = None
        for cmd in commands:
            if isinstance(cmd, RecordLegResult) and cmd.status in LEG_ENDS and ended is None:
                ended = LegEnd(cmd.channel_id, cmd.status, cmd.cause)
            elif isinstance(cmd, RecordCdr) and ended is not None and ended.cdr is None \
                    and cmd.call_id == ended.channel_id:
                ended = replace(ended, cdr=self.legs.rated(cmd))
            elif isinstance(cmd, Finish):
                await self._finish(cmd, ended)
                ended = None
            elif isinstance(cmd, _TIMER_COMMANDS):
                await self._run(cmd)
            else:
                if ended is not None:
                    await self.legs.end(ended)
                    ended = None
                await self._run(cmd)
        if ended is not None:
            await self.legs.end(ended)

    # --- dialer commands ------------------------------------------------------------------

    async def _run(self, cmd: Command) -> None:
        log.debug("-> %s", cmd)
        if isinstance(cmd, StartIvr):
            await self.ivr.start(cmd.channel_id)
        elif isinstance(cmd, Finish):
            await self._finish(cmd)
        else:
            await self.legs.run(cmd)

    def _originated(self, channel_id: str) -> None:
        if self._is_customer(channel_id):
            self._observe_latency()
            self.rang = True

    def _observe_latency(self) -> None:
        """The job's first call-back INVITE is out: how long after the caller hung up at
        the edge (the sites' clocks are NTP-synchronised; a negative skew counts as 0)."""
        if self.job.attempt_no != 1 or self.rang or self.ctx.hungup_at is None:
            return                  # a retry, or a failover leg of the same round
        waited = (utcnow() - self.ctx.hungup_at).total_seconds()
        callback_metrics().latency.labels(self.job.merchant_id).observe(max(0.0, waited))

    async def _finish(self, cmd: Finish, ended: LegEnd | None = None) -> None:
        await self._finish_round(cmd, rang=self.rang and cmd.reason not in _NOT_RUNG,
                                 confirmed=self.ivr.confirmed, ended=ended)


# The events :meth:`CallRunner._handle` tells apart, by class.
_LEG_MESSAGES = (Originated, OriginateFailed, OriginateRefused, Answered, ChannelGone)
_LEG_REFUSED = (OriginateFailed, OriginateRefused)
_DIALER_EVENTS = (Begin, Originated, Answered, ChannelGone, TimerFired, OperatorRequested,
                  EndCall, Shutdown)
_IVR_EVENTS = (ivr.Timeout, ivr.AdvisorUnavailable, ivr.AdvisorsListed, ivr.ConsultBusy,
               ivr.ConsultFailed, ivr.ConsultRefused, ivr.ConsultEnded, ivr.HoursChecked,
               ivr.Recorded, ivr.WebhookAnswered, ivr.WebhookFailed, ivr.TransferFailed,
               ivr.Spoken, ivr.OperatorFailed)
_ARI_LEG_EVENTS = (ari.StasisStart, ari.ChannelHangupRequest, ari.ChannelDestroyed,
                   ari.StasisEnd)
_ARI_RECORDINGS = (ari.RecordingFinished, ari.RecordingFailed)
_TIMER_COMMANDS = (CancelTimer, StartTimer)

# A leg's results that end it (written with its CDR; "originated" and "answered" are
# written on their own, at once).
LEG_ENDS = frozenset({"ended", "failed"})

# Rounds that end with these reasons never rang the customer's phone.
_NOT_RUNG = frozenset({Reason.CARRIERS_EXHAUSTED, Reason.NO_ROUTE})


def no_answer_outcome(job: Job) -> Finish:
    """The outcome of a round that rang and was lost (rescue): counted, normal backoff."""
    if job.attempt_no < job.policy.max_attempts:
        return Finish("retry", Reason.NO_ANSWER, job.attempt_no,
                      job.policy.delay_after(job.attempt_no))
    return Finish("failed", Reason.NO_ANSWER, job.attempt_no)
