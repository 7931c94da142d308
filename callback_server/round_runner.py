"""What every round of a call-back job has, whatever it runs: one inbox for ARI events,
timers and follow-up events (so the pure machines see one ordered stream), its legs
(:class:`~callback_server.leg_runner.Legs`), its log context, the loop that runs it until
it is over, shutdown, an operator's control of its consultation and the catch-up after
the events websocket was down.

:class:`~callback_server.call_runner.CallRunner` (a call-back: the dialer, the IVR, a
consultation) and :class:`~callback_server.click_runner.ClickRunner` (a web
click-to-call) are its two kinds.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime

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
from callback_server.cdr_rating import CDR_LINE, cdr_facts
from callback_server.consult import Operator
from callback_server.consult_runner import ConsultRunner
from callback_server.dialer import Leg
from callback_server.dialer_messages import Finish, Job, Shutdown
from callback_server.guard.service import RoundEnd
from callback_server.leg_runner import Legs, resync_legs
from callback_server.store.leg_end import LegEnd
from callback_server.store.queue_store import LeaseLost
from shared import ari, logs
from shared.db import holding

log = logging.getLogger("callback.stasis")

#: the :func:`~shared.db.holding` labels of a running call's own writes: served before the
#: dialling of new calls when the pool is short (:func:`shared.db.serve_first`), so a
#: call in progress, its media running, never waits behind new calls for its next prompt
#: or its hang-up; the dial (the claim, the leg's row) takes the wait instead
RUNNING_CALL_WRITES = frozenset({"leg_result", "ivr_info", "cdr", "leg_end", "finish",
                                 "leg_progress"})


class RoundRunner(ABC):
    consult: ConsultRunner

    def __init__(self, job: Job, ctx: CallContext, *, client: AriPort, router: ari.EventRouter,
                 store: CallStore, rater: Rater, records: LegRecordSource | None,
                 originated: Callable[[str], None] = lambda _channel_id: None) -> None:
        self.job = job
        self.ctx = ctx
        self.client = client
        self.router = router
        self.store = store
        self.rater = rater
        self.records = records           # Asterisk's own leg records (after missed events)
        self.inbox: Inbox = asyncio.Queue()
        self.timers = Timers(self.inbox)
        self._pending: deque[object] = deque()
        self._hangup_causes: dict[str, int] = {}
        self.legs = Legs(job, ctx, client=client, router=router, store=store, rater=rater,
                         timers=self.timers, inbox=self.inbox, pending=self._pending,
                         originated=originated)     # a leg was dialled
        self.outcome: Finish | None = None

    @property
    @abstractmethod
    def channel_ids(self) -> tuple[str, ...]:
        """Every leg of the round not known to have ended."""

    @abstractmethod
    def _live_legs(self) -> Iterable[Leg | None]:
        """The round's legs, for the catch-up after the events websocket was down."""

    @abstractmethod
    def _running(self) -> bool:
        """The round goes on (events are awaited)."""

    @abstractmethod
    async def _handle(self, event: object) -> None: ...

    def _bound(self) -> AbstractContextManager[logs.LogContext]:
        """The round's log context (the worker binds the same for the whole job)."""
        return logs.bind(call_id=self.ctx.edge_call_id, request_id=self.job.callback_id,
                         merchant=self.job.merchant_id)

    async def _loop(self, begin: Callable[[], Awaitable[None]]) -> bool:
        """``begin``, then every event until the round is over; False if the lease on the
        job was lost meanwhile (every leg is hung up)."""
        try:
            await begin()
            while self._running():
                event = self._pending.popleft() if self._pending else await self.inbox.get()
                await self._handle(event)
            return True
        except LeaseLost as exc:
            log.error("%s; abandoning the round without dialling", exc)
            await self._hangup_all()
            return False
        finally:
            self.timers.cancel_all()
            self.legs.release()

    async def _finish_round(self, outcome: Finish, *, rang: bool, confirmed: bool,
                            ended: LegEnd | None = None) -> None:
        """The round's outcome stored, in one transaction with its last leg's end
        (``ended``) and what the guard records of the round (whether the customer's phone
        rang, whether a person confirmed: before the job can be queued again)."""
        self.outcome = outcome
        round_end = RoundEnd(self.job.callback_id, self.job.attempt_no, self.job.destination,
                             self.job.merchant_id, rang, confirmed)
        with holding("finish"):
            kept = await self.store.finish(self.job.callback_id, outcome, ended=ended,
                                           round_end=round_end)
        if not kept:
            log.error("lease lost; outcome %s dropped", outcome)
        line = "round %d: %s (%s)%s"
        facts: tuple[object, ...] = (
            self.job.attempt_no, outcome.status, outcome.reason,
            f", retry in {outcome.retry_in_s} s" if outcome.retry_in_s is not None else "")
        if ended is not None and ended.cdr is not None:   # one line: its CDR, then the round
            line, facts = f"{CDR_LINE}; {line}", cdr_facts(ended.cdr.cdr) + facts
        log.info(line, *facts)

    def shutdown(self) -> None:
        self.inbox.put_nowait(Shutdown(utcnow()))

    def operator(self, consultation_id: str, event: Operator) -> bool:
        """An operator's control of the round's consultation ``consultation_id`` (if it
        is the one in progress; the machine ignores what does not apply in its phase)."""
        state = self.consult.state
        if state is None or state.request.consultation_id != consultation_id \
                or not self.consult.live:
            return False
        self.inbox.put_nowait(event)
        return True

    async def resync(self, lost_at: datetime | None = None) -> None:
        """After an events reconnect (in the events task): the legs' answers and ends
        missed meanwhile (:func:`~callback_server.leg_runner.resync_legs`)."""
        with self._bound():
            await resync_legs(self._live_legs(), client=self.client, records=self.records,
                              causes=self._hangup_causes, inbox=self.inbox, lost_at=lost_at)

    async def _hangup_all(self) -> None:
        for cid in self.channel_ids:
            await safely(self.client.hangup(cid))
