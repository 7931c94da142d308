"""The callback site's repository: intake, the job queue, legs, CDRs, request info.

Every fact that the edge must hear about is written together with its outbox
message in one transaction (:meth:`shared.outbox.Outbox.enqueue`), with a
message id derived from the fact (uuid5), so writing a fact twice is a no-op
and never sends two messages.

The queue is ``callback_requests`` itself. A worker claims due rows with
``FOR UPDATE SKIP LOCKED`` on that table only, sets ``status = 'dialing'``
and a lease; a heartbeat extends the lease. A row whose lease ran out is
claimable again (a *rescue*). Every leg row is inserted only while the lease
is still ours (:meth:`persist_leg`), and ``channel_id`` is the primary key:
two workers can never both originate the same leg.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import asyncpg
import tenacity

from callback_server.dialer import LastLeg
from callback_server.dialer_messages import Finish, PersistAttempt, RecordCdr
from callback_server.guard.reasons import GuardRefused, Verdict
from callback_server.ivr import Submit
from callback_server.schemas import IntakeRequest
from shared.config import Merchant
from shared.link import Answer
from shared.money import Money
from shared.outbox import Outbox, isoformat
from shared.phone import E164

if TYPE_CHECKING:
    from callback_server.guard.service import Guard, IntakeScreen

log = logging.getLogger("callback.store")

EVENTS_PATH = "/v1/link/events"
JOBS_CHANNEL = "callback_jobs"
_NS = uuid.UUID("6f0c7f0e-8a53-4c1e-9d44-3b1c2d0e5a10")


def fact_message_id(kind: str, key: str) -> str:
    """The outbox message id of a fact: the same fact always gets the same id."""
    return str(uuid.uuid5(_NS, f"{kind}:{key}"))


def new_callback_id() -> str:
    """``cb-`` and 128 random bits in hex (one for every request that arrives)."""
    return "cb-" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Intake:
    """A call-back request on its way in: what the edge sent, for which merchant."""

    req: IntakeRequest
    merchant: Merchant


@dataclass(frozen=True, slots=True)
class LegRow:
    """A persisted leg (``callback_attempts``) with its request's caller and edge call."""

    channel_id: str
    callback_id: str
    merchant_id: str
    leg: str
    carrier_id: str
    endpoint: str
    status: str
    answered: bool
    answered_at: datetime | None
    cause: int | None
    created_at: datetime
    asterisk: str | None
    caller: str
    edge_call_id: str

    @property
    def last(self) -> LastLeg:
        return LastLeg(self.status, self.answered, self.cause)

    @property
    def destination(self) -> str:
        return self.caller if self.leg == "customer" else self.endpoint


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


# Connection-level failures: the database restarting, a network blip. Not SQL errors.
DB_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError, asyncpg.OperatorInterventionError)
LIVE_CALL_WRITE_RETRY_S = 60.0

P = ParamSpec("P")
T = TypeVar("T")


def survives_database_restarts(fn: Callable[P, Coroutine[Any, Any, T]]
                               ) -> Callable[P, Coroutine[Any, Any, T]]:
    """Retry a write made during a live call on connection errors, for up to a minute.

    A database restart must not abandon a call in progress or lose its CDR or the
    order the customer gave. Safe only for writes that are idempotent by key
    (ON CONFLICT DO NOTHING, or an UPDATE guarded by the state it moves from): a
    commit whose acknowledgement was lost is then harmless to repeat.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        async for attempt in tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(DB_CONNECTION_ERRORS),
                wait=tenacity.wait_exponential(multiplier=0.2, max=5),
                stop=tenacity.stop_after_delay(LIVE_CALL_WRITE_RETRY_S), reraise=True,
                before_sleep=lambda rs: log.warning(
                    "%s: database unavailable (%s); retrying", fn.__name__,
                    rs.outcome.exception() if rs.outcome else "?")):
            with attempt:
                return await fn(*args, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


class CallbackStore:
    def __init__(self, pool: asyncpg.Pool, *, owner: str, lease_s: int = 30,
                 guard: Guard | None = None, foreign_rescue_after_s: float = 300.0) -> None:
        self.pool = pool
        self.owner = owner
        self.lease_s = lease_s
        self.guard = guard          # None: no toll-fraud/harassment screening (unit setups)
        # The Asterisk (its systemname) this server places legs on; set on ARI connect.
        self.asterisk: str | None = None
        # A rescued job whose live leg is on another Asterisk waits this long for a
        # server of that Asterisk before anyone else takes it (and decides blind).
        self.foreign_rescue_after_s = foreign_rescue_after_s

    # --- merchants ----------------------------------------------------------------------

    async def sync_merchants(self, merchants: Sequence[Merchant]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for m in merchants:
                await conn.execute(
                    """INSERT INTO merchants (merchant_id, name, callback_caller_id,
                           pre_callback_delay_s, max_attempts, retry_backoff_s, ring_timeout_s,
                           ivr_flow, operator, inbound_tariff, synced_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())
                       ON CONFLICT (merchant_id) DO UPDATE SET name = $2,
                           callback_caller_id = $3, pre_callback_delay_s = $4,
                           max_attempts = $5, retry_backoff_s = $6, ring_timeout_s = $7,
                           ivr_flow = $8, operator = $9, inbound_tariff = $10, synced_at = now()
                    """, m.id, m.name, str(m.callback_caller_id), m.pre_callback_delay_s,
                    m.max_attempts, list(m.retry_backoff_s), m.ring_timeout_s, m.ivr_flow,
                    m.operator, m.inbound_tariff)

    # --- intake -------------------------------------------------------------------------

    async def intake(self, message_id: str, req: IntakeRequest, merchant: Merchant) -> Answer:
        """Store one call-back request (a batch of one, see :meth:`intake_batch`)."""
        batch = [(message_id, Intake(req, merchant))]
        async with self.pool.acquire() as conn:
            try:
                answers = await self.intake_batch(conn, batch)
            except MessageRace:  # stored meanwhile: now it is a repeat
                answers = await self.intake_batch(conn, batch)
        return answers[message_id]

    async def intake_batch(self, conn: asyncpg.Connection,
                           batch: Sequence[tuple[str, Intake]]) -> dict[str, Answer]:
        """Store call-back requests once each; answer ``202 {callback_id, status}``.

        One transaction for the whole batch (message ids distinct): the message ids
        (``inbound_messages``, with their answers), the request rows and their
        NOTIFY (trigger; delivered at commit). A message id already stored gets its
        first answer; a new message for a known ``edge_call_id`` (stored, or
        earlier in the batch) gets that call-back and queues nothing.

        With a guard, every number is screened in the transaction (policy,
        lists, lock, velocity, brake) under per-number advisory locks, requests
        in message-id order, each judged as if the earlier ones were stored; a
        refusal stores the row as ``refused`` with its reason code, tells the
        edge (``callback_status`` ``failed`` + reason) and answers ``202
        {callback_id, status: "refused", reason}``.

        Four round trips per batch, whatever its size (migration 0400): BEGIN;
        ``callback_intake_open``: the number locks, then the stored message ids,
        the known edge calls and the guard's facts; the statement that stores the
        batch; COMMIT. Plus three per refusal.

        Logs one INFO line per commit (how many messages, by status), not one per
        request: the rows are the record, and a line per request with the caller's
        number costs the intake about a tenth of its CPU at full rate (the HTTP
        handler logs each request at DEBUG).

        Raises :class:`MessageRace` (nothing stored) when another transaction
        stored one of the message ids meanwhile: only possible for numbers not
        locked in common, so without a guard; run the batch again.
        """
        guard = self.guard
        now, brake_since = guard.intake_window() if guard is not None else (None, None)
        async with conn.transaction():
            started = time.perf_counter()
            rows = await conn.fetch(
                "SELECT kind, key, answer_status, answer, facts"
                " FROM callback_intake_open($1, $2, $3, $4, $5)",
                [mid for mid, _ in batch], [item.req.edge_call_id for _, item in batch],
                None if guard is None else [str(item.req.caller) for _, item in batch],
                now, brake_since)
            load_s = time.perf_counter() - started
            stored: dict[str, Answer] = {}
            calls: dict[str, Answer] = {}
            facts = []
            for row in rows:
                if row["kind"] == "message":
                    stored[row["key"]] = (row["answer_status"], _json(row["answer"]))
                elif row["kind"] == "call":
                    calls[row["key"]] = (202, _answer(_json(row["answer"])))
                else:
                    facts.append(row["facts"])
            screen = None if guard is None or now is None \
                else guard.intake_screen(now, facts, load_s)
            fresh = [(mid, item) for mid, item in batch if mid not in stored]
            answers = await self._decide_and_store(conn, fresh, calls, screen) if fresh else {}
        if answers:
            log.info("stored %d call-back request messages in one commit: %s", len(answers),
                     dict(Counter(body.get("status") for _, body in answers.values())))
        if stored:
            log.info("duplicate callback_request messages %s: returning the first answers",
                     ", ".join(stored))
            answers.update(stored)
        return answers

    async def _decide_and_store(self, conn: asyncpg.Connection,
                                fresh: Sequence[tuple[str, Intake]], calls: dict[str, Answer],
                                screen: IntakeScreen | None) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        new: list[_NewRequest] = []
        for mid, item in fresh:
            req = item.req
            known_call = calls.get(req.edge_call_id)
            if known_call is not None:  # a repeat of a known edge call: its call-back
                answers[mid] = known_call
                continue
            known_number = False
            if screen is not None:
                screening = screen.screen(req.caller)
                if screening.verdict is not None:
                    answers[mid] = calls[req.edge_call_id] = await self._refuse(
                        conn, mid, req, item.merchant, screening.verdict)
                    continue
                known_number = screening.known
                screen.accepted(req.caller)
            request = _NewRequest(mid, item, new_callback_id(), known_number)
            new.append(request)
            answers[mid] = calls[req.edge_call_id] = request.answer
        await self._store_batch(conn, new, answers, None if screen is None else screen.now)
        return answers

    async def _store_batch(self, conn: asyncpg.Connection, new: Sequence[_NewRequest],
                           answers: dict[str, Answer], screened_at: datetime | None) -> None:
        """The message ids with every answer of the batch, the new request rows and (when
        ``screened_at``) the guard's counts of them, in one statement."""
        row = await conn.fetchrow(_STORE_BATCH, *_request_columns(new),
                                  *_answer_columns(answers), [n.known for n in new],
                                  screened_at)
        assert row is not None
        raced = answers.keys() - set(row["claimed"])
        if raced:
            raise MessageRace(sorted(raced))
        queued = set(row["queued"])
        lost = {n.callback_id: n.item.req.edge_call_id for n in new
                if n.callback_id not in queued}
        if lost:  # stored meanwhile by another transaction (only without the guard's locks)
            stored = {r["edge_call_id"]: (202, _answer(r)) for r in await conn.fetch(
                "SELECT edge_call_id, callback_id, status, reason FROM callback_requests"
                " WHERE edge_call_id = ANY($1::text[])", list(lost.values()))}
            fixed = {mid: stored[lost[body["callback_id"]]] for mid, (_, body) in answers.items()
                     if body.get("callback_id") in lost}
            log.info("edge calls %s already had call-backs", ", ".join(lost.values()))
            answers.update(fixed)
            await conn.execute(_UPDATE_ANSWERS, *_answer_columns(fixed))
        if self.guard is not None and screened_at is not None:
            self.guard.accepted(len(queued))

    async def _refuse(self, conn: asyncpg.Connection, message_id: str, req: IntakeRequest,
                      merchant: Merchant, verdict: Verdict) -> Answer:
        """Keep the refused request (status ``refused`` + reason code) and tell the edge
        (``callback_status`` ``failed`` with that reason); nothing is queued."""
        row = await conn.fetchrow(
            """INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller,
                   dialed, announce_mode, received_at, hungup_at, message_id, max_attempts,
                   next_attempt_at, status, reason, finished_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), 'refused', $11, now())
               ON CONFLICT (edge_call_id) DO NOTHING
               RETURNING callback_id, status, reason, finished_at""",
            new_callback_id(), req.edge_call_id, merchant.id, str(req.caller), req.dialed,
            req.announce_mode, req.received_at, req.hungup_at, message_id,
            merchant.max_attempts, str(verdict.reason))
        if row is None:
            existing = await conn.fetchrow(
                "SELECT callback_id, status, reason FROM callback_requests "
                "WHERE edge_call_id = $1", req.edge_call_id)
            assert existing is not None
            return 202, _answer(existing)
        assert self.guard is not None
        await self.guard.refused(conn, verdict, stage="intake", number=str(req.caller),
                            merchant_id=merchant.id, callback_id=row["callback_id"],
                            edge_call_id=req.edge_call_id, message_id=message_id)
        await Outbox.enqueue(conn, kind="callback_status", path=EVENTS_PATH, payload={
            "kind": "callback_status", "callback_id": row["callback_id"],
            "edge_call_id": req.edge_call_id, "merchant_id": merchant.id,
            "status": "failed", "reason": str(verdict.reason), "attempts": 0,
            "at": isoformat(row["finished_at"]),
        }, message_id=fact_message_id("callback_status", row["callback_id"]),
            merchant_id=merchant.id)
        return 202, _answer(row)

    async def get(self, callback_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            """SELECT callback_id, edge_call_id, merchant_id, caller, status, reason, attempts,
                      max_attempts, received_at, accepted_at, next_attempt_at, finished_at
               FROM callback_requests WHERE callback_id = $1""", callback_id)
        if row is None:
            return None
        legs = await self.pool.fetch(
            """SELECT channel_id, attempt_no, leg, carrier_id, status, cause, created_at
               FROM callback_attempts WHERE callback_id = $1 ORDER BY leg_seq""", callback_id)
        out = {k: (isoformat(v) if isinstance(v, datetime) else v) for k, v in row.items()}
        out["legs"] = [{k: (isoformat(v) if isinstance(v, datetime) else v)
                        for k, v in leg.items()} for leg in legs]
        return out

    # --- the queue ----------------------------------------------------------------------

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs (and jobs whose lease expired)."""
        rows = await self.pool.fetch(
            """WITH c AS (
                   SELECT callback_id, status AS prev_status
                   FROM callback_requests
                   WHERE (status = 'queued' AND next_attempt_at <= now())
                      OR (status = 'dialing' AND lease_expires_at < now()
                          -- a live leg on another Asterisk is left to that Asterisk's
                          -- servers (only they can ask about it), for a while
                          AND ($4::text IS NULL
                               OR lease_expires_at < now() - $5 * interval '1 second'
                               OR NOT EXISTS (
                                   SELECT 1 FROM callback_attempts a
                                   WHERE a.callback_id = callback_requests.callback_id
                                     AND a.status IN ('dialing', 'originated', 'answered')
                                     AND a.asterisk IS NOT NULL AND a.asterisk <> $4)))
                   ORDER BY next_attempt_at
                   LIMIT $3
                   FOR UPDATE SKIP LOCKED)
               UPDATE callback_requests r
               SET status = 'dialing', lease_owner = $1,
                   lease_expires_at = now() + $2 * interval '1 second',
                   heartbeat_at = now(), updated_at = now()
               FROM c WHERE r.callback_id = c.callback_id
               RETURNING r.callback_id, r.edge_call_id, r.merchant_id, r.caller, r.attempts,
                         r.max_attempts, c.prev_status,
                         (SELECT count(*) FROM callback_attempts a
                          WHERE a.callback_id = r.callback_id) AS legs""",
            self.owner, self.lease_s, limit, self.asterisk, self.foreign_rescue_after_s)
        jobs = [ClaimedJob(r["callback_id"], r["edge_call_id"], r["merchant_id"],
                           E164.parse(r["caller"]), r["attempts"], r["max_attempts"],
                           int(r["legs"]), r["prev_status"] == "dialing") for r in rows]
        for job in jobs:
            if job.rescued:
                log.warning("rescued job %s (previous worker's lease expired)", job.callback_id)
        return jobs

    async def heartbeat(self, callback_ids: Sequence[str]) -> set[str]:
        """Extend our leases; returns the ids we still hold."""
        if not callback_ids:
            return set()
        rows = await self.pool.fetch(
            """UPDATE callback_requests
               SET lease_expires_at = now() + $2 * interval '1 second', heartbeat_at = now()
               WHERE callback_id = ANY($3::text[]) AND lease_owner = $1 AND status = 'dialing'
               RETURNING callback_id""", self.owner, self.lease_s, list(callback_ids))
        return {r["callback_id"] for r in rows}

    async def seconds_to_next_due(self) -> float | None:
        """Seconds until the next queued job is due (negative: overdue), or None."""
        value = await self.pool.fetchval(
            """SELECT extract(epoch FROM min(t) - now()) FROM (
                   SELECT min(next_attempt_at) AS t FROM callback_requests
                   WHERE status = 'queued'
                   UNION ALL
                   SELECT min(lease_expires_at) FROM callback_requests
                   WHERE status = 'dialing') s""")
        return None if value is None else float(value)

    async def release(self, callback_id: str, delay_s: float, reason: str) -> None:
        """Give a job back without counting a round (e.g. Asterisk unreachable)."""
        await self.pool.execute(
            """UPDATE callback_requests SET status = 'queued', lease_owner = NULL,
                   lease_expires_at = NULL, reason = $3, updated_at = now(),
                   next_attempt_at = now() + $2 * interval '1 millisecond'
               WHERE callback_id = $1 AND lease_owner = $4 AND status = 'dialing'""",
            callback_id, int(delay_s * 1000), reason, self.owner)

    # --- legs ---------------------------------------------------------------------------

    async def persist_leg(self, cmd: PersistAttempt, merchant_id: str) -> None:
        """Commit the leg row before its originate, only while our lease holds.

        With a guard, a customer leg must also pass the caps (raises
        :class:`~callback_server.guard.reasons.GuardRefused`; nothing is dialled).
        """
        refused: GuardRefused | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            held = await conn.fetchval(
                """UPDATE callback_requests
                   SET lease_expires_at = now() + $3 * interval '1 second', heartbeat_at = now()
                   WHERE callback_id = $1 AND lease_owner = $2 AND status = 'dialing'
                   RETURNING true""", cmd.callback_id, self.owner, self.lease_s)
            if not held:
                raise LeaseLost(f"{cmd.callback_id}: lease lost before originating "
                                f"{cmd.channel_id}")
            if self.guard is not None and cmd.leg == "customer":
                refused = await self.guard.admit_leg(conn, cmd.carrier_id, cmd.callback_id,
                                                     merchant_id)
            if refused is None:
                await conn.execute(
                    """INSERT INTO callback_attempts (channel_id, callback_id, merchant_id,
                           attempt_no, leg_seq, leg, carrier_id, endpoint, worker, asterisk)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
                    cmd.channel_id, cmd.callback_id, merchant_id, cmd.attempt_no, cmd.leg_seq,
                    cmd.leg, cmd.carrier_id, cmd.endpoint, self.owner, self.asterisk)
        if refused is not None:     # committed: the refusal (and a trip); no leg row
            raise refused

    @survives_database_restarts
    async def leg_result(self, channel_id: str, status: str, cause: int | None) -> None:
        await self.pool.execute(
            """UPDATE callback_attempts SET status = $2, cause = coalesce($3, cause),
                   answered = answered OR $2 = 'answered',
                   answered_at = CASE WHEN $2 = 'answered' THEN coalesce(answered_at, now())
                                      ELSE answered_at END,
                   updated_at = now()
               WHERE channel_id = $1""", channel_id, status, cause)

    # The columns of a LegRow: the leg and what a CDR needs from its request.
    _LEG_ROW = """SELECT a.channel_id, a.callback_id, a.merchant_id, a.leg, a.carrier_id,
                         a.endpoint, a.status, a.answered, a.answered_at, a.cause,
                         a.created_at, a.asterisk, r.caller, r.edge_call_id
                  FROM callback_attempts a JOIN callback_requests r USING (callback_id)"""

    async def leg(self, channel_id: str) -> LegRow | None:
        """One persisted leg, with what a CDR needs (for legs no call runner owns)."""
        row = await self.pool.fetchrow(f"{self._LEG_ROW} WHERE a.channel_id = $1", channel_id)
        return None if row is None else LegRow(**dict(row))

    @survives_database_restarts
    async def settle_leg(self, channel_id: str, *, answered: bool,
                         answered_at: datetime | None, cause: int) -> bool:
        """Mark a leg no call runner owns as ended. False if it had already ended."""
        done = await self.pool.fetchval(
            """UPDATE callback_attempts SET status = 'ended', answered = answered OR $2,
                   answered_at = coalesce(answered_at, $3), cause = coalesce(cause, $4),
                   updated_at = now()
               WHERE channel_id = $1 AND status <> 'ended' RETURNING true""",
            channel_id, answered, answered_at, cause)
        return bool(done)

    async def last_leg(self, callback_id: str) -> LegRow | None:
        """The job's last customer leg (one round trip: it is on every claim's path)."""
        row = await self.pool.fetchrow(
            f"""{self._LEG_ROW} WHERE a.callback_id = $1 AND a.leg = 'customer'
                ORDER BY a.leg_seq DESC LIMIT 1""", callback_id)
        return None if row is None else LegRow(**dict(row))

    # --- facts reported to the edge --------------------------------------------------------

    @survives_database_restarts
    async def record_cdr(self, cdr: RecordCdr, *, edge_call_id: str, merchant_id: str,
                         billed_s: int, carrier_cost: Money | None,
                         direct_cost: Money | None) -> bool:
        """Store one CDR and its outbox message. False if it was already stored."""
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """INSERT INTO cdrs (call_id, callback_id, merchant_id, leg, destination,
                       carrier_id, started_at, answered_at, ended_at, duration_s, billed_s,
                       hangup_cause, disposition, carrier_cost, carrier_currency, direct_cost,
                       direct_currency)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                           $16, $17)
                   ON CONFLICT (call_id) DO NOTHING RETURNING true""",
                cdr.call_id, cdr.callback_id, merchant_id, cdr.leg, cdr.destination,
                cdr.carrier_id, cdr.started_at, cdr.answered_at, cdr.ended_at, cdr.duration_s,
                billed_s, cdr.hangup_cause, cdr.disposition,
                _amount(carrier_cost), _currency(carrier_cost), _amount(direct_cost),
                _currency(direct_cost))
            if not inserted:
                return False
            if self.guard is not None and carrier_cost is not None and cdr.leg == "customer":
                await self.guard.add_spend(conn, cdr.carrier_id, carrier_cost)
            payload = {
                "kind": "cdr", "call_id": cdr.call_id, "callback_id": cdr.callback_id,
                "edge_call_id": edge_call_id, "merchant_id": merchant_id, "leg": cdr.leg,
                "destination": cdr.destination, "carrier": cdr.carrier_id,
                "started_at": isoformat(cdr.started_at),
                "answered_at": isoformat(cdr.answered_at), "ended_at": isoformat(cdr.ended_at),
                "duration_s": str(cdr.duration_s), "billed_s": billed_s,
                "hangup_cause": cdr.hangup_cause, "disposition": cdr.disposition,
                "carrier_cost": carrier_cost.to_json() if carrier_cost else None,
                "direct_cost": direct_cost.to_json() if direct_cost else None,
            }
            await Outbox.enqueue(conn, kind="cdr", path=EVENTS_PATH, payload=payload,
                                 message_id=fact_message_id("cdr", cdr.call_id),
                                 merchant_id=merchant_id)
            return True

    @survives_database_restarts
    async def record_info(self, submit: Submit, *, callback_id: str, edge_call_id: str,
                          merchant_id: str, caller: E164, collected_at: datetime,
                          seq: int) -> str:
        """Store collected request info and its outbox message; returns the message id."""
        mid = fact_message_id("request_info", f"{callback_id}:{seq}")
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """INSERT INTO request_info (callback_id, merchant_id, category, fields,
                       collected_at, message_id)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (message_id) DO NOTHING RETURNING true""",
                callback_id, merchant_id, submit.category, submit.as_dict(), collected_at, mid)
            if inserted:
                await Outbox.enqueue(conn, kind="request_info", path=EVENTS_PATH, payload={
                    "kind": "request_info", "callback_id": callback_id,
                    "edge_call_id": edge_call_id, "merchant_id": merchant_id,
                    "caller": str(caller), "category": submit.category,
                    "fields": submit.as_dict(), "collected_at": isoformat(collected_at),
                }, message_id=mid, merchant_id=merchant_id)
        return mid

    @survives_database_restarts
    async def finish(self, callback_id: str, outcome: Finish) -> bool:
        """End our round: queue the job again, or close it and tell the edge.

        Returns False (and changes nothing) if our lease was lost meanwhile.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if outcome.retry_in_s is not None:
                row = await conn.fetchrow(
                    """UPDATE callback_requests SET status = 'queued', attempts = $3,
                           reason = $4, lease_owner = NULL, lease_expires_at = NULL,
                           next_attempt_at = now() + $5 * interval '1 second', updated_at = now()
                       WHERE callback_id = $1 AND lease_owner = $2 AND status = 'dialing'
                       RETURNING callback_id""", callback_id, self.owner, outcome.attempts,
                    str(outcome.reason), outcome.retry_in_s)
                return row is not None
            row = await conn.fetchrow(
                """UPDATE callback_requests SET status = $3, attempts = $4, reason = $5,
                       lease_owner = NULL, lease_expires_at = NULL, finished_at = now(),
                       updated_at = now()
                   WHERE callback_id = $1 AND lease_owner = $2 AND status = 'dialing'
                   RETURNING edge_call_id, merchant_id, finished_at""",
                callback_id, self.owner, outcome.status, outcome.attempts, str(outcome.reason))
            if row is None:
                log.error("finish %s: lease lost; outcome %s not recorded", callback_id, outcome)
                return False
            await Outbox.enqueue(conn, kind="callback_status", path=EVENTS_PATH, payload={
                "kind": "callback_status", "callback_id": callback_id,
                "edge_call_id": row["edge_call_id"], "merchant_id": row["merchant_id"],
                "status": outcome.status, "reason": str(outcome.reason),
                "attempts": outcome.attempts, "at": isoformat(row["finished_at"]),
            }, message_id=fact_message_id("callback_status", callback_id),
                merchant_id=row["merchant_id"])
            return True


@dataclass(frozen=True, slots=True)
class _NewRequest:
    message_id: str
    item: Intake
    callback_id: str
    known: bool        # the guard knows the number (confirmed before, or allow-listed)

    @property
    def answer(self) -> Answer:
        return 202, {"callback_id": self.callback_id, "status": "queued"}


class MessageRace(RuntimeError):
    """Another transaction stored some of a batch's message ids meanwhile (the batch was
    rolled back; run it again, and they are repeats)."""

    def __init__(self, message_ids: Sequence[str]) -> None:
        super().__init__(f"message ids stored meanwhile: {', '.join(message_ids)}")
        self.message_ids = message_ids


_UPDATE_ANSWERS = """
UPDATE inbound_messages m SET response_status = a.status, response_body = a.body::jsonb
FROM unnest($1::text[], $2::int[], $3::text[]) AS a(message_id, status, body)
WHERE m.message_id = a.message_id"""

# $1-$11 the new requests (_request_columns), $12-$14 every answer of the batch
# (_answer_columns), $15 the guard knows each new request's number, $16 when the guard
# screened them (NULL: not screened, not counted). The pre-call-back delay counts from the
# hang-up, or from when the edge received the call if it sent no hang-up time.
_STORE_BATCH = """
WITH claimed AS (
    INSERT INTO inbound_messages (message_id, kind, response_status, response_body)
    SELECT message_id, 'callback_request', status, body::jsonb
    FROM unnest($12::text[], $13::int[], $14::text[]) AS a(message_id, status, body)
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id),
queued AS (
    INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller, dialed,
        announce_mode, received_at, hungup_at, message_id, max_attempts, next_attempt_at)
    SELECT callback_id, edge_call_id, merchant_id, caller, dialed, announce_mode,
           received_at, hungup_at, message_id, max_attempts,
           least(now() + delay_s * interval '1 second',
                 greatest(now(), coalesce(hungup_at, received_at)
                                 + delay_s * interval '1 second'))
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::timestamptz[], $8::timestamptz[], $9::text[], $10::int[], $11::numeric[])
         AS r(callback_id, edge_call_id, merchant_id, caller, dialed, announce_mode,
              received_at, hungup_at, message_id, max_attempts, delay_s)
    ON CONFLICT (edge_call_id) DO NOTHING
    RETURNING callback_id, caller, merchant_id),
counted AS (
    SELECT guard_note_accepted(array_agg(q.callback_id), array_agg(q.caller),
                               array_agg(q.merchant_id), array_agg(k.known), $16)
    FROM queued q JOIN unnest($1::text[], $15::bool[]) AS k(callback_id, known)
         USING (callback_id))
SELECT ARRAY(SELECT message_id FROM claimed) AS claimed,
       ARRAY(SELECT callback_id FROM queued) AS queued,
       (SELECT count(*) FROM counted) AS counted"""


def _request_columns(new: Sequence[_NewRequest]) -> tuple[list[Any], ...]:
    reqs = [n.item.req for n in new]
    merchants = [n.item.merchant for n in new]
    return ([n.callback_id for n in new], [r.edge_call_id for r in reqs],
            [m.id for m in merchants], [str(r.caller) for r in reqs], [r.dialed for r in reqs],
            [r.announce_mode for r in reqs], [r.received_at for r in reqs],
            [r.hungup_at for r in reqs], [n.message_id for n in new],
            [m.max_attempts for m in merchants], [m.pre_callback_delay_s for m in merchants])


def _answer_columns(answers: dict[str, Answer]) -> tuple[list[Any], ...]:
    return (list(answers), [status for status, _ in answers.values()],
            [json.dumps(body, separators=(",", ":")) for _, body in answers.values()])


def _json(value: Any) -> Any:
    """A json/jsonb value, whether or not the connection has a JSON codec."""
    return json.loads(value) if isinstance(value, str) else value


def _answer(row: Mapping[str, Any]) -> dict[str, Any]:
    answer = {"callback_id": row["callback_id"], "status": row["status"]}
    if row["status"] == "refused":
        answer["reason"] = row["reason"]
    return answer


def _amount(money: Money | None) -> Decimal | None:
    return None if money is None else money.amount


def _currency(money: Money | None) -> str | None:
    return None if money is None else money.currency
