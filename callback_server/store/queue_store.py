"""The job queue: ``callback_requests`` itself, claimed by the workers under a lease.

A worker claims due rows with ``FOR UPDATE SKIP LOCKED`` on that table only, sets
``status = 'dialing'`` and a lease; a heartbeat extends the lease. A row whose lease
ran out is claimable again (a *rescue*). A round ends with :meth:`QueueStore.finish`:
the job is queued again, or closed and the edge told; one closed ``failed`` is also
queued as a ``callback_missed`` notification to the merchant's channels that take it
(:mod:`ivr_platform.notify_outbox`), in the same transaction.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from billing.records import RECORDS_WAITING
from callback_server.dialer_messages import Finish
from callback_server.guard.service import VELOCITY_ACTS, ClaimFacts, RoundEnd, RoundRecord
from callback_server.guard.store import round_facts_of
from callback_server.metrics import callback as callback_metrics
from callback_server.store.base import StoreBase
from callback_server.store.leg_end import LegEnd, leg_end_part, leg_end_written
from ivr_platform.notify_config import Event
from ivr_platform.notify_outbox import ENQUEUED, enqueue_args, enqueue_ctes
from ivr_platform.notify_outbox import enqueue as enqueue_notification
from shared.db import survives_database_restarts
from shared.outbox import (
    EVENTS_PATH,
    Outbox,
    encode_sql,
    fact_message_id,
    isoformat,
    isoformat_sql,
)
from shared.phone import E164, InvalidNumber, normalise

log = logging.getLogger("callback.store")

JOBS_CHANNEL = "callback_jobs"


#: queue a job again under our lease (its own statement's CTE ``job``, 5 parameters)
_REQUEUE = ("""job AS (
        UPDATE callback_requests SET status = 'queued', attempts = $3, reason = $4,
            lease_owner = NULL, lease_expires_at = NULL,
            next_attempt_at = now() + $5 * interval '1 second', updated_at = now()
        WHERE callback_id = $1 AND lease_owner = $2 AND status = 'dialing'
        RETURNING merchant_id)""", 5)
#: close a job under our lease and tell the edge (CTEs ``job`` and its ``callback_status``
#: message: its facts ``$8``, the job's own added; 8 parameters)
_CLOSE = (f"""job AS (
        UPDATE callback_requests SET status = $3, attempts = $4, reason = $5,
            lease_owner = NULL, lease_expires_at = NULL, finished_at = now(),
            updated_at = now()
        WHERE callback_id = $1 AND lease_owner = $2 AND status = 'dialing'
        RETURNING edge_call_id, merchant_id, finished_at, caller, received_at),
    message AS (
        INSERT INTO outbox ({Outbox.INSERT_COLUMNS})
        SELECT $6, 'callback_status', $7, {encode_sql(
            "$8::jsonb || jsonb_build_object('edge_call_id', edge_call_id, "
            f"'merchant_id', merchant_id, 'at', {isoformat_sql('finished_at')})")},
            merchant_id, false FROM job
        ON CONFLICT (message_id) DO NOTHING)""", 8)


def _ending(ctes: str, record: RoundRecord | None, leg_end: str | None = None,
            columns: Sequence[str] = ()) -> str:
    """The job's end (``ctes``) as one statement, carrying the guard's round when there is
    one and the round's last leg's end (``leg_end``: its CTEs; ``columns``: what it did,
    with a CDR, and the guard's check of a statement committed alone): a row all the same
    when the job is not ours (its columns NULL), the round's facts with it."""
    withs = [ctes, *(() if record is None else (f"round AS ({record.query})",)),
             *(() if leg_end is None else (leg_end,))]
    columns = ["job.*", *(() if record is None else ("round.*",)), *columns]
    joins = "" if record is None else " LEFT JOIN round ON true"
    return (f"WITH {', '.join(withs)} SELECT {', '.join(columns)} "
            f"FROM (SELECT) one LEFT JOIN job ON true{joins}")


def _missed(merchant: int) -> str:
    """A missed call-back's notification facts as a CTE ``missed`` after :data:`_CLOSE`'s
    (its attempts ``$4``, reason ``$5``; ``$merchant``: the merchant whose channels the
    notification goes to): a row when the job closed is that merchant's."""
    return f"""missed AS (
        SELECT merchant_id, jsonb_build_object(
            'caller', caller, 'at', {isoformat_sql('received_at')}, 'reason', $5::text,
            'attempts', $4::int, 'edge_call_id', edge_call_id) AS facts
        FROM job WHERE merchant_id = ${merchant})"""


class LeaseLost(RuntimeError):
    """Our lease on a job ran out and another worker may own it: do not dial."""


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    callback_id: str
    edge_call_id: str
    merchant_id: str
    caller: E164
    attempts: int          # rounds finished before this claim
    max_attempts: int
    legs: int              # legs persisted so far (channel id sequence)
    rescued: bool          # the previous owner's lease expired mid-job
    #: the caller's hang-up at the edge (its arrival when unknown): the call-back latency
    hungup_at: datetime
    #: the merchant's number the customer dialled (None: not reported, or not a number)
    dialed: E164 | None = None
    #: a web click-to-call's advisor (:mod:`callback_server.store.click_store`); None: a
    #: call-back of an edge call
    click_advisor: int | None = None
    #: what the guard screens the round on, read by the claim (None: no guard)
    guard: ClaimFacts | None = None


@functools.lru_cache(maxsize=1024)
def _number_or_none(text: str | None) -> E164 | None:
    """The dialled number as stored, read as a number (None: not one). Kept per text: the
    numbers customers dial are the merchants' few, and libphonenumber's parse of one was
    the claim's largest Python cost (≈ 0.14 ms of 0.67 ms a claim under cProfile, a 20/s
    control sweep); :class:`E164` is immutable, so the same value serves every claim."""
    try:
        return None if text is None else normalise(text)
    except InvalidNumber:
        return None


class QueueStore(StoreBase):
    """Claim, heartbeat, release and finish jobs under this store's lease owner."""

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs (and jobs whose lease expired)."""
        jobs, _ = await self.claim_due(limit)
        return jobs

    async def claim_due(self, limit: int) -> tuple[list[ClaimedJob], float | None]:
        """:meth:`claim`, and in the same statement the seconds until the next job not
        claimed now is due (a queued job, or a lease that runs out; negative: overdue;
        None: none), for the worker's timer. ``limit`` 0 claims nothing. With a guard,
        the same statement reads what the guard screens each claimed job's round and
        chooses its routes on (``guard_number_facts`` of the callers, ``guard_cap_usage``
        once for all: :class:`ClaimFacts`)."""
        now, brake_since = self.guard.intake_window() if self.guard is not None \
            else (None, None)
        brake_limit = self.guard.settings.brake.limit if self.guard is not None else None
        day = None if self.guard is None or now is None else self.guard.today(now)
        # one statement: callback_claim (migration 1080) keeps its plan for the session
        rows = await self.pool.fetch(
            "SELECT * FROM callback_claim($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            self.owner, self.lease_s, limit, self.asterisk, self.foreign_rescue_after_s,
            now, brake_since, day, brake_limit)
        jobs = [ClaimedJob(r["callback_id"], r["edge_call_id"], r["merchant_id"],
                           E164.parse(r["caller"]), r["attempts"], r["max_attempts"],
                           int(r["legs"]), r["prev_status"] == "dialing", r["hungup_at"],
                           _number_or_none(r["dialed"]), r["click_advisor"],
                           None if self.guard is None or now is None
                           else self.guard.claim_facts(now, r["guard_facts"], r["guard_caps"]))
                for r in rows if r["callback_id"] is not None]
        self.ending.difference_update(job.callback_id for job in jobs)
        for job in jobs:
            if job.rescued:
                log.warning("rescued job %s (previous worker's lease expired)", job.callback_id)
        due_s = rows[0]["due_s"]
        return jobs, None if due_s is None else float(due_s)

    async def heartbeat(self, callback_ids: Sequence[str]) -> set[str]:
        """Extend our leases; returns the ids whose lease was lost: no longer ours (another
        worker took the job, or its row is gone) although we did not give its round back
        (:meth:`finish`, :meth:`release`; also when that raced this heartbeat)."""
        if not callback_ids:
            return set()
        rows = await self.pool.fetch(
            """UPDATE callback_requests
               SET lease_expires_at = now() + $2 * interval '1 second', heartbeat_at = now()
               WHERE callback_id = ANY($3::text[]) AND lease_owner = $1 AND status = 'dialing'
               RETURNING callback_id""", self.owner, self.lease_s, list(callback_ids))
        return set(callback_ids) - {r["callback_id"] for r in rows} - self.ending

    def forget(self, callback_id: str) -> None:
        """The worker no longer runs the job (its task ended)."""
        self.ending.discard(callback_id)
        self.round_flows.pop(callback_id, None)

    async def release(self, callback_id: str, delay_s: float, reason: str, *,
                      rescue: bool = False) -> None:
        """Give a job back without counting a round (e.g. Asterisk unreachable).

        ``rescue``: the job was claimed as a rescue and its last round is not resolved
        yet: it stays ``dialing``, its lease lapsing after ``delay_s``, so its next claim
        is a rescue again (a plain one would take the round as finished and dial)."""
        self.ending.add(callback_id)
        await self.pool.execute(
            """UPDATE callback_requests SET lease_owner = NULL, reason = $3,
                   updated_at = now(),
                   status = CASE WHEN $5 THEN status ELSE 'queued' END,
                   lease_expires_at = CASE WHEN $5
                       THEN now() + $2 * interval '1 millisecond' END,
                   next_attempt_at = CASE WHEN $5 THEN next_attempt_at
                       ELSE now() + $2 * interval '1 millisecond' END
               WHERE callback_id = $1 AND lease_owner = $4 AND status = 'dialing'""",
            callback_id, int(delay_s * 1000), reason, self.owner, rescue)

    @survives_database_restarts
    async def finish(self, callback_id: str, outcome: Finish, *, ended: LegEnd | None = None,
                     round_end: RoundEnd | None = None) -> bool:
        """End our round: queue the job again, or close it and tell the edge; counted
        (``cbgw_callbacks_total``) once committed. In the same statement: the round's
        last leg's end (``ended``: its result and CDR, and a customer leg kept for the
        billing records), and the round as the guard records it (``round_end``: before
        the job can be claimed again); that statement is the whole transaction unless
        something is written after it in Python (:meth:`_finish`). A round
        the outcome does not count (``attempts`` below its number: every leg refused at
        admission, or a shutdown before the first) did not happen: the guard records
        none, and the round that runs under the same number later is the one it holds.

        Returns False (and changes nothing of the job) if our lease was lost meanwhile;
        the leg's end and the guard's record are written all the same.
        """
        self.ending.add(callback_id)
        if ended is not None and self.leg_results is not None:
            self.leg_results.forget(ended.channel_id)   # its result is not coming alone
        merchant_id = await self._finish(callback_id, outcome, ended, round_end)
        if merchant_id is None:
            return False
        callback_metrics().callbacks.labels(merchant_id, outcome.status,
                                            str(outcome.reason)).inc()
        return True

    async def _finish(self, callback_id: str, outcome: Finish, ended: LegEnd | None,
                      round_end: RoundEnd | None) -> str | None:
        """The job's merchant, or None if our lease was lost: one statement, a transaction
        of its own (the leg's CDR with its spend and the spend caps' check; a missed
        call-back's notification, its merchant known before: the round's), else that
        statement and what follows it in a transaction: when it fails (records waiting
        for a customer leg, the velocity rules acting on the round), or when a missed
        call-back's merchant is known only from the statement."""
        merchant_id = round_end.merchant_id if round_end is not None \
            else ended.cdr.merchant_id if ended is not None and ended.cdr is not None \
            else None
        if not self._missed(outcome) or merchant_id is not None:
            try:
                async with self.pool.acquire() as conn:
                    return await self._ending(conn, callback_id, outcome, ended, round_end,
                                              alone=True, merchant_id=merchant_id)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate not in (RECORDS_WAITING, VELOCITY_ACTS):
                    raise
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._ending(conn, callback_id, outcome, ended, round_end,
                                      alone=False)

    def _missed(self, outcome: Finish) -> bool:
        """Whether the finish notifies a missed call-back (closed ``failed``)."""
        return outcome.retry_in_s is None and outcome.status == "failed" \
            and self.notify is not None

    async def _ending(self, conn: asyncpg.Connection, callback_id: str, outcome: Finish,
                      ended: LegEnd | None, round_end: RoundEnd | None, *,
                      alone: bool, merchant_id: str | None = None) -> str | None:
        """The finish's statement (``alone``: committed on its own, with a missed
        call-back's notification for the channels of ``merchant_id``), and in the caller's
        transaction what follows it."""
        ctes, params = _CLOSE if outcome.retry_in_s is None else _REQUEUE
        record = None
        if round_end is not None and self.guard is not None \
                and round_end.counted(outcome.attempts):
            record = self.guard.round_record(round_end, params + 1)
        args: tuple[object, ...] = (callback_id, self.owner)
        if outcome.retry_in_s is not None:
            args += (outcome.attempts, str(outcome.reason), outcome.retry_in_s)
        else:
            args += (outcome.status, outcome.attempts, str(outcome.reason),
                     uuid.UUID(fact_message_id("callback_status", callback_id)),
                     EVENTS_PATH, {"kind": "callback_status", "callback_id": callback_id,
                                   "status": outcome.status, "reason": str(outcome.reason),
                                   "attempts": outcome.attempts})
        args += () if record is None else record.args
        columns = []
        if alone and record is not None and self.guard is not None \
                and record.end.decided_after:
            decided, decided_args = self.guard.round_decided_after(record, len(args) + 1)
            columns.append(decided)
            args += decided_args
        withs: list[str] = []
        part = None if ended is None \
            else leg_end_part(self, ended.cdr, ended, len(args) + 1, alone=alone)
        if part is not None:
            withs.append(part.ctes)
            args += part.args
            if part.columns is not None:
                columns.append(part.columns)
        missed = self._missed(outcome)
        notice = None if not (alone and missed) \
            else self._notice(callback_id, merchant_id)
        if notice is not None:
            withs += [_missed(len(args) + 1), enqueue_ctes(len(args) + 2, "missed")]
            args += (merchant_id, *notice)
            columns.append(ENQUEUED)
        row = await conn.fetchrow(
            _ending(ctes, record, ",\n    ".join(withs) or None, columns), *args)
        assert row is not None
        if part is not None and part.stored is not None:
            await leg_end_written(self, conn, part, row)
        if record is not None and self.guard is not None:
            await self.guard.round_recorded(conn, record, round_facts_of(row))
        if row["merchant_id"] is None:
            if outcome.retry_in_s is None:
                log.error("finish %s: lease lost; outcome %s not recorded", callback_id,
                          outcome)
            return None
        if missed:
            await self._missed_notified(conn, callback_id, outcome, row,
                                        merchant_id if alone else None)
        return str(row["merchant_id"])

    def _notice(self, callback_id: str, merchant_id: str | None
                ) -> tuple[object, ...] | None:
        """A missed call-back's notification for the statement to queue
        (``notify_outbox.enqueue_args``): None when none of the merchant's channels takes
        it."""
        if self.notify is None or merchant_id is None:
            return None
        return enqueue_args(self.notify, merchant_id=merchant_id, event=Event.CALLBACK_MISSED,
                            fact_key=f"callback_missed:{callback_id}")

    async def _missed_notified(self, conn: asyncpg.Connection, callback_id: str,
                               outcome: Finish, row: asyncpg.Record,
                               merchant_id: str | None) -> None:
        """After the finish's statement (``row``) of a missed call-back: its notification
        queued in the caller's transaction, or in one of its own, unless the statement
        queued it for the job's merchant (``merchant_id``: the one it queued it for, or
        found no channel of; None: not done in the statement)."""
        if self.notify is None or merchant_id == row["merchant_id"]:
            return
        if merchant_id is not None:
            log.error("finish %s: the job's merchant is %s, not %s: its missed call-back "
                      "notified after its finish", callback_id, row["merchant_id"],
                      merchant_id)
        async with contextlib.AsyncExitStack() as block:
            if not conn.is_in_transaction():    # after a statement that committed alone
                await block.enter_async_context(conn.transaction())
            await enqueue_notification(
                conn, self.notify, merchant_id=row["merchant_id"],
                event=Event.CALLBACK_MISSED, fact_key=f"callback_missed:{callback_id}",
                facts={"caller": row["caller"], "at": isoformat(row["received_at"]),
                       "reason": str(outcome.reason), "attempts": outcome.attempts,
                       "edge_call_id": row["edge_call_id"]})
