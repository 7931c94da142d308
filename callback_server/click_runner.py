"""ARI adapter of a web click-to-call: runs :mod:`callback_server.click_to_call` as one
round of its call-back job (``POST /v1/consultations``, :mod:`callback_server.click_http`).

:class:`ClickRunner` owns the round's inbox, timers and legs
(:class:`~callback_server.leg_runner.Legs`: persisted before their originate, rated
CDRs). Its :class:`ClickConsult` is the consultation side of an IVR round
(:class:`~callback_server.consult_runner.ConsultRunner`: the advisor chosen again at dial
time, billing's admission and the prepaid meter's reservation before anyone is rung, the
assignment, the record with method ``click_to_call``, the postpaid charge, the row of
``consult_live`` from the advisor's ring on) driving the
click-to-call machine instead of the bare consult machine. The customer is dialled over
the job's routes (the customer's number through the carriers, cheapest first, as for a
call-back's customer; the next on a carrier fault), the advisor over their contact (PSTN
through the carriers, or SIP through the edge trunk). Which party is rung first is the
merchant's ``advisor_settings.click_to_call_first``.

The round's outcome (``callback_requests``, reported to the edge like any call-back's):
``completed``/``answered`` once the two talked; else ``failed`` with ``no_answer`` (the
customer never answered), ``advisor_no_answer`` (the advisor did not), or, before anyone
was rung, ``advisor_unavailable`` (no longer in standby) or ``billing_refused``. An
operator controls the consultation as any (``POST /v1/consultations/{id}/end``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from advisors.records import EndReason, Method
from billing import meter
from callback_server import click_to_call as ctc
from callback_server import consult, ivr
from callback_server.advisor_desk import AdvisorPort
from callback_server.call_ports import (
    AriPort,
    CallContext,
    CallStore,
    LegRecordSource,
    Rater,
    utcnow,
)
from callback_server.consult_billing import BillingPort
from callback_server.consult_recovery import Live
from callback_server.consult_runner import Command, ConsultRunner, LiveSink, RecordSink
from callback_server.dialer import Leg
from callback_server.dialer_messages import Command as DialerCommand
from callback_server.dialer_messages import (
    Finish,
    Job,
    Originated,
    OriginateFailed,
    OriginateRefused,
    Reason,
    Route,
    Shutdown,
    TimerFired,
)
from callback_server.leg_runner import LegCommand, leg_event
from callback_server.round_runner import RoundRunner
from shared import ari

log = logging.getLogger("callback.click")

#: why nobody was rung (the consultation side's answer before the first ring)
NobodyRung = ivr.AdvisorUnavailable | ivr.ConsultFailed | ivr.ConsultRefused


class ClickConsult(ConsultRunner):
    """The consultation side of a click-to-call round (see the module docstring)."""

    routes: tuple[Route, ...] = ()          # the customer's, cheapest first
    click: ctc.ClickState | None = None
    over: consult.Over | None = None

    @property
    def live(self) -> bool:
        metering = self.meter is not None and self.meter.phase is not meter.Phase.DONE
        return metering or self.click is not None and not self.click.done

    @property
    def legs(self) -> tuple[str, ...]:
        """Every leg of the round not known to have ended."""
        leg = None if self.click is None else self.click.leg
        customer = (leg.channel_id,) if leg is not None and not leg.ended else ()
        return (*customer, *self.channel_ids)

    def _to_keep(self) -> Live | None:
        """The consultation once the two talk, and the advisor first from their answer
        (:func:`~callback_server.click_to_call.kept`)."""
        return None if self.click is None else ctc.kept(self.click)

    @property
    def _customer(self) -> str | None:
        leg = None if self.click is None else self.click.leg
        return None if leg is None else leg.channel_id

    def _requested_at(self, now: datetime) -> datetime:
        """The web request's arrival (the job's ``received_at``, the context's
        ``hungup_at``)."""
        return self.ctx.hungup_at or now

    async def _begin(self) -> None:
        assert self._request is not None and self._started is not None
        chosen = self._started.chosen
        assert chosen.advisor_id is not None
        job = self.job
        self.click = ctc.new(ctc.Request(self._request, chosen.click_to_call_first,
                                         self.routes, str(job.destination),
                                         str(job.caller_id), chosen.advisor_id))
        log.info("click-to-call: %s first", chosen.click_to_call_first)
        await self.handle(consult.Begin(utcnow()))

    def _step(self, event: consult.Event) -> Sequence[Command]:
        return self._click_step(event)

    def _click_step(self, event: ctc.Event) -> list[Command]:
        if self.click is None:
            return []
        self.click, commands = ctc.transition(self.click, event)
        self.state = self.click.consultation
        return commands

    async def message_done(self, playback_id: str) -> None:
        await self._drive(self._click_step(ctc.MessageDone(playback_id)))

    async def _run(self, cmd: Command) -> None:
        if isinstance(cmd, consult.Over):
            self.over = cmd
        await super()._run(cmd)

    def outcome(self, refused: NobodyRung | None) -> Finish:
        """The round's end: talked, or who was not reached (or why nobody was rung)."""
        attempt = self.job.attempt_no
        over = self.over
        if over is not None and over.answered_at is not None:
            return Finish("completed", Reason.ANSWERED, attempt)
        if over is not None:
            customer = over.end_reason is EndReason.CUSTOMER_ABANDONED
            return Finish("failed", Reason.NO_ANSWER if customer
                          else Reason.ADVISOR_NO_ANSWER, attempt)
        if isinstance(refused, ivr.ConsultRefused):
            return Finish("failed", Reason.BILLING_REFUSED, attempt)
        return Finish("failed", Reason.ADVISOR_UNAVAILABLE, attempt)


class ClickRunner(RoundRunner):
    """One click-to-call round (one asyncio task), like a call-back's ``CallRunner``."""

    consult: ClickConsult

    def __init__(self, job: Job, ctx: CallContext, advisor_id: int, *, client: AriPort,
                 router: ari.EventRouter, store: CallStore, rater: Rater,
                 desk: AdvisorPort | None, consultations: RecordSink | None,
                 billing: BillingPort | None, records: LegRecordSource | None = None,
                 live: LiveSink | None = None) -> None:
        super().__init__(job, ctx, client=client, router=router, store=store, rater=rater,
                         records=records, originated=self._originated)
        self.rang = False                # the customer's phone was dialled
        self.advisor_id = advisor_id
        self.consult = ClickConsult(
            job, ctx, client=client, store=store, rater=rater, desk=desk,
            records=consultations, run_leg=self._run_leg, follow_up=self._pending.append,
            billing=billing, live=live)
        self._refused: NobodyRung | None = None

    @property
    def channel_ids(self) -> tuple[str, ...]:
        return self.consult.legs

    def _live_legs(self) -> tuple[Leg | None, ...]:
        state = self.consult.click
        consulting = self.consult.state.live_legs if self.consult.state is not None else ()
        return (None if state is None else state.leg, *consulting)

    def _running(self) -> bool:
        return bool(self._pending) or self.consult.live

    async def run(self, routes: tuple[Route, ...]) -> Finish | None:
        """The round, the customer dialled over ``routes`` (cheapest first)."""
        self.consult.routes = routes

        async def begin() -> None:
            await self.consult.start(ivr.ConnectAdvisor(Method.CLICK_TO_CALL.value,
                                                      advisor_id=self.advisor_id),
                                   "", self.job.leg_seq)

        with self._bound():
            if await self._loop(begin):
                # a customer who talked with the advisor is a person who wanted the call
                outcome = self.consult.outcome(self._refused)
                await self._finish_round(outcome, rang=self.rang,
                                         confirmed=outcome.reason is Reason.ANSWERED)
        return self.outcome

    async def _handle(self, event: object) -> None:
        log.debug("<- %s", event)
        leg = leg_event(event, self._hangup_causes)
        if leg is not None:
            await self.consult.handle(leg)
        elif isinstance(event, Originated | OriginateFailed | OriginateRefused | TimerFired) \
                or isinstance(event, consult.OPERATOR_EVENTS):
            await self.consult.handle(event)
        elif isinstance(event, ari.PlaybackFinished):
            await self.consult.message_done(event.playback.id)
        elif isinstance(event, NobodyRung):
            log.info("click-to-call: nobody rung: %s", event)
            self._refused = event
        elif isinstance(event, Shutdown):
            await self._hangup_all()

    async def _run_leg(self, cmd: DialerCommand) -> None:
        if isinstance(cmd, LegCommand):
            await self.legs.run(cmd)

    def _originated(self, channel_id: str) -> None:
        click = self.consult.click
        if click is not None and click.leg is not None and click.leg.channel_id == channel_id:
            self.rang = True
