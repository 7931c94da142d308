"""Job pickup: LISTEN, claim with SKIP LOCKED, lease + heartbeat, rescue, run calls.

Hot path (no polling): the intake transaction's trigger NOTIFYs
``callback_jobs`` with the job's due time; the worker claims at once when it
is due, or arms a timer for that moment (``pre_callback_delay_s``). A slow
safety sweep (``sweep_s``) catches what a notification cannot: timers lost in
a restart, retries due later, and leases that expired (rescue).

A claimed job is run by :class:`~callback_server.call_runner.CallRunner` (a web
click-to-call's by :class:`~callback_server.click_runner.ClickRunner`). Before
dialling, a job whose last leg is unresolved (it was rescued, or its worker
lost Asterisk mid-originate) asks Asterisk about that leg's channel id and
follows :func:`callback_server.dialer.rescue_action`: it re-dials only if the
call never happened.

Before dialling, the merchant's business hours (``[merchants.hours]``, the dialled
number's own when it has some) are applied again: the request may have waited in the
queue past closing time. Outside them the job waits for the next opening (given back,
due then: durable, uncounted) or, with ``outside_hours = "drop"`` (or when the line never
opens again), ends ``failed`` with reason ``outside_hours``, reported to the edge.

The round's IVR flow is the merchant's active stored flow (:mod:`callback_server.
active_flows`, kept current in memory: no query per round) or else its configured file
flow; it is chosen once when the round starts (a call in progress keeps it) and kept with
the round (``callback_round_flows``, shown in ``GET /v1/callbacks/{id}``), written in the
transaction of the round's first leg.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import asyncpg

from billing.ledger import LedgerError
from callback_server.active_flows import ActiveFlows
from callback_server.advisor_desk import AdvisorPort
from callback_server.call_ports import AriPort, CallContext, IvrPort, Rater
from callback_server.call_runner import CallRunner, no_answer_outcome
from callback_server.click_runner import ClickRunner
from callback_server.consult_billing import BillingPort
from callback_server.consult_control import CONTROL_CHANNEL, deliver_controls
from callback_server.consult_live import ConsultReconciler
from callback_server.consult_runner import LiveSink, RecordSink
from callback_server.dialer import RescueAction, reason_for, rescue_action
from callback_server.dialer_messages import (
    EDGE_TRUNK,
    Finish,
    Job,
    Reason,
    RetryPolicy,
    Route,
    edge_routes,
)
from callback_server.ivr_flow import Flow
from callback_server.store import CallbackStore
from callback_server.store.base import RoundFlow
from callback_server.store.queue_store import JOBS_CHANNEL, ClaimedJob
from ivr_platform.hours import BusinessHours
from shared import ari, logs
from shared.config import CarrierQuality, Merchant, OutsideHours
from shared.db import holding, listening
from shared.money import Money
from shared.phone import E164
from shared.refusals import Refusal
from shared.waits import within

if TYPE_CHECKING:
    from callback_server.guard.service import Guard
    from callback_server.reconcile import LegSettler

log = logging.getLogger("callback.worker")


class RouteSource(Protocol):
    async def routes(self, number: E164, at: datetime, max_rate: Money | None = None,
                     quality: CarrierQuality | None = None) -> tuple[Route, ...]: ...


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    max_calls: int = 50
    sweep_s: float = 5.0
    heartbeat_s: float = 10.0
    drain_s: float = 30.0
    #: {operator} = the merchant's operator extension, {trunk} = each of ``edge_trunks``
    operator_endpoint: str = "PJSIP/{operator}@{trunk}"
    #: the callback Asterisk's endpoints of the edge Asterisks, tried in this order
    edge_trunks: tuple[str, ...] = (EDGE_TRUNK,)
    max_call_s: int = 3600          # [guard] max_call_s: hard maximum call length


class Worker:
    def __init__(self, *, store: CallbackStore, db_url: str, merchants: Mapping[str, Merchant],
                 flows: Mapping[str, Flow], routes: RouteSource, client: AriPort,
                 router: ari.EventRouter, rater: Rater, ari_ready: asyncio.Event,
                 settings: WorkerSettings = WorkerSettings(), guard: Guard | None = None,
                 settler: LegSettler | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 desk: AdvisorPort | None = None,
                 consultations: RecordSink | None = None,
                 billing: BillingPort | None = None,
                 active_flows: ActiveFlows | None = None,
                 services: IvrPort | None = None,
                 live: LiveSink | None = None,
                 reconciler: ConsultReconciler | None = None) -> None:
        self.store = store
        self.services = services            # what the IVR's verbs reach beyond ARI
        self.live = live                      # where talking consultations are kept
        # Ends the consultations a dead server left talking (a rescued job's).
        self.reconciler = reconciler
        self.active_flows = active_flows    # merchants' stored flows (None: files only)
        self.clock = clock              # business hours are applied at its time
        self.desk = desk                      # the advisors a consultation reaches
        self.consultations = consultations    # where consultation records go
        self.billing = billing                # admission, the prepaid meter, the charge
        # Settles legs no call owns from Asterisk's own records (None: unit setups).
        self.settler = settler
        self.guard = guard
        self.db_url = db_url
        self.merchants = merchants
        self.flows = flows
        self.route_source = routes
        self.client = client
        self.router = router
        self.rater = rater
        self.ari_ready = ari_ready
        self.settings = settings
        self.calls: dict[str, CallRunner | ClickRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._stopping = False

    # --- main loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run jobs until cancelled; survives database outages."""
        beat = asyncio.create_task(self._heartbeat_loop(), name="callback heartbeat")
        try:
            while not self._stopping:
                try:
                    async with listening(self.db_url, JOBS_CHANNEL) as notes, \
                            listening(self.db_url, CONTROL_CHANNEL) as controls:
                        reader = asyncio.create_task(self._read_notes(notes))
                        # an operator's control of a consultation this process runs
                        control = asyncio.create_task(deliver_controls(controls, self.calls))
                        try:
                            await self._loop()
                        finally:
                            reader.cancel()
                            control.cancel()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("worker lost the database (%s); retrying in 1 s", exc)
                    await asyncio.sleep(1.0)
        finally:
            beat.cancel()

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            _, due = await self._claim_and_start()
            if due is not None and due > 0:
                self._arm(due)
            await within(self._wake.wait(), self.settings.sweep_s)

    async def _read_notes(self, notes: asyncio.Queue[str]) -> None:
        while True:
            payload = await notes.get()
            try:
                due = float(payload.split()[1]) - time.time()
            except (IndexError, ValueError):
                due = 0.0
            if due <= 0:
                self._wake.set()
            else:
                self._arm(due)

    def _arm(self, delay_s: float) -> None:
        """Wake the loop in ``delay_s`` (keeps only the earliest pending wake-up)."""
        loop = asyncio.get_running_loop()
        at = loop.time() + delay_s
        if self._timer is not None and self._timer_at <= at and self._timer_at > loop.time():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._wake.set)

    async def claim_and_start(self) -> int:
        """Claim what is due into the free slots and start it; the jobs started."""
        started, _ = await self._claim_and_start()
        return started

    async def _claim_and_start(self) -> tuple[int, float | None]:
        """:meth:`claim_and_start`, and the seconds until the next job not claimed is due
        (:meth:`QueueStore.claim_due`), in one statement. Full (or stopping), nothing is
        claimed."""
        free = 0 if self._stopping else max(0, self.settings.max_calls - len(self._tasks))
        with holding("claim"):
            jobs, due = await self.store.claim_due(free)
        for job in jobs:
            task = asyncio.create_task(self._run_job(job), name=f"job {job.callback_id}")
            self._tasks[job.callback_id] = task
            task.add_done_callback(functools.partial(self._done, job.callback_id))
        return len(jobs), due

    def _done(self, callback_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(callback_id, None)
        self.calls.pop(callback_id, None)
        self.store.forget(callback_id)
        if len(self._tasks) == self.settings.max_calls - 1:
            # A slot is free where none was: due jobs may have been left unclaimed. Not
            # full, every due job was claimed, and a job queued later wakes the loop by
            # its NOTIFY (a retry's and a give-back's too).
            self._wake.set()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self.heartbeat()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("heartbeat failed: %s", exc)

    async def heartbeat(self) -> set[str]:
        """Extend the leases of the running jobs; log (and return) those lost. A job
        whose round ended meanwhile (its task done, or its round given back) is not."""
        with holding("heartbeat"):
            lost = await self.store.heartbeat(list(self._tasks)) & set(self._tasks)
        for callback_id in sorted(lost):
            log.error("lease on %s lost (another worker may rescue it)", callback_id)
        return lost

    async def shutdown(self) -> None:
        """Stop claiming, let running calls finish for ``drain_s``, then end them."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks.values()),
                                            timeout=self.settings.drain_s)
            for runner in list(self.calls.values()):
                runner.shutdown()
            if pending:
                await asyncio.wait(pending, timeout=10)

    # --- one job --------------------------------------------------------------------------

    async def _run_job(self, claimed: ClaimedJob) -> None:
        """The job's task: every line of it (the call included) names the call."""
        with logs.bind(call_id=claimed.edge_call_id, request_id=claimed.callback_id,
                       merchant=claimed.merchant_id), holding("job"):
            await self._run_job_bound(claimed)

    async def _run_job_bound(self, claimed: ClaimedJob) -> None:
        try:
            await self._run_job_inner(claimed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job crashed; it is given back")
            try:
                await self.store.release(claimed.callback_id, 10.0, "worker_error")
            except Exception:
                log.exception("could not give the job back (its lease will expire)")

    async def _run_job_inner(self, claimed: ClaimedJob) -> None:
        merchant = self.merchants.get(claimed.merchant_id)
        if merchant is None:
            log.error("job of an unknown merchant")
            await self.store.finish(claimed.callback_id,
                                    Finish("failed", Reason.UNKNOWN_MERCHANT, claimed.attempts))
            return
        job = self._job(claimed, merchant)
        if not self.ari_ready.is_set():
            log.warning("job waits: Asterisk (ARI) not connected")
            await self.store.release(claimed.callback_id, 2.0, "asterisk_unreachable",
                                     rescue=claimed.rescued)
            return
        if claimed.rescued:
            await self._rescued(claimed)
        # a job with no leg yet (the claim counts them) has none to settle: nothing read
        if claimed.legs and not await self._resolve_last_leg(claimed, job):
            return
        if not await self._within_hours(claimed, merchant):
            return
        if self.guard is not None and claimed.guard is not None:
            with holding("guard"):
                verdict = await self.guard.screen_round(claimed.callback_id, claimed.caller,
                                                        merchant.id, claimed.guard)
            if verdict is not None:     # blocked, locked or braked since intake: final
                await self.store.finish(claimed.callback_id,
                                        Finish("failed", verdict.reason, claimed.attempts))
                return
        try:
            with holding("routes"):
                routes = await self.route_source.routes(job.destination, datetime.now(UTC),
                                                        merchant.max_cost_per_minute,
                                                        merchant.carrier_quality)
        except Exception:
            log.exception("route choice failed")
            await self.store.release(claimed.callback_id, 30.0, "routing_error")
            return
        if self.guard is not None and claimed.guard is not None and routes:
            with holding("guard"):
                keep, capped = await self.guard.usable_routes(routes, claimed.callback_id,
                                                              merchant.id, claimed.guard)
            if capped is not None:      # every trunk is capped: wait, uncounted
                await self.store.release(claimed.callback_id,
                                         float(self.guard.settings.caps.retry_s),
                                         str(capped.reason))
                return
            routes = tuple(routes[i] for i in keep)
        runner, runs = await self._runner(claimed, job, merchant)
        log.info("job claimed, round %d/%d: %s, routes %s", job.attempt_no,
                 job.policy.max_attempts, runs, [r.carrier_id for r in routes])
        self.calls[job.callback_id] = runner
        if self._stopping:
            runner.shutdown()
        await runner.run(routes)

    async def _runner(self, claimed: ClaimedJob, job: Job, merchant: Merchant
                      ) -> tuple[CallRunner | ClickRunner, str]:
        """The round's runner: a call-back's (its IVR flow chosen and kept), or a web
        click-to-call's; with what it runs, for the round's first line."""
        records = self.settler.records if self.settler else None
        if claimed.click_advisor is not None:
            ctx = CallContext(claimed.edge_call_id, merchant.inbound_tariff,
                              self.flows[merchant.ivr_flow], claimed.hungup_at,
                              merchant.language)     # hungup_at: when the request came
            return ClickRunner(job, ctx, claimed.click_advisor, client=self.client,
                               router=self.router, store=self.store, rater=self.rater,
                               desk=self.desk, consultations=self.consultations,
                               billing=self.billing, records=records,
                               live=self.live), "web click-to-call"
        flow, runs = self._round_flow(job, merchant)
        ctx = CallContext(claimed.edge_call_id, merchant.inbound_tariff,
                          flow, claimed.hungup_at, merchant.language,
                          hours=self._hours(claimed, merchant), clock=self.clock)
        return CallRunner(job, ctx, client=self.client, router=self.router,
                          store=self.store, rater=self.rater,
                          records=records, desk=self.desk,
                          consultations=self.consultations, billing=self.billing,
                          services=self.services, live=self.live), runs

    def _round_flow(self, job: Job, merchant: Merchant) -> tuple[Flow, str]:
        """The flow this round runs, kept with the round (written with its first leg),
        and as the round's first line names it (``flow NAME version V``)."""
        stored = self.active_flows.get(merchant.id) if self.active_flows else None
        flow = stored.flow if stored else self.flows[merchant.ivr_flow]
        version = stored.version if stored else None
        self.store.keep_round_flow(job.callback_id, RoundFlow(job.attempt_no, flow.name,
                                                              version))
        return flow, f"flow {flow.name} " + (f"version {version}" if version
                                             else "(configured file)")

    @staticmethod
    def _hours(claimed: ClaimedJob, merchant: Merchant) -> BusinessHours | None:
        """The hours of the number the customer dialled (else the merchant's; None: none)."""
        if merchant.hours is None:
            return None
        return merchant.hours.default if claimed.dialed is None \
            else merchant.hours.for_number(claimed.dialed)

    async def _within_hours(self, claimed: ClaimedJob, merchant: Merchant) -> bool:
        """True if the number's line is open now; otherwise the job has been given back
        until the next opening (``wait``) or finished ``outside_hours`` (``drop``)."""
        hours = self._hours(claimed, merchant)
        if hours is None:
            return True
        now = self.clock()
        status = hours.status(now)
        if status.open:
            return True
        opening = hours.next_opening(now)
        if merchant.outside_hours is OutsideHours.WAIT and opening is not None:
            log.info("outside hours (%s): waits until %s", status.reason, opening.isoformat())
            await self.store.release(claimed.callback_id, (opening - now).total_seconds(),
                                     Refusal.OUTSIDE_HOURS.value)
            return False
        log.info("outside hours (%s): dropped%s", status.reason,
                 "" if opening else " (the line never opens again)")
        await self.store.finish(claimed.callback_id,
                                Finish("failed", Refusal.OUTSIDE_HOURS, claimed.attempts))
        return False

    def _job(self, claimed: ClaimedJob, merchant: Merchant) -> Job:
        return Job(callback_id=claimed.callback_id, merchant_id=merchant.id,
                   destination=claimed.caller, caller_id=merchant.callback_caller_id,
                   ring_timeout_s=merchant.ring_timeout_s,
                   policy=RetryPolicy(claimed.max_attempts, merchant.retry_backoff_s),
                   attempt_no=claimed.attempts + 1, leg_seq=claimed.legs,
                   operator_routes=edge_routes(
                       self.settings.operator_endpoint.replace("{operator}", merchant.operator),
                       self.settings.edge_trunks),
                   max_call_s=self.settings.max_call_s)

    async def _rescued(self, claimed: ClaimedJob) -> None:
        """A rescued job's consultations its dead process left talking are ended (their
        legs hung up, their records written, their advisors freed:
        :class:`~callback_server.consult_live.ConsultReconciler`). Its prepaid
        consultations whose record was saved but whose reservation was not settled (the
        process died in between) are settled with the record's talk seconds. One without
        a record stays live for an operator."""
        if self.reconciler is not None:
            await self.reconciler.reconcile(callback_id=claimed.callback_id)
        if self.billing is None:
            return
        try:
            settled = await self.billing.rescue(claimed.merchant_id, claimed.callback_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, LedgerError) as exc:
            log.error("rescue: reservations not settled: %s", exc)
            return
        for done in settled:
            log.warning("rescue: reservation %d settled from its record: %d s, %d yen",
                        done.reservation_id, done.charge.talk_s, done.charge.total_yen)

    async def _resolve_last_leg(self, claimed: ClaimedJob, job: Job) -> bool:
        """True if the job may dial now; otherwise it has been finished or given back.

        A rescued job's last leg is settled first, through the Asterisk it was placed
        on: if the channel still exists it is hung up; if it is gone, Asterisk's own
        record says whether it was answered. Either way an answered leg gets its CDR
        and is never dialled again."""
        leg = await self.store.last_leg(claimed.callback_id)
        if leg is None or (not claimed.rescued and leg.status in ("failed", "ended")):
            return True
        last, channel = leg.last, None
        mine = self.store.asterisk
        if leg.asterisk is not None and mine is not None and leg.asterisk != mine:
            # The claim hands us another Asterisk's leg only after no server of that
            # Asterisk rescued it for a long while: it is unreachable. Decide blind.
            log.warning("rescue: its leg %s lives on Asterisk %s, unreachable; "
                        "deciding from the database", leg.channel_id, leg.asterisk)
        else:
            try:
                channel = await self.client.get_channel(leg.channel_id)
                if channel is None and self.settler is not None \
                        and leg.status in ("dialing", "originated", "answered"):
                    record = await self.settler.record_of(leg)
                    if record is not None or leg.status == "answered":
                        last = await self.settler.settle(leg, record)
            except (ari.AriError, TimeoutError) as exc:
                log.warning("rescue: cannot ask Asterisk about %s (%s); later",
                            leg.channel_id, exc)
                await self.store.release(claimed.callback_id, 5.0, "asterisk_unreachable")
                return False
        action = rescue_action(last, channel.state if channel else None)
        log.warning("rescue: last leg %s is %s, channel %s -> %s", leg.channel_id,
                    last.status, channel.state if channel else "absent", action)
        if action is RescueAction.REDIAL:
            return True
        if channel is not None and self.settler is not None:
            await self.settler.settle_stray(channel)
        else:
            if channel is not None:
                try:
                    await self.client.hangup(leg.channel_id)
                except ari.AriError as exc:
                    log.warning("rescue hang-up of %s failed: %s", leg.channel_id, exc)
            if last.status != "ended" and self.settler is not None:
                last = await self.settler.settle(leg, None)
            elif last.status != "ended":
                await self.store.leg_result(leg.channel_id, "ended", last.cause)
        outcome = {
            RescueAction.HANGUP_AND_FAIL: Finish("failed", Reason.WORKER_LOST, job.attempt_no),
            RescueAction.COMPLETE: Finish("completed", Reason.ANSWERED, job.attempt_no),
            RescueAction.FAIL: Finish("failed", reason_for(last.cause or 0), job.attempt_no),
        }.get(action) or no_answer_outcome(job)
        await self.store.finish(claimed.callback_id, outcome)
        return False
