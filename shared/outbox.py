"""Transactional outbox: nothing acknowledged is lost, nothing is sent twice in effect.

A message is written to the sender's database in the same transaction as the
fact it reports (:meth:`Outbox.enqueue`), then :class:`OutboxRelay` delivers it
over the :class:`~shared.link.LinkClient` until the peer acknowledges it. The
message id is fixed at enqueue time, so a retry is a duplicate that the
receiver recognises (:func:`shared.link.accept_once`).

A message may be written *held*: durable, but not to be sent yet (the edge
holds a call-back request until the caller has hung up). :meth:`Outbox.release`
makes it sendable.

The relay is event-driven: it wakes at once when a message becomes sendable.
Written in a process whose relay runs (the servers), the relay is told in the
process once the writing connection is back in its pool, its transaction over
(:func:`shared.db.watching`: the trigger sends the session a NOTICE instead, migration
``link/0005``), and the transaction sends no NOTIFY: PostgreSQL
commits the transactions that NOTIFY one after another, each through its own WAL
flush, under one lock for the whole cluster (``python -m bench notify_lock``).
Written anywhere else (a CLI, a pool without a relay, a plain connection), a
trigger NOTIFYs ``outbox`` and every relay wakes (migration ``link/0004``).
Besides that a relay sleeps until the next retry is due (at most ``sweep_s``),
so a lost notification, or a message written in a process whose relay does not
deliver it, waits at most that much for another process's relay. Retries back
off exponentially up to ``max_backoff_s`` and never give up on a 5xx, a lost
connection, or a 4xx that may pass later (:data:`RETRYABLE_4XX`: 408/409/425/429,
and 401/403, which judge the sender's keys, clock or certificate rather than the
message: a signing-key rotation half done, or a peer identity being re-pinned,
must not kill the whole backlog).

A busy peer (a 5xx or 429 with ``Retry-After``: the callback site shedding load)
is honoured: the message is not retried before then, and the relay claims
nothing until then either (both at most ``max_backoff_s``).

Dead letters: a message the peer refuses with any other 4xx is refused for good
(it would be refused the same way for ever). It is parked as dead (``dead_at``,
with the peer's status and error body), logged at ERROR, counted
(``cbgw_link_deliveries_total{result="dead"}``), and passed
to ``on_dead_letter`` (the callback site raises a guard alert). The operator
lists them and requeues one once the cause is fixed (:meth:`Outbox.dead_letters`,
:meth:`Outbox.revive`; HTTP and CLI in :mod:`shared.outbox_operator`): a
requeue resets its attempts and it is delivered once, under the same id.

Batches: for the paths in ``batch_paths`` (the edge: call-back requests; the callback
site: its reports to the edge's ``/v1/link/events``, CDRs, statuses, request info,
billing and consultation records ... in one batch whatever their kinds), the
messages claimed in one pass go out up to ``batch_messages`` per signed request
to ``shared.link.batch_path(path)`` (:func:`shared.link.encode_batch`), one request for
the pass's messages to a path whose kinds travel the same way (the same link policy:
a kind sent on ``both`` routes goes apart from one sent ``primary_backup``); the
peer answers each message on its own, and each is settled on its own
(delivered, retried, or parked as dead), exactly as if it had gone alone. A
single due message still goes alone, so an idle link keeps its latency; a
backlog (after a partition, or under load) drains many messages per round
trip. A peer that refuses a batch as a whole (an older peer: 404) gets the
messages one by one, and no batches for ``NO_BATCH_ROUTE_RECHECK_S``.

A pass claims up to ``batch`` messages (leased to the relay, ``FOR UPDATE SKIP
LOCKED``) and delivers them concurrently; while a backlog lasts, the next claims
go out before the earlier ones are answered, up to ``passes_in_flight`` at once,
so one relay carries ``batch * passes_in_flight`` messages per round trip of the
link instead of ``batch``.

Each message goes by the link policy for its ``kind`` (see
:mod:`shared.link_policy`); the route that delivered it is kept in
``outbox.last_route``.

Watching it: :meth:`OutboxRelay.stats` (pending, held, dead, age of the
oldest pending message), :meth:`OutboxRelay.check_alert` (an
:class:`OutboxAlert` when a durable message is older than ``alert_after_s`` or
dead letters exist; logged at ERROR and passed to ``on_alert``),
:meth:`Outbox.dead_letters` and :meth:`Outbox.revive` (send a dead message
again once the cause is fixed), :meth:`Outbox.purge_delivered`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared import logs
from shared.db import holding, listening, watching
from shared.link import (
    LinkBusy,
    LinkClient,
    LinkRejected,
    LinkUnavailable,
    batch_path,
    encode_batch,
    parse_batch_answer,
)
from shared.link_policy import BATCH_MAX_MESSAGES, DEFAULT_PASSES_IN_FLIGHT, KindPolicy
from shared.metrics import common as metrics
from shared.waits import within

log = logging.getLogger("shared.outbox")

NOTIFY_CHANNEL = "outbox"
#: the :func:`shared.db.holding` label of the relay's own connections
RELAY_HOLDER = "relay"
#: what the sessions of a process whose relay runs carry: the outbox trigger sends them
#: no NOTIFY (migration ``link/0004``)
IN_PROCESS_SESSION = {"cbgw.outbox_wake": "in-process"}
#: what the outbox trigger tells such a session instead, for each message it made
#: sendable (migration ``link/0005``): the process's relay claims
SENDABLE_NOTICE = "outbox: sendable"
#: 4xx answers retried like a 5xx; every other 4xx parks the message as dead
RETRYABLE_4XX = frozenset({401, 403, 408, 409, 425, 429})
_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
#: after a peer answered a batch request 404/405, its messages go alone for this long
NO_BATCH_ROUTE_RECHECK_S = 300.0
#: where the callback site reports its facts to the edge (CDRs, request info, call-back
#: status, consultation records)
EVENTS_PATH = "/v1/link/events"
_FACT_NAMESPACE = uuid.UUID("6f0c7f0e-8a53-4c1e-9d44-3b1c2d0e5a10")


def fact_message_id(kind: str, key: str) -> str:
    """The outbox message id of a fact: the same fact always gets the same id, so writing
    it twice never sends two messages."""
    return str(uuid.uuid5(_FACT_NAMESPACE, f"{kind}:{key}"))


def encode(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes that will be signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class Outbox:
    """Writes messages; used inside the caller's transaction."""

    #: the columns :meth:`enqueue` writes, for a statement that writes its fact and its
    #: message at once (``INSERT INTO outbox (INSERT_COLUMNS) SELECT ... ON CONFLICT
    #: (message_id) DO NOTHING``)
    INSERT_COLUMNS = "message_id, kind, path, body, merchant_id, held"
    #: what :meth:`release` sets, for a statement that releases with its fact's update
    RELEASE_SET = "held = false, released_at = now(), next_attempt_at = now()"
    #: what a statement that releases a message and leases it to a relay at once sets as
    #: well, the relay's ``OutboxRelay.lease()`` at the parameters numbered ``owner`` and
    #: ``seconds`` (``LEASE_SET.format(owner=4, seconds=5)``)
    LEASE_SET = ("lease_owner = ${owner}, lease_expires_at = now() + ${seconds} * "
                 "interval '1 second', attempts = attempts + 1")
    #: what such a statement returns for ``OutboxRelay.take_leased`` (the claim's columns)
    LEASED_COLUMNS = "message_id, kind, path, body, merchant_id, attempts, created_at"

    @staticmethod
    async def enqueue(conn: asyncpg.Connection, *, kind: str, path: str,
                      payload: Mapping[str, Any], message_id: str | None = None,
                      merchant_id: str | None = None, held: bool = False) -> str:
        mid = message_id or str(uuid.uuid4())
        await conn.execute(
            f"INSERT INTO outbox ({Outbox.INSERT_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
            uuid.UUID(mid), kind, path, encode(payload), merchant_id, held)
        return mid

    @staticmethod
    async def release(conn: asyncpg.Connection, message_id: str) -> bool:
        """Make a held message sendable now. False if it was not held."""
        result: str = await conn.execute(
            f"UPDATE outbox SET {Outbox.RELEASE_SET} WHERE message_id = $1 AND held",
            uuid.UUID(message_id))
        return result.endswith(" 1")

    @staticmethod
    async def discard(conn: asyncpg.Connection, message_id: str) -> bool:
        """Drop a message that is still held (its fact was cancelled). False if not held."""
        result: str = await conn.execute(
            "DELETE FROM outbox WHERE message_id = $1 AND held", uuid.UUID(message_id))
        return result.endswith(" 1")

    @staticmethod
    async def dead_letters(conn: asyncpg.Connection, limit: int = 100) -> list[DeadLetter]:
        """Messages the peer refused for good, newest first."""
        rows = await conn.fetch(
            f"SELECT {_DEAD_COLUMNS} FROM outbox WHERE dead_at IS NOT NULL "
            "ORDER BY dead_at DESC LIMIT $1", limit)
        return [DeadLetter.of(r) for r in rows]

    @staticmethod
    async def revive(conn: asyncpg.Connection, message_id: str) -> bool:
        """Send a dead message again (same id, so the receiver still dedupes it): its
        attempts start again from 0 and the requeue is counted. False if it is not dead."""
        result: str = await conn.execute(
            "UPDATE outbox SET dead_at = NULL, next_attempt_at = now(), attempts = 0, "
            "lease_owner = NULL, lease_expires_at = NULL, last_error = NULL, "
            "requeued_at = now(), requeues = requeues + 1 WHERE message_id = $1 "
            "AND dead_at IS NOT NULL", uuid.UUID(message_id))
        if result.endswith(" 1"):
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, message_id)
            return True
        return False

    @staticmethod
    async def purge_delivered(conn: asyncpg.Connection, keep_s: int = 7 * 24 * 3600) -> int:
        """Delete delivered messages older than ``keep_s`` (at least 24 h)."""
        result: str = await conn.execute(
            "DELETE FROM outbox WHERE delivered_at < now() - $1 * interval '1 second'",
            max(keep_s, 24 * 3600))
        return int(result.split()[-1])


_DEAD_COLUMNS = ("message_id, kind, path, body, attempts, dead_at, response_status, "
                 "response_body, requeues")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the peer refused for good: its status and error body, and when."""

    message_id: str
    kind: str
    path: str
    body: bytes
    attempts: int
    dead_at: datetime
    status: int | None
    response: dict[str, Any]
    requeues: int = 0

    @classmethod
    def of(cls, r: asyncpg.Record) -> DeadLetter:
        return cls(str(r["message_id"]), r["kind"], r["path"], bytes(r["body"]),
                   int(r["attempts"]), r["dead_at"], r["response_status"],
                   _as_object(r["response_body"]), int(r["requeues"]))


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    held: int
    dead: int
    oldest_pending_s: float | None
    oldest_pending_id: str | None = None
    oldest_pending_kind: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxAlert:
    """Something an operator must look at: a durable message too old, or dead letters."""

    reason: str            # "pending-too-old" | "dead-letters"
    message: str
    stats: OutboxStats


AlertHook = Callable[[OutboxAlert], None]
DeadLetterHook = Callable[[DeadLetter], None]
#: where the relay's statements take a database connection (:class:`OutboxRelay`)
ConnectionSource = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


#: what a pass that left a message undelivered puts in the loop's wake-ups (not a message
#: written: the relay does not linger on it)
PASS_FINISHED = "pass finished"
#: the most a relay may linger after a wake-up before it claims (``OutboxRelay.linger_s``,
#: ``claim_gap_s``), or gather leased messages for one request (``gather_s``)
MAX_LINGER_S = 1.0
#: the longest a running relay keeps the marks of messages the peer acknowledged before it
#: writes them (``delivered_at``): meanwhile they ride on its next claim, one statement
#: for both, instead of a statement and a transaction of their own (``OutboxRelay.run``)
SETTLE_WITHIN_S = 0.25
#: what the relay loop's wake-ups hold when its acknowledged marks are due (not a message
#: written: the relay does not linger on it)
SETTLEMENTS_DUE = "settlements due"


#: the delivered marks a claim writes: ids, the peer's statuses and answers, the routes
_Marks = tuple[list[uuid.UUID], list[int], list[dict[str, Any]], list[str]]


def _settle_set(first: int) -> str:
    """What a delivered mark sets, from the arrays at parameters ``first`` to ``first + 3``
    (ids, statuses, answers, routes). Each array is read through a sub-select (as is the
    claim's ``NOT ANY`` of them): its length hidden from the planner, a custom plan is no
    cheaper than the generic one, so the claim runs its generic plan after five instead
    of being planned afresh every time (planned, it cost PostgreSQL 0.52-0.57 ms a claim
    with an outbox of 5,000 delivered rows, 0.23-0.33 ms on the generic plan)."""
    return (f"delivered_at = now(), response_status = a.status, response_body = a.body, "
            f"last_route = a.route, lease_owner = NULL, last_error = NULL "
            f"FROM unnest((SELECT ${first}::uuid[]), (SELECT ${first + 1}::int[]), "
            f"(SELECT ${first + 2}::jsonb[]), (SELECT ${first + 3}::text[])) "
            f"AS a(message_id, status, body, route) "
            f"WHERE o.message_id = a.message_id")


_SETTLE = "UPDATE outbox o SET " + _settle_set(1)
#: the claim's statement; ``settled``: the marks of the messages acknowledged since the
#: last claim written by it as well (parameters $4-$7), none of them claimed again
_CLAIM = """WITH {settled}claimed AS (
       UPDATE outbox SET lease_owner = $1,
              lease_expires_at = now() + $2 * interval '1 second',
              attempts = attempts + 1
       WHERE message_id IN (
           SELECT message_id FROM outbox
           WHERE delivered_at IS NULL AND dead_at IS NULL AND NOT held
             AND next_attempt_at <= now()
             AND (lease_expires_at IS NULL OR lease_expires_at < now()){not_settled}
           ORDER BY next_attempt_at
           LIMIT $3
           FOR UPDATE SKIP LOCKED)
       RETURNING message_id, kind, path, body, merchant_id, attempts, created_at),
   due AS (
       SELECT EXTRACT(EPOCH FROM min(greatest(next_attempt_at,
                  coalesce(lease_expires_at, next_attempt_at))) - now()) AS due_s
       FROM outbox
       WHERE delivered_at IS NULL AND dead_at IS NULL AND NOT held{not_settled})
   SELECT claimed.*, due.due_s FROM due LEFT JOIN claimed ON true"""
_SETTLED_CTE = f"settled AS (UPDATE outbox o SET {_settle_set(4)}),\n   "
#: the outer cast is needed: without it ``ANY`` reads the sub-select as a row source
#: (uuid = uuid[], never delivered), with it as the one array it returns
_NOT_SETTLED = "\n             AND NOT (message_id = ANY((SELECT $4::uuid[])::uuid[]))"
_CLAIM_ONLY = _CLAIM.format(settled="", not_settled="")
#: the claim that also writes the waiting delivered marks (parameters $4-$7)
_CLAIM_SETTLING = _CLAIM.format(settled=_SETTLED_CTE, not_settled=_NOT_SETTLED)


class _PassWindow:
    """The relay's passes under way: at most ``size`` at once, outliving a lost database.

    A pass that finishes frees its slot; one that did not deliver every message it
    claimed (a retry, a dead letter, a crash) also wakes the relay's current loop through
    ``wakeups`` (the queue of the loop's LISTEN connection, replaced when the relay
    reconnects), so the loop reckons its next wait with that pass's retries recorded. A
    pass that delivered everything has nothing to reckon: the loop sleeps on.
    """

    def __init__(self, size: int) -> None:
        self._slots = asyncio.Semaphore(size)
        self._tasks: set[asyncio.Task[bool]] = set()
        #: where a finished pass says so: the current loop's notification queue
        self.wakeups: asyncio.Queue[str] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def acquire(self) -> None:
        await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()

    def wake(self) -> None:
        """A message may have become sendable (written in this process): the loop claims."""
        if self.wakeups is not None:
            self.wakeups.put_nowait("written here")

    def settlements_due(self) -> None:
        """Acknowledged messages' marks have waited ``SETTLE_WITHIN_S``: the loop claims,
        and its claim writes them."""
        if self.wakeups is not None:
            self.wakeups.put_nowait(SETTLEMENTS_DUE)

    def start(self, delivery: Coroutine[Any, Any, bool]) -> None:
        """Run ``delivery`` (True when it delivered every message) in the slot acquired
        for it."""
        task = asyncio.create_task(delivery, name="outbox pass")
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        exc = None if task.cancelled() else task.exception()
        all_delivered = not task.cancelled() and exc is None and task.result()
        if self.wakeups is not None and not all_delivered:
            self.wakeups.put_nowait(PASS_FINISHED)
        if isinstance(exc, _DATABASE_ERRORS):
            log.warning("an outbox pass lost the database (%s); its unsettled messages "
                        "go again when their leases expire", exc)
        elif exc is not None:
            log.error("outbox pass crashed", exc_info=exc)

    async def cancel(self) -> None:
        """Cancel the passes under way and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class OutboxRelay:
    """Delivers pending messages. Several relays (processes) may run at once."""

    def __init__(self, pool: asyncpg.Pool, db_url: str, client: LinkClient, *, owner: str,
                 batch: int = 64, lease_s: int = 30, max_backoff_s: int = 60,
                 sweep_s: float = 5.0, alert_after_s: int = 300, alert_every_s: float = 60.0,
                 on_alert: AlertHook | None = None, on_dead_letter: DeadLetterHook | None = None,
                 batch_paths: Collection[str] = (), batch_messages: int = 32,
                 passes_in_flight: int = DEFAULT_PASSES_IN_FLIGHT,
                 connections: ConnectionSource | None = None, linger_s: float = 0.0,
                 claim_gap_s: float = 0.0, gather_s: float = 0.0,
                 gather_messages: int | None = None) -> None:
        if not 1 <= batch_messages <= BATCH_MAX_MESSAGES:
            raise ValueError(f"batch_messages must be 1 to {BATCH_MAX_MESSAGES}")
        if passes_in_flight < 1:
            raise ValueError("passes_in_flight must be at least 1")
        if not 0 <= linger_s <= MAX_LINGER_S:
            raise ValueError(f"linger_s must be 0 to {MAX_LINGER_S:g}")
        if not 0 <= claim_gap_s <= MAX_LINGER_S:
            raise ValueError(f"claim_gap_s must be 0 to {MAX_LINGER_S:g}")
        if not 0 <= gather_s <= MAX_LINGER_S:
            raise ValueError(f"gather_s must be 0 to {MAX_LINGER_S:g}")
        if gather_messages is not None and not 2 <= gather_messages <= batch_messages:
            raise ValueError(f"gather_messages must be 2 to batch_messages ({batch_messages}): "
                             "what one signed request may carry")
        if gather_s and batch_messages < 2:
            raise ValueError("gather_s needs batch_messages of 2 or more (1: never batch)")
        self.pool = pool
        self.db_url = db_url
        self.client = client
        self.owner = owner
        self.batch = batch
        self.lease_s = lease_s
        self.max_backoff_s = max_backoff_s
        self.sweep_s = sweep_s
        self.alert_after_s = alert_after_s
        self.alert_every_s = alert_every_s
        self.on_alert = on_alert
        #: told of each message parked as dead, once (the callback site raises an alert)
        self.on_dead_letter = on_dead_letter
        #: message paths whose peer also takes batches at ``batch_path(path)``
        self.batch_paths = frozenset(batch_paths)
        self.batch_messages = batch_messages
        #: claims whose deliveries may be under way at once (see :meth:`run`)
        self.passes_in_flight = passes_in_flight
        #: where the claims and settlements take their connection: the pool's, else a
        #: share of it (the edge: the link's, so that however many passes are under
        #: way they never hold the connections its inbound calls need)
        self._connections: ConnectionSource = connections or pool.acquire
        #: seconds the loop waits, once woken by a message written, before it claims: the
        #: messages written meanwhile go in the same pass (one claim, one request a kind,
        #: one settlement) instead of one pass each (0: claim at once)
        self.linger_s = linger_s
        #: the adaptive linger: woken by a message written less than this after its
        #: last claim that claimed any, the loop waits until this much after that claim,
        #: so under load the messages written meanwhile share a pass (one claim, one
        #: request a path); one written later is claimed at once (0: never waits)
        self.claim_gap_s = claim_gap_s
        self._last_claim_at = float("-inf")
        #: the gathering window, for messages leased to the relay (:meth:`take_leased`):
        #: while they come at least twice a window (the smoothed gap between takings at
        #: most half of it), a pass holding fewer than ``gather_messages`` waits up to
        #: this long after its first was taken for others to share its signed request,
        #: and goes sooner once it holds ``gather_messages`` or, after one joined, the
        #: next is not expected within the window (:meth:`_gather`). At a steady 20/s
        #: and 150 ms they go three or four to a request; rarer ones go at once (0:
        #: never waits)
        self.gather_s = gather_s
        #: a gathering pass goes once it holds this many (2 to ``batch_messages``, which
        #: it defaults to)
        self.gather_messages = gather_messages or batch_messages
        #: monotonic time the last leased messages were taken, the smoothed gap between
        #: takings (seconds; infinite until two), and what a gathering pass waits on
        self._last_taken_at = float("-inf")
        self._taken_gap_s = float("inf")
        self._gathering: asyncio.Event | None = None
        self._no_batches_until: dict[str, float] = {}
        #: monotonic time until which the peer asked us to wait (its Retry-After)
        self._peer_busy_until = 0.0
        self.delivered = 0
        self.batches_sent = 0
        self.delivered_by_route: dict[str, int] = {}
        self._last_alert_check = float("-inf")
        #: seconds until the next message not claimed may be claimed, as of the last claim
        self._next_due_s = sweep_s
        #: acknowledged messages whose delivered mark waits for the next claim (while
        #: :meth:`run` runs): message id, the peer's status and answer, the route
        self._acknowledged: list[tuple[uuid.UUID, int, dict[str, Any], str]] = []
        #: while :meth:`run` runs: wakes its loop to write the marks (``SETTLE_WITHIN_S``)
        self._settle_wake: Callable[[], None] | None = None
        self._settle_timer: asyncio.TimerHandle | None = None
        #: while :meth:`run` runs: its passes, which messages leased to it elsewhere join
        self._window: _PassWindow | None = None
        #: messages leased to this relay by the statement that made them sendable
        #: (:meth:`take_leased`), waiting for their pass, and that pass's start
        self._leased: list[asyncpg.Record] = []
        self._leased_pass: asyncio.Task[None] | None = None
        #: :meth:`run`'s context (its pool holder label, no call's log fields), which the
        #: leased passes run in, not that of the caller of :meth:`take_leased`
        self._run_context = contextvars.Context()

    async def run(self) -> None:
        """Run until cancelled, surviving database restarts.

        Passes under way when the database is lost go on (each settles, or fails on its
        own) and wake the loop that replaces the lost one; on cancellation they are
        cancelled, and what they had claimed and not settled goes again when its lease
        expires (the peer dedupes a repeat).

        Meanwhile the messages written through its pool wake it in the process, without
        a NOTIFY (:data:`IN_PROCESS_SESSION`); once it stops, they NOTIFY again.
        """
        window = _PassWindow(self.passes_in_flight)
        self._settle_wake = window.settlements_due
        try:
            with holding(RELAY_HOLDER):
                async with watching(self.pool, SENDABLE_NOTICE, window.wake,
                                    session=IN_PROCESS_SESSION):
                    self._window = window
                    self._run_context = contextvars.copy_context()
                    await self._run(window)
        finally:
            self._window = None
            if self._leased_pass is not None:
                self._leased_pass.cancel()
            self._leased.clear()    # they go again when their leases run out
            await window.cancel()
            self._settle_wake = None
            await self._write_acknowledged()

    async def _run(self, window: _PassWindow) -> None:
        while True:
            try:
                async with listening(self.db_url, NOTIFY_CHANNEL) as wakeups:
                    window.wakeups = wakeups
                    await self._loop(wakeups, window)
            except asyncio.CancelledError:
                raise
            except _DATABASE_ERRORS as exc:
                log.warning("outbox relay lost the database (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _loop(self, wakeups: asyncio.Queue[str], window: _PassWindow) -> None:
        """Claim and deliver, with up to ``passes_in_flight`` claims' deliveries under way.

        A pass claims up to ``batch`` messages and delivers them concurrently. A full
        claim means more may be waiting, so the next claim goes out at once instead of
        after the first claim's answers: over a link with a round trip of ``rtt``, one
        relay carries up to ``batch * passes_in_flight / rtt`` messages per second
        (64 × 16 / 200 ms ≈ 5,100/s), where one pass at a time carried ``batch / rtt``.
        Claims never overlap (each is leased, ``FOR UPDATE SKIP LOCKED``). While a pass
        is under way the loop waits for it (or a notification) instead of reckoning when
        the next retry is due: a pass that leaves a message undelivered wakes the loop,
        which then reckons the wait with that pass's retries recorded. The claim itself
        says when the next message is due (one statement), for the wait when it claimed
        nothing.
        """
        while True:
            pause = self._peer_busy_until - time.monotonic()
            if pause > 0:                   # the peer asked us to wait (Retry-After)
                await asyncio.sleep(pause)
            while not wakeups.empty():
                wakeups.get_nowait()
            await window.acquire()
            try:
                rows = await self._claim()
            except BaseException:
                window.release()
                raise
            if rows:
                window.start(self._deliver_claimed(rows))
            else:
                window.release()
            await self._maybe_alert()
            if len(rows) >= self.batch:
                continue  # more may be waiting
            # a pass under way wakes the loop when it finishes: reckon the wait then
            wait = self.sweep_s if window.busy else self._next_due_s
            woken_by = await within(wakeups.get(), wait)
            if woken_by is None or woken_by in (PASS_FINISHED, SETTLEMENTS_DUE):
                continue
            # a message written: let others join it
            if self.linger_s:
                await asyncio.sleep(self.linger_s)
            elif (gap := self._last_claim_at + self.claim_gap_s - time.monotonic()) > 0:
                await asyncio.sleep(gap)

    def lease(self) -> tuple[str, int] | None:
        """To whom, and for how many seconds, a statement that makes messages sendable may
        lease them at once (:attr:`Outbox.LEASE_SET`), to hand them to
        :meth:`take_leased`: this relay delivers them without a claim of its own, and
        their release wakes no relay (shared migration 0007). None unless :meth:`run` is
        running: then the statement only releases, and a relay claims."""
        return None if self._window is None else (self.owner, self.lease_s)

    def take_leased(self, rows: Sequence[asyncpg.Record]) -> None:
        """Deliver messages leased to this relay by the statement that made them sendable
        (:meth:`lease`; its rows hold :attr:`Outbox.LEASED_COLUMNS`) as a claim's would
        be: in a pass of the window, those taken before it starts together, no sooner than
        ``claim_gap_s`` after the last pass began. If the relay stops first, they go
        again when their leases run out (a claimed message's fate too)."""
        if self._window is None:    # stopped meanwhile: they go when their leases run out
            return
        if rows and self.gather_s:
            self._note_taken()
        self._leased.extend(rows)
        if self._leased and self._leased_pass is None:
            self._leased_pass = asyncio.create_task(self._pass_leased(self._window),
                                                    name="outbox leased pass",
                                                    context=self._run_context.copy())
        elif rows and self._gathering is not None:
            self._gathering.set()

    def _note_taken(self) -> None:
        """Smooth the gap between takings of leased messages (half the last gap, half
        the mean before it), which says whether others will come to share a request."""
        now = time.monotonic()
        gap, self._last_taken_at = now - self._last_taken_at, now
        self._taken_gap_s = gap if self._taken_gap_s == float("inf") \
            else (self._taken_gap_s + gap) / 2

    async def _pass_leased(self, window: _PassWindow) -> None:
        try:
            taken_at = time.monotonic()
            gap = self._last_claim_at + self.claim_gap_s - taken_at
            if gap > 0:
                await asyncio.sleep(gap)
            if self.gather_s and self._taken_gap_s <= self.gather_s / 2:
                await self._gather(taken_at + self.gather_s)
            await window.acquire()
        finally:
            self._leased_pass = None
        rows, self._leased = self._leased, []
        self._last_claim_at = time.monotonic()
        window.start(self._deliver_claimed(rows))

    async def _gather(self, until: float) -> None:
        """Let leased messages join the pass until ``until`` (monotonic: the window's
        end), or until it holds ``gather_messages``, or until the next is not expected
        before the window's end (the last taken plus the smoothed gap between takings
        is later): what the pass holds waits at most the window, and once another is
        unlikely to join it in time, no longer."""
        self._gathering = gathering = asyncio.Event()
        try:
            while len(self._leased) < self.gather_messages \
                    and self._last_taken_at + self._taken_gap_s <= until:
                gathering.clear()
                if await within(gathering.wait(), until - time.monotonic()) is None:
                    break       # the window is up
        finally:
            self._gathering = None

    async def pass_once(self) -> int:
        """Claim due messages and deliver them concurrently; return how many were claimed
        (once their deliveries are settled)."""
        rows = await self._claim()
        if rows:
            await self._deliver_claimed(rows)
        await self._write_acknowledged()
        await self._maybe_alert()
        return len(rows)

    async def _claim(self) -> list[asyncpg.Record]:
        """Lease up to ``batch`` due messages to this relay (``lease_s``), and learn in the
        same statement when the first message not claimable now will be (its retry, or
        the end of another relay's lease): :attr:`_next_due_s`, at most ``sweep_s``.
        The same statement marks the messages acknowledged since the last claim delivered
        (:meth:`_delivered`): none of them is claimed again by it."""
        marks = self._take_acknowledged()
        started = time.monotonic()
        try:
            async with self._connections() as conn:
                if marks is None:
                    rows: list[asyncpg.Record] = await conn.fetch(
                        _CLAIM_ONLY, self.owner, self.lease_s, self.batch)
                else:
                    rows = await conn.fetch(
                        _CLAIM_SETTLING, self.owner, self.lease_s, self.batch, *marks)
        except BaseException:
            if marks is not None:   # not written: the next claim writes them
                self._put_back_acknowledged(marks)
            raise
        due = rows[0]["due_s"]
        self._next_due_s = self.sweep_s if due is None else max(0.0, min(self.sweep_s,
                                                                         float(due)))
        claimed = [row for row in rows if row["message_id"] is not None]
        if claimed:
            self._last_claim_at = started
        return claimed

    def _take_acknowledged(self) -> _Marks | None:
        """The delivered marks waiting, as the settlement's arrays (None: none)."""
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        if not self._acknowledged:
            return None
        taken, self._acknowledged = self._acknowledged, []
        return ([m for m, _, _, _ in taken], [st for _, st, _, _ in taken],
                [b for _, _, b, _ in taken], [r for _, _, _, r in taken])

    def _put_back_acknowledged(self, marks: _Marks) -> None:
        self._acknowledged[:0] = list(zip(*marks, strict=True))
        self._arm_settle_timer()

    def _arm_settle_timer(self) -> None:
        if self._settle_timer is None and self._settle_wake is not None:
            self._settle_timer = asyncio.get_running_loop().call_later(
                SETTLE_WITHIN_S, self._settle_due)

    def _settle_due(self) -> None:
        self._settle_timer = None
        if self._settle_wake is not None and self._acknowledged:
            self._settle_wake()

    async def _write_acknowledged(self) -> None:
        """Mark the acknowledged messages waiting delivered now, in one statement (the
        relay stopping, or :meth:`pass_once`). A mark not written (the database lost) is
        harmless: the message's lease runs out, it goes again and the peer answers the
        repeat as before (:func:`shared.link.accept_once`)."""
        marks = self._take_acknowledged()
        if marks is None:
            return
        try:
            async with self._connections() as conn:
                await conn.execute(_SETTLE, *marks)
        except _DATABASE_ERRORS as exc:
            log.warning("%d delivered marks not written (%s): those messages go again "
                        "when their leases expire; the peer dedupes them", len(marks[0]), exc)

    async def _deliver_claimed(self, rows: list[asyncpg.Record]) -> bool:
        """Deliver the claimed messages; True when every one of them was delivered."""
        delivered = await asyncio.gather(*(self._deliver(group[0]) if len(group) == 1
                                           else self._deliver_batch(group)
                                           for group in self._groups(rows)))
        return sum(delivered) == len(rows)

    def _groups(self, rows: list[asyncpg.Record]) -> list[list[asyncpg.Record]]:
        """Claimed messages as they will go out: alone, or in batches of up to
        ``batch_messages`` to one path the peer takes batches for, whatever their kinds,
        as long as their kinds travel the same way (:meth:`shared.link_policy.LinkPolicy.
        for_kind`: the same mode over the same routes). With one policy for every kind (the
        default) a pass's messages to a path go in one signed request."""
        groups: list[list[asyncpg.Record]] = []
        batchable: dict[tuple[str, KindPolicy], list[asyncpg.Record]] = {}
        policy = self.client.policy
        now = time.monotonic()
        for row in rows:
            if row["path"] in self.batch_paths \
                    and self._no_batches_until.get(row["path"], 0.0) <= now:
                batchable.setdefault((row["path"], policy.for_kind(row["kind"])),
                                     []).append(row)
            else:
                groups.append([row])
        for same in batchable.values():
            groups.extend(same[i:i + self.batch_messages]
                          for i in range(0, len(same), self.batch_messages))
        return groups

    async def _deliver(self, row: asyncpg.Record) -> int:
        """Send one message; 1 if it was delivered, else 0."""
        with _bound(row):
            return await self._deliver_bound(row)

    async def _deliver_bound(self, row: asyncpg.Record) -> int:
        mid = str(row["message_id"])
        try:
            result = await self.client.post(row["path"], bytes(row["body"]), mid,
                                            kind=row["kind"])
        except LinkRejected as exc:
            await self._settle(row, exc.status, exc.body)
            return 0
        except LinkUnavailable as exc:
            await self._retry([(row, str(exc))], self._wait_asked(exc))
            return 0
        await self._delivered([(row, result.status, result.body)], result.route)
        log.debug("delivered a %s message via %s in %.1f ms", row["kind"], result.route,
                  result.elapsed_s * 1000)
        return 1

    async def _deliver_batch(self, rows: list[asyncpg.Record]) -> int:
        """Several messages (of kinds that travel the same way, :meth:`_groups`) in one
        signed request to ``batch_path(path)``, each answered (and settled) on its own; how
        many were delivered. A batch the peer refuses as a whole goes again one message at
        a time, so a peer without the batch route still gets everything."""
        path = rows[0]["path"]
        kind = ",".join(sorted({r["kind"] for r in rows}))   # for the log lines
        body = encode_batch([(str(r["message_id"]), bytes(r["body"])) for r in rows])
        try:
            # any of the rows' kinds: they all have the same policy
            result = await self.client.post(batch_path(path), body, str(uuid.uuid4()),
                                            kind=rows[0]["kind"])
        except LinkRejected as exc:
            if exc.status in RETRYABLE_4XX:
                await self._retry([(r, f"HTTP {exc.status}: {exc.body}") for r in rows])
                return 0
            if exc.status in (404, 405):  # a peer without the route: don't ask every time
                self._no_batches_until[path] = time.monotonic() + NO_BATCH_ROUTE_RECHECK_S
            log.warning("peer refused a batch of %d %s messages (HTTP %s: %s); "
                        "sending them one by one", len(rows), kind, exc.status, exc.body)
            return sum(await asyncio.gather(*(self._deliver(r) for r in rows)))
        except LinkUnavailable as exc:
            await self._retry([(r, str(exc)) for r in rows], self._wait_asked(exc))
            return 0
        self.batches_sent += 1
        answers = parse_batch_answer(result.body)
        done: list[tuple[asyncpg.Record, int, Any]] = []
        again: list[tuple[asyncpg.Record, str]] = []
        refused: list[tuple[asyncpg.Record, int, Any]] = []
        for row in rows:
            answer = answers.get(str(row["message_id"]))
            if answer is None:
                again.append((row, "the batch's answer did not include it"))
            elif answer[0] < 400:
                done.append((row, *answer))
            elif _retryable(answer[0]):
                again.append((row, f"HTTP {answer[0]}: {answer[1]}"))
            else:
                refused.append((row, *answer))
        # one statement for the acknowledged, one for the retried, one connection at a time
        if done:
            await self._delivered(done, result.route)
        if again:
            await self._retry(again)
        for row, status, answer_body in refused:
            await self._park_dead(row, status, answer_body)
        log.debug("delivered a batch of %d %s messages (%d acknowledged) via %s in %.1f ms",
                  len(rows), kind, len(done), result.route, result.elapsed_s * 1000)
        return len(done)

    async def _settle(self, row: asyncpg.Record, status: int, body: Any) -> None:
        """A message the peer did not acknowledge: retried, or parked as dead when the peer
        refused it for good (a 4xx other than :data:`RETRYABLE_4XX`)."""
        if _retryable(status):
            await self._retry([(row, f"HTTP {status}: {body}")])
        else:
            await self._park_dead(row, status, body)

    async def _park_dead(self, row: asyncpg.Record, status: int, body: Any) -> None:
        async with self._connections() as conn:
            dead = await conn.fetchrow(
                "UPDATE outbox SET dead_at = now(), response_status = $2, response_body = $3, "
                "lease_owner = NULL, lease_expires_at = NULL, last_error = NULL "
                f"WHERE message_id = $1 AND delivered_at IS NULL RETURNING {_DEAD_COLUMNS}",
                row["message_id"], status, _as_object(body))
        if dead is None:  # delivered meanwhile (a lease that expired under a slow answer)
            return
        letter = DeadLetter.of(dead)
        metrics().link_deliveries.labels(letter.kind, "none", "dead").inc()
        with _bound(row):
            log.error("dead letter: peer refused a %s message for good (HTTP %s after %d "
                      "attempts): %s; parked until an operator requeues it", letter.kind,
                      status, letter.attempts, str(body)[:300])
            if self.on_dead_letter is not None:
                try:
                    self.on_dead_letter(letter)
                except Exception:
                    log.exception("the dead-letter hook failed")

    async def _delivered(self, answered: list[tuple[asyncpg.Record, int, Any]],
                         route: str) -> None:
        """Messages the peer acknowledged. While :meth:`run` runs, their marks wait (at
        most ``SETTLE_WITHIN_S``) for the next claim, which writes them in its statement;
        otherwise they are written now, one statement for them all."""
        self._acknowledged.extend((row["message_id"], status, _as_object(body), route)
                                  for row, status, body in answered)
        if self._settle_wake is not None:
            self._arm_settle_timer()
        else:
            await self._write_acknowledged()
        self.delivered += len(answered)
        self.delivered_by_route[route] = self.delivered_by_route.get(route, 0) + len(answered)
        for row, _, _ in answered:
            metrics().link_deliveries.labels(row["kind"], route, "delivered").inc()

    def _wait_asked(self, exc: LinkUnavailable) -> float:
        """The peer's Retry-After (at most ``max_backoff_s``; 0 if none): no message goes
        before then (the relay pauses its claims)."""
        if not isinstance(exc, LinkBusy) or exc.retry_after_s is None:
            return 0.0
        wait = min(float(self.max_backoff_s), exc.retry_after_s)
        until = time.monotonic() + wait
        if until > self._peer_busy_until:
            log.warning("the peer is busy (HTTP %d): sending again in %.0f s", exc.status, wait)
            self._peer_busy_until = until
        return wait

    async def _retry(self, failed: Sequence[tuple[asyncpg.Record, str]],
                     at_least_s: float = 0.0) -> None:
        """Messages not delivered (each with its error) go again after their backoff (at
        least ``at_least_s``), all in one statement."""
        waits_ms = []
        for row, error in failed:
            attempts = int(row["attempts"])
            backoff = min(self.max_backoff_s, 0.5 * 2 ** min(attempts, 16))
            backoff = max(at_least_s, backoff * random.uniform(0.8, 1.2))
            with _bound(row):
                log.warning("delivery of a %s message failed (attempt %d, next in %.1f s): %s",
                            row["kind"], attempts, backoff, error[:300])
            waits_ms.append(int(backoff * 1000))
        async with self._connections() as conn:
            await conn.execute(
                "UPDATE outbox o SET next_attempt_at = now() + a.wait_ms * interval "
                "'1 millisecond', last_error = a.error, lease_owner = NULL, "
                "lease_expires_at = NULL FROM unnest($1::uuid[], $2::bigint[], $3::text[]) "
                "AS a(message_id, wait_ms, error) WHERE o.message_id = a.message_id",
                [row["message_id"] for row, _ in failed], waits_ms,
                [error[:1000] for _, error in failed])
        for row, _ in failed:
            metrics().link_deliveries.labels(row["kind"], "none", "retry").inc()

    async def stats(self) -> OutboxStats:
        return await outbox_stats(self.pool)

    async def check_alert(self, *, force: bool = False) -> OutboxAlert | None:
        """Alert if a durable message is older than ``alert_after_s`` or dead letters exist.

        Checked at most every ``alert_every_s`` by the relay loop (``force``
        checks now). An alert is logged at ERROR and passed to ``on_alert``.
        """
        now = time.monotonic()
        if not force and now - self._last_alert_check < self.alert_every_s:
            return None
        self._last_alert_check = now
        stats = await self.stats()
        alert: OutboxAlert | None = None
        if stats.oldest_pending_s is not None and stats.oldest_pending_s > self.alert_after_s:
            alert = OutboxAlert(
                "pending-too-old",
                f"{stats.pending} messages pending, oldest {stats.oldest_pending_kind} "
                f"{stats.oldest_pending_id} is {stats.oldest_pending_s:.0f} s old "
                f"(threshold {self.alert_after_s} s)", stats)
        elif stats.dead:
            alert = OutboxAlert("dead-letters",
                                f"{stats.dead} messages refused by the peer for good "
                                "(GET /v1/link/outbox/dead lists them)", stats)
        if alert is not None:
            log.error("ALERT outbox %s: %s", alert.reason, alert.message)
            if self.on_alert is not None:
                self.on_alert(alert)
        return alert

    async def _maybe_alert(self) -> None:
        await self.check_alert()


def _bound(row: asyncpg.Record) -> AbstractContextManager[logs.LogContext]:
    """Log lines about one message name it (request id), its merchant and the call its
    payload is about (``edge_call_id``: every message between the sites carries one)."""
    call_id = None
    try:
        payload = json.loads(bytes(row["body"]))
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("edge_call_id"), str):
        call_id = payload["edge_call_id"]
    return logs.bind(request_id=str(row["message_id"]), merchant=row["merchant_id"],
                     call_id=call_id)


async def outbox_stats(pool: asyncpg.Pool) -> OutboxStats:
    """Messages not delivered (pending, held, dead) and the oldest pending one (one
    statement: every scrape of ``/metrics`` asks)."""
    row = await pool.fetchrow(
        """SELECT counts.*, oldest.message_id, oldest.kind, oldest.age
           FROM (SELECT count(*) FILTER (WHERE dead_at IS NULL AND NOT held) AS pending,
                        count(*) FILTER (WHERE held) AS held,
                        count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead
                 FROM outbox WHERE delivered_at IS NULL) AS counts
           LEFT JOIN LATERAL (
               SELECT message_id, kind, EXTRACT(EPOCH FROM now() - created_at) AS age
               FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL AND NOT held
               ORDER BY created_at LIMIT 1) AS oldest ON true""")
    assert row is not None
    found = row["message_id"] is not None
    return OutboxStats(int(row["pending"]), int(row["held"]), int(row["dead"]),
                       float(row["age"]) if found else None,
                       str(row["message_id"]) if found else None,
                       str(row["kind"]) if found else None)


def _retryable(status: int) -> bool:
    """A peer's answer that may pass later (retried); any other refusal is for good."""
    return status >= 500 or status in RETRYABLE_4XX


def _as_object(body: Any) -> dict[str, Any]:
    return body if isinstance(body, dict) else {"body": body}


def isoformat(value: datetime | None) -> str | None:
    """Timestamps on the wire: ISO 8601 UTC with milliseconds and a Z."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def isoformat_sql(expression: str) -> str:
    """:func:`isoformat` in SQL, of a ``timestamptz`` expression: the same text."""
    return (f"to_char(({expression}) AT TIME ZONE 'UTC', "
            """'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')""")


def encode_sql(expression: str) -> str:
    """A message body in SQL, of a ``jsonb`` expression (for a statement that writes its
    fact and its message at once: ``INSERT INTO outbox (Outbox.INSERT_COLUMNS)``)."""
    return f"convert_to(({expression})::text, 'UTF8')"
