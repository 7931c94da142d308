"""The consultation step of a call-back round: the ARI and database side of
:mod:`callback_server.consult`.

The IVR's ``ConnectAdvisor`` starts a :class:`ConsultRunner`: it resolves the choice
(:class:`~callback_server.advisor_desk.AdvisorPort`; an advisor of a code who cannot
take the call goes back to the IVR as ``AdvisorUnavailable``), then drives the pure
machine. Its assignments run in the database and come back as ``Assigned`` (with the
offered advisor's routes); its leg commands (persist, originate, hang up, timers, the
bridge) are the round's own (``CallRunner``), its CDRs are rated like the customer's,
and its ``Over`` becomes a :class:`~advisors.records.ConsultationRecord`, saved
through ``RecordSink``. The machine's outcome for the customer (``Tell``) goes back to
the IVR after the current event.

Billing (``BillingPort``, :mod:`callback_server.consult_billing`): once the choice is
resolved and before any advisor is rung, admission is asked at the chosen price (an
advisor's own; a group's own, else its dearest member's); a refusal goes back to the IVR
as ``ConsultRefused`` (its guidance, then the node's failure branch) and nothing is
dialled. A prepaid consultation then runs its meter (:mod:`billing.meter`, routed by
:mod:`callback_server.consult_meter`):
the reservation is made before the first advisor is rung (so no advisor is rung for a
consultation the balance no longer pays for when another call took it meanwhile; a
consultation nobody answers settles 0 and releases it), the bridge starts its clock, the
warning plays to both legs, the cut-off plays its message to the customer and hangs their
leg up, and the record's end settles the talk seconds. A postpaid consultation is charged
(``Postpaid.charge``, keyed by the consultation id) once its record is saved.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg

from advisors import assignment as am
from advisors.errors import NotFound
from advisors.records import ConsultationRecord, InvalidRecord, LegCost, Method
from billing import meter
from billing.ledger import LedgerError, Refusal
from billing.metrics import billing as billing_metrics
from callback_server import consult, consult_meter, consult_recovery, ivr, queue_announce
from callback_server.advisor_desk import AdvisorPort, Chosen, Unavailable
from callback_server.call_ports import AriPort, CallContext, CallStore, Rater, safely, utcnow
from callback_server.cdr_rating import store_cdr
from callback_server.consult import (
    Assigned,
    Begin,
    ConsultState,
    EndPresence,
    Farewell,
    Over,
    Prompt,
    Rebridge,
    Request,
    RouteTransfer,
    RunAssignment,
    StartMoh,
    StopMoh,
    Tell,
    TransferRouted,
    Unbridge,
)
from callback_server.consult_billing import BillingPort, ChargeTo, Plan
from callback_server.consult_recovery import Live
from callback_server.dialer import leg_variables
from callback_server.dialer_messages import Command as LegCommand
from callback_server.dialer_messages import (
    Job,
    RecordCdr,
    Route,
    StartTimer,
    TimerFired,
)
from shared.db import CONNECTION_ERRORS
from shared.money import Money
from shared.phone import E164, InvalidNumber

log = logging.getLogger("callback.consult")

DATABASE_ERRORS = (*CONNECTION_ERRORS, asyncpg.PostgresError)
#: what the machine run asks of this runner (a click-to-call's also stops its prompt)
Command = consult.Command | ivr.StopPlayback
BILLING_ERRORS = (*DATABASE_ERRORS, LedgerError)


class RecordSink(Protocol):
    """Where a finished consultation's record goes (``advisors.records`` store)."""

    async def save(self, record: ConsultationRecord) -> object: ...


class LiveSink(Protocol):
    """Where a consultation is kept from its first offer until its record is saved
    (``consult_live``: what a restart ends if the server dies meanwhile)."""

    async def keep(self, callback_id: str, live: Live, snapshot: ConsultationRecord,
                   charge_to: ChargeTo | None = None) -> None: ...
    async def drop(self, consultation_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Started:
    command: ivr.ConnectAdvisor
    chosen: Chosen
    requested_at: datetime


class ConsultRunner:
    """The consultations of one round, one at a time (started by ``ConnectAdvisor``)."""

    def __init__(self, job: Job, ctx: CallContext, *, client: AriPort, store: CallStore,
                 rater: Rater, desk: AdvisorPort | None, records: RecordSink | None,
                 run_leg: Callable[[LegCommand], Awaitable[None]],
                 follow_up: Callable[[object], None],
                 billing: BillingPort | None = None, live: LiveSink | None = None) -> None:
        self.job = job
        self.ctx = ctx
        self.client = client
        self.store = store
        self.rater = rater
        self.desk = desk
        self.records = records
        self.run_leg = run_leg           # the round's executor of leg commands
        self.follow_up = follow_up       # an event for the round, after the current one
        self.state: ConsultState | None = None
        self._started: _Started | None = None
        self._count = 0
        self._costs: dict[str, Money | None] = {}
        self.billing = billing
        self._plan: Plan | None = None
        self._answer_priced = False     # priced at the answering advisor's price
        self._request: Request | None = None
        self.meter: meter.Meter | None = None
        self._leg_seq = 0
        self._charging: set[asyncio.Task[None]] = set()
        self.live_sink = live
        self._kept: Live | None = None          # what consult_live holds of it
        self.announcer: queue_announce.Announcer | None = None   # the customer's place

    @property
    def live(self) -> bool:
        metering = self.meter is not None and self.meter.phase is not meter.Phase.DONE
        return metering or self.state is not None and self.state.phase is not consult.Phase.DONE

    def owns(self, channel_id: str) -> bool:
        if self.state is None:
            return False
        return self.state.leg is not None and self.state.leg.channel_id == channel_id \
            or channel_id in self.channel_ids

    def owns_playback(self, playback_id: str) -> bool:
        return self.state is not None and self.state.farewell == playback_id \
            or self.announcer is not None and self.announcer.playing == playback_id

    def owns_timer(self, name: str) -> bool:
        return name in consult.TIMERS or name == queue_announce.T_ANNOUNCE \
            or name.startswith(consult_meter.TIMER_PREFIX)

    async def playback_finished(self, playback_id: str) -> None:
        """The forced end's message, or a place in the queue, was said."""
        if self.state is not None and self.state.farewell == playback_id:
            await self.handle(consult.FarewellDone(playback_id))
        else:
            await self._announce(queue_announce.Played(playback_id))

    @property
    def channel_ids(self) -> tuple[str, ...]:
        """Every leg of the consultation not known to have ended."""
        return () if self.state is None else tuple(leg.channel_id
                                                   for leg in self.state.live_legs)

    @property
    def channel_id(self) -> str | None:
        leg = self.state.live_leg if self.state is not None else None
        return None if leg is None else leg.channel_id

    async def start(self, cmd: ivr.ConnectAdvisor, customer: str | None, leg_seq: int) -> None:
        """Resolve the customer's choice, then ring (or report why not to the IVR)."""
        if customer is None:
            return
        if self.desk is None or self.live:
            self.follow_up(ivr.ConsultFailed())
            return
        try:
            chosen = await self.desk.choose(self.job.merchant_id, code=cmd.code,
                                            group=cmd.group, advisor_id=cmd.advisor_id)
        except DATABASE_ERRORS as exc:
            log.error("advisors unavailable: %s", exc)
            self.follow_up(ivr.ConsultFailed())
            return
        if isinstance(chosen, Unavailable):
            log.info("advisor %s: %s", cmd.code or cmd.group, chosen.reason)
            self.follow_up(ivr.AdvisorUnavailable(chosen.reason))
            return
        consultation_id = f"{self.job.callback_id}-c{self._count + 1}"
        admitted, plan = await self._admit(chosen, consultation_id)
        if not admitted:
            return
        self._count += 1
        now = utcnow()
        request = Request(
            consultation_id=consultation_id,
            callback_id=self.job.callback_id, attempt_no=self.job.attempt_no,
            customer_channel=customer, members=chosen.members,
            ring_timeout_s=chosen.ring_timeout_s, queue_s=cmd.queue_s,
            caller_id=str(self.job.caller_id), sip_caller_id=str(self.job.destination),
            variables=leg_variables(self.job))
        self._started = _Started(cmd, chosen, self._requested_at(now))
        self._plan = plan
        self._answer_priced = False
        log.info("consultation %s: %s %s, members %s", request.consultation_id, cmd.method,
                 cmd.code or cmd.group or cmd.advisor_id, sorted(chosen.members))
        self._request = request
        self._leg_seq = leg_seq
        self.state = None
        if plan is not None and not plan.postpaid:
            self.meter = consult_meter.new_meter(request.consultation_id)
            await self._metered(meter.Start())     # Ready: the consultation begins
        else:
            self.meter = None
            await self._begin()

    def _requested_at(self, now: datetime) -> datetime:
        """When the customer asked for the advisor (the record's ``requested_at``): in an
        IVR round, now."""
        return now

    async def _admit(self, chosen: Chosen, consultation_id: str
                     ) -> tuple[bool, Plan | None]:
        """Billing's answer for the choice: admitted or not (the IVR told why), and the
        plan (None: no billing here; prepaid, the meter's first slice for
        ``consultation_id`` held with it, which the meter's ``Reserve`` then gets)."""
        if self.billing is None:
            return True, None
        try:
            plan = await self.billing.admit(self.job.merchant_id, self.job.destination,
                                            chosen.price_per_minute_yen, chosen.group_id,
                                            consultation_id)
        except BILLING_ERRORS as exc:
            log.error("billing unavailable: %s", exc)
            self.follow_up(ivr.ConsultFailed())
            return False, None
        if not plan.admission.allowed:
            log.info("consultation refused by billing: %s (available %d yen, needs %d)",
                     plan.admission.reason, plan.admission.available_yen,
                     plan.admission.needed_yen)
            self.follow_up(ivr.ConsultRefused(plan.admission.reason))
            return False, plan
        return True, plan

    async def _begin(self) -> None:
        assert self._request is not None and self._started is not None
        self.state = ConsultState.new(self._request, self._leg_seq)
        self.announcer = queue_announce.Announcer(self._request.customer_channel,
                                                  self._started.chosen.queue_announce_s)
        await self.handle(Begin(utcnow()))

    async def list_advisors(self, cmd: ivr.ListAdvisors) -> None:
        """The advisors an IVR list node reads (none when they cannot be read)."""
        listed: tuple[ivr.Listed, ...] = ()
        if self.desk is not None:
            try:
                listed = await self.desk.listing(self.job.merchant_id, cmd.listing)
            except DATABASE_ERRORS as exc:
                log.error("advisors unavailable: %s", exc)
        self.follow_up(ivr.AdvisorsListed(listed))

    async def handle(self, event: consult.Event) -> None:
        if isinstance(event, TimerFired) and event.name.startswith(consult_meter.TIMER_PREFIX):
            await self._meter_timer(event)
            return
        if isinstance(event, TimerFired) and event.name == queue_announce.T_ANNOUNCE:
            await self._announce(event)
            return
        await self._drive(self._step(event))

    def _step(self, event: consult.Event) -> Sequence[Command]:
        """The machine's commands for an event (a click-to-call runs its own machine,
        which embeds this one: :class:`~callback_server.click_runner.ClickConsult`)."""
        if self.state is None:
            return []
        self.state, commands = consult.transition(self.state, event)
        return commands

    async def _drive(self, commands: Sequence[Command]) -> None:
        for cmd in commands:
            await self._run(cmd)
            metered = None if self.state is None or isinstance(cmd, ivr.StopPlayback) \
                else consult_meter.meter_event(cmd, self.state)
            if isinstance(metered, meter.Connected):
                metered = await self._priced(metered)
            if metered is not None:
                await self._metered(metered)
        await self._keep_live()
        await self._left_queue()

    # --- the customer's place in the queue ----------------------------------------------

    async def _left_queue(self) -> None:
        announcer, state = self.announcer, self.state
        if announcer is None or state is None or not announcer.waiting \
                or queue_announce.in_queue(state):
            return
        await self._announce(queue_announce.Left(
            utcnow(), music=state.queued and state.phase is consult.Phase.RINGING))

    async def _announce(self, event: queue_announce.Event) -> None:
        if self.announcer is None:
            return
        self.announcer, commands = queue_announce.transition(self.announcer, event)
        for cmd in commands:
            log.debug("-> queue %s", cmd)
            match cmd:
                case queue_announce.Announce(channel_id=cid, media=media, playback_id=pid):
                    await safely(self.client.stop_moh(cid))
                    await safely(self.client.play(cid, [media], playback_id=pid,
                                                  lang=self.ctx.language.value))
                case queue_announce.Resume(channel_id=cid):
                    await safely(self.client.start_moh(cid))
                case queue_announce.Stop(playback_id=pid):
                    await safely(self.client.stop_playback(pid))
                case _:
                    await self.run_leg(cmd)

    def _to_keep(self) -> Live | None:
        """What ``consult_live`` is to hold now (None: nothing new to keep)."""
        return None if self.state is None else consult_recovery.live(self.state)

    async def _keep_live(self) -> None:
        """Keep the consultation (ringing, queued, talking) in ``consult_live`` as it
        changes."""
        now = self._to_keep()
        if self.live_sink is None or now is None or now == self._kept:
            return
        try:
            await self.live_sink.keep(self.job.callback_id, now, await self._record(now.over),
                                      None if self._plan is None else self._plan.charge_to)
            self._kept = now
        except (*DATABASE_ERRORS, InvalidRecord) as exc:
            # keeping it is for a restart's sake: the call goes on without it
            log.error("consultation %s not kept as live: %s", now.over.consultation_id, exc)

    # --- the prepaid meter --------------------------------------------------------------

    async def _metered(self, event: meter.Event) -> None:
        if self.meter is None:
            return
        self.meter, commands = meter.transition(self.meter, event)
        for cmd in commands:
            await self._meter_command(cmd)

    async def _meter_command(self, cmd: meter.Command) -> None:  # noqa: C901 - one per command
        log.debug("-> meter %s", cmd)
        plan, merchant = self._plan, self.job.merchant_id
        assert plan is not None and self.billing is not None
        match cmd:
            case meter.Reserve(consultation_id=cid, at_most_s=at_most):
                await self._metered(await self._reserve(plan, cid, at_most))
            case meter.Ready(allowed_s=allowed):
                log.info("reserved %d s of talk", allowed)
                await self._begin()
            case meter.Refuse(reason=reason):
                self.follow_up(ivr.ConsultRefused(reason))
            case meter.SetTimer(due=due, token=token):
                await self.run_leg(StartTimer(consult_meter.timer_name(token),
                                              consult_meter.delay_s(due, utcnow())))
            case meter.Extend(reservation_id=rid, at_most_s=at_most):
                await self._metered(await self._extend(rid, at_most))
            case meter.Warn(seconds_left=left):
                log.info("%d s of talk left: the warning", left)
                await self._warn()
            case meter.CutOff(talk_s=talk):
                log.info("the balance is used up after %d s: cut off", talk)
                billing_metrics().cutoffs.labels(merchant).inc()
                await self.handle(consult_meter.cut_off(utcnow()))
            case meter.Settle(reservation_id=rid, talk_s=talk):
                try:
                    settled = await self.billing.settle(merchant, rid, talk)
                    log.info("reservation %d settled: %d s, %d yen", rid, talk,
                             settled.charge.total_yen)
                except BILLING_ERRORS as exc:
                    # the reservation stays live (the operator's path); the round goes on
                    log.error("reservation %d not settled: %s", rid, exc)
                await self._metered(meter.Settled())
            case meter.Ignored():
                pass

    async def _priced(self, connected: meter.Connected) -> meter.Connected:
        """The advisor answered: a group priced by its members is rated at the answering
        member's price from here (the plan's terms, for a postpaid charge; a prepaid
        reservation repriced, its hold paying for longer at that price: the meter's
        ``Connected`` with the talk it now allows). Once per consultation: a transfer's
        second advisor does not change it."""
        plan, started, state = self._plan, self._started, self.state
        if plan is None or started is None or state is None or self._answer_priced:
            return connected
        self._answer_priced = True
        advisor = state.connected_advisor
        price = started.chosen.price_of(advisor)
        if price == plan.terms.price_per_minute_yen:
            return connected
        log.info("consultation %s: answered by advisor %s, rated at %d yen a minute "
                 "(reserved at %d)", state.request.consultation_id, advisor, price,
                 plan.terms.price_per_minute_yen)
        rid = None if self.meter is None else self.meter.reservation_id
        if rid is None:
            self._plan = plan.at_price(price)
            return connected
        assert self.billing is not None
        try:
            got = await self.billing.reprice(self.job.merchant_id, rid, price, advisor)
        except BILLING_ERRORS as exc:
            # the reservation stays at the price it was made at (and is settled at it)
            log.error("reservation %d not repriced: %s", rid, exc)
            return connected
        self._plan = plan.at_price(got.terms.price_per_minute_yen)
        return meter.Connected(connected.at, got.allowed_s)

    async def _reserve(self, plan: Plan, consultation_id: str, at_most_s: int | None
                       ) -> meter.Event:
        assert self.billing is not None
        try:
            got = await self.billing.reserve(self.job.merchant_id, plan, consultation_id,
                                             at_most_s)
        except BILLING_ERRORS as exc:
            log.error("no reservation: %s", exc)
            return meter.Refused("billing-unavailable", 0, 0)
        if isinstance(got, Refusal):
            return meter.Refused(got.reason, got.available_yen, got.needed_yen)
        return meter.Reserved(got.id, got.allowed_s)

    async def _extend(self, reservation_id: int, at_most_s: int | None) -> meter.Event:
        assert self.billing is not None and self.meter is not None
        try:
            got = await self.billing.extend(self.job.merchant_id, reservation_id, at_most_s)
            allowed = got.allowed_s
        except BILLING_ERRORS as exc:
            log.error("reservation %d not extended: %s", reservation_id, exc)
            allowed = self.meter.allowed_s
        return meter.Extended(allowed, utcnow())

    async def _meter_timer(self, fired: TimerFired) -> None:
        event = consult_meter.timer_event(fired.name, fired.at)
        if event is not None:
            await self._metered(event)

    async def _warn(self) -> None:
        """The warning to the customer and, while bridged, to the advisor too."""
        for cid in (self._customer, self.channel_id):
            if cid is not None:
                await safely(self.client.play(cid, list(consult_meter.WARNING),
                                              lang=self.ctx.language.value))

    @property
    def _customer(self) -> str | None:
        """The customer's leg (None: none yet)."""
        if self.state is not None:
            return self.state.request.customer_channel or None
        return None if self._request is None else self._request.customer_channel or None

    async def _run(self, cmd: Command) -> None:  # noqa: C901 - one branch per command
        log.debug("-> consult %s", cmd)
        match cmd:
            case RunAssignment():
                await self._assignment(cmd)
            case StartMoh(channel_id=cid):
                await safely(self.client.start_moh(cid))
            case StopMoh(channel_id=cid):
                await safely(self.client.stop_moh(cid))
            case Unbridge(bridge_id=bridge, channel_id=cid):
                await safely(self.client.remove_channel(bridge, cid))
            case Rebridge(bridge_id=bridge, channel_id=cid):
                await safely(self.client.add_channel(bridge, [cid]))
            case Farewell(channel_id=cid, media=media, playback_id=pid):
                await safely(self.client.play(cid, [media], playback_id=pid,
                                              lang=self.ctx.language.value))
            case Prompt(channel_id=cid, media=media):
                await safely(self.client.play(cid, [media], lang=self.ctx.language.value))
            case ivr.StopPlayback(playback_id=pid):
                await safely(self.client.stop_playback(pid))
            case RouteTransfer(number=number):
                await self._route_transfer(number)
            case EndPresence(advisor_id=advisor, consultation_id=presence_id):
                await self._ended(advisor, presence_id)
            case Tell(outcome=outcome):
                self.follow_up(outcome)
            case Over():
                await self._over(cmd)
            case RecordCdr():
                self._costs[cmd.call_id] = await store_cdr(
                    self.store, self.rater, cmd, destination=_number(cmd.destination),
                    inbound_tariff=self.ctx.inbound_tariff,
                    edge_call_id=self.ctx.edge_call_id, merchant_id=self.job.merchant_id)
            case _:
                await self.run_leg(cmd)

    async def _assignment(self, cmd: RunAssignment) -> None:
        assert self.desk is not None
        merchant = self.job.merchant_id
        now = utcnow()
        destination: str = ""
        routes: tuple[Route, ...] = ()
        await self._keep_live()       # kept before anyone is offered the call
        try:
            a, result = await self.desk.assignment(merchant, cmd.op, cmd.assignment)
        except DATABASE_ERRORS as exc:
            # Nothing changed in the database: wait in the queue (tried again) or fail.
            log.error("assignment %s failed: %s", cmd.op, exc)
            a, result = cmd.assignment, [am.Queue("database")]
        offer = next((c for c in result if isinstance(c, am.OfferTo)), None)
        if offer is not None:
            try:
                destination, routes = await self.desk.contact(merchant, offer.advisor_id, now)
            except (*DATABASE_ERRORS, NotFound) as exc:   # no way to ring them: the next
                log.error("advisor %s: no contact: %s", offer.advisor_id, exc)
        log.info("assignment %s: %s", cmd.op, result)
        await self.handle(Assigned(a, tuple(result), now, routes, destination))
        queued = next((c for c in result if isinstance(c, am.Queue)), None)
        if queued is not None and self.state is not None \
                and a.consultation_id == self.state.request.consultation_id \
                and queue_announce.in_queue(self.state):
            await self._announce(queue_announce.Waiting(now, queued.position))

    async def _route_transfer(self, number: str) -> None:
        """The ways to a transfer's number, cheapest first (none: the transfer fails)."""
        assert self.desk is not None
        routes: tuple[Route, ...] = ()
        try:
            routes = await self.desk.number_routes(E164.parse(number), utcnow())
        except (*DATABASE_ERRORS, InvalidNumber) as exc:
            log.error("transfer to %s: no routes: %s", number, exc)
        await self.handle(TransferRouted(utcnow(), routes))

    async def _ended(self, advisor: int, presence_id: str | None) -> None:
        assert self.desk is not None and self.state is not None
        try:
            await self.desk.ended(self.job.merchant_id, advisor,
                                  presence_id or self.state.request.consultation_id, utcnow())
        except DATABASE_ERRORS as exc:
            log.error("advisor %s: the consultation's end not applied: %s", advisor, exc)

    async def _over(self, over: Over) -> None:
        assert self._started is not None and self.desk is not None
        log.info("consultation %s over: %s, advisor %s", over.consultation_id,
                 over.end_reason, over.advisor_id)
        saved = await self._save(over)
        to = None if self._plan is None else self._plan.charge_to
        if to is not None and over.answered_at is not None:
            charging = asyncio.create_task(self._charge(to, over, saved),
                                           name=f"charge {over.consultation_id}")
            self._charging.add(charging)
            charging.add_done_callback(self._charging.discard)
        elif saved:
            await self._drop_live(over.consultation_id)

    async def _drop_live(self, consultation_id: str) -> None:
        if self.live_sink is None or self._kept is None:
            return
        try:
            await self.live_sink.drop(consultation_id)
        except DATABASE_ERRORS as exc:   # a restart's reconciler finds it recorded
            log.error("consultation %s still kept as live: %s", consultation_id, exc)

    async def _charge(self, to: ChargeTo, over: Over, saved: bool) -> None:
        """The postpaid charge, keyed by the consultation (durable before Stripe is
        called: one left pending is finished by ``Postpaid.reconcile``); the live row is
        dropped once the charge is recorded (a server that dies before leaves the row,
        and the restart's reconciler charges it)."""
        assert self.billing is not None
        try:
            charge = await self.billing.charge(self.job.merchant_id, to,
                                               over.consultation_id, talk_seconds(over))
        except BILLING_ERRORS as exc:
            log.error("consultation %s: charge not finished: %s", over.consultation_id, exc)
            return
        if saved:
            await self._drop_live(over.consultation_id)
        if charge is not None:
            log.info("consultation %s charged: %d yen, %s", over.consultation_id,
                     charge.total_yen, charge.state)

    async def _save(self, over: Over) -> bool:
        """Save the record; False if it could not be (no sink, or the database)."""
        if self.records is None:
            return False
        try:
            await self.records.save(await self._record(over))
        except DATABASE_ERRORS as exc:
            log.error("consultation %s: record not saved: %s", over.consultation_id, exc)
            return False
        return True

    async def _record(self, over: Over) -> ConsultationRecord:
        assert self._started is not None and self.desk is not None
        started = self._started
        customer_id = await self.desk.customer_id(self.job.merchant_id, self.job.destination)
        return ConsultationRecord(
            consultation_id=over.consultation_id, merchant_id=self.job.merchant_id,
            callback_id=self.job.callback_id, edge_call_id=self.ctx.edge_call_id,
            customer_number=str(self.job.destination), customer_id=customer_id,
            advisor_id=over.advisor_id, group_id=started.chosen.group_id,
            method=Method(started.command.method), requested_at=started.requested_at,
            rings=over.rings, answered_at=over.answered_at, holds=over.holds,
            transfers=over.transfers,
            ended_at=over.ended_at, talk_s=talk_seconds(over),
            end_reason=over.end_reason,
            customer_call_id=self._customer,
            leg_costs=tuple(LegCost(leg.channel_id, "advisor", leg.carrier_id,
                                    self._costs.get(leg.channel_id))
                            for leg in over.legs))


def talk_seconds(over: Over) -> int:
    """Whole seconds the customer talked with the advisor, started seconds counted."""
    if over.answered_at is None:
        return 0
    return max(0, math.ceil((over.ended_at - over.answered_at).total_seconds()))


def _number(destination: str) -> E164 | None:
    """A PSTN advisor's number (a SIP advisor's leg is not rated)."""
    try:
        return E164.parse(destination)
    except InvalidNumber:
        return None
