"""Group commit for signed intake: many link messages, one durable transaction.

:func:`shared.link.accept_once` costs one transaction per message: BEGIN, the
message-id INSERT, the handler's INSERT, the answer UPDATE, COMMIT (five round
trips and one WAL flush). :class:`IntakeBatcher` gives the same guarantees to
handlers whose first answer is known before the write (store the payload,
answer ``202``) at one round trip and one WAL flush per *batch*:

* Requests that arrive while earlier batches are committing wait in a queue;
  when a slot is free (at most ``max_in_flight`` batches at once per batcher)
  the queue, up to ``max_batch`` messages, goes out as ONE statement::

      WITH input AS (SELECT * FROM unnest($1::text[], $2::bytea[], $3::int[], $4::text[])),
           claimed AS (INSERT INTO inbound_messages ... SELECT ... FROM input
                       ON CONFLICT (message_id) DO NOTHING RETURNING message_id),
           fresh AS (SELECT message_id, payload FROM input JOIN claimed USING (message_id)),
           stored AS (<store_sql>: the caller's INSERT ... SELECT ... FROM fresh)
      SELECT message_id FROM claimed

  run outside an explicit transaction, so the statement is its own transaction
  and commits (durably, with the server's ``synchronous_commit``) before
  ``execute`` returns. The message-id rows and the payload rows commit or roll
  back together. No batch waits for a timer unless ``linger_s`` asks for it:
  under load the queue fills while the slots are busy, when idle a message
  goes out alone at once.
* Exactly once: a message id already in ``inbound_messages`` is not claimed;
  its stored first answer is read back (a second statement, only for batches
  that had repeats) and returned. A repeat of an id that is still queued or in
  flight in this batcher waits for that first delivery and gets its answer.
  A repeat committing concurrently elsewhere (another process, another link)
  serialises on the primary key: ``ON CONFLICT`` waits for the other
  transaction and then sees its row. Ids are sent sorted, so two batches that
  share ids lock them in the same order (no deadlock).
* Nothing is acknowledged before the commit, nothing is lost: if the batch
  statement fails (an SQL error, or an exception raised for one message),
  each message is retried alone in its own transaction (retry-the-rest: a bad
  message fails only itself, with :class:`IntakeBroken`, 500 ``internal-error``
  and its traceback logged; the others are stored and answered); if the
  database is unreachable every waiting message gets :class:`IntakeFailed`
  (503 ``intake-failed`` through :func:`shared.http.error_middleware`), and the
  sender retries. A batch whose
  commit outcome is unknown (connection lost mid-commit) is answered with an
  error too; the sender's retry then finds the id and gets the first answer.

The queueing, slots and connections are :class:`Batcher`, generic over what
a request carries and what it is answered: a subclass implements
:meth:`Batcher.write` (the whole batch on one connection, an answer per key),
and a batch that raises fails every caller in it with that exception.
:class:`GroupCommit` adds the intake's failure handling above (message ids,
retry-the-rest, :class:`IntakeFailed`): :class:`IntakeBatcher` is the
one-statement writer above; ``callback_server.intake.CallbackIntake`` screens
and stores call-back requests, guard included, one statement per batch;
``callback_server.consult_billing.ConsultBilling`` admits consultations (one
statement a batch) and reserves their first slices (one transaction a batch).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg

from shared import logs
from shared.db import CONNECTION_ERRORS
from shared.http import ApiError
from shared.waits import cancel_and_wait

log = logging.getLogger("shared.intake_batch")

Answer = tuple[int, dict[str, Any]]
T = TypeVar("T")
R = TypeVar("R")



class IntakeFailed(ApiError):
    """The message was not stored (or its commit is unknown): the sender must retry."""

    def __init__(self, message_id: str, reason: str, *, status: int = 503,
                 error_id: str = "intake-failed") -> None:
        super().__init__(status, error_id, f"message {message_id} was not stored: {reason}")
        self.message_id = message_id


class IntakeBroken(IntakeFailed):
    """Storing this one message raised (a bug, or data the database refuses), alone in its
    own transaction: ``500 internal-error``, its traceback logged. Not stored, so the sender
    retries it; the rest of its batch was stored without it."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(message_id, reason, status=500, error_id="internal-error")


@dataclass(frozen=True, slots=True)
class _Fixed:
    """An :class:`IntakeBatcher` message: the payload and its (known) first answer."""

    payload: bytes
    status: int
    answer: dict[str, Any]
    answer_json: str


def batch_sql(store_sql: str) -> str:
    """The one statement a batch is (see the module docstring)."""
    return (
        "WITH input AS ("
        " SELECT * FROM unnest($1::text[], $2::bytea[], $3::int[], $4::text[])"
        "  AS t(message_id, payload, status, answer)),"
        " claimed AS ("
        " INSERT INTO inbound_messages (message_id, kind, response_status, response_body)"
        " SELECT message_id, $5, status, answer::jsonb FROM input"
        " ON CONFLICT (message_id) DO NOTHING RETURNING message_id),"
        " fresh AS (SELECT i.message_id, i.payload FROM input i JOIN claimed c"
        "  ON c.message_id = i.message_id),"
        f" stored AS ({store_sql})"
        " SELECT message_id FROM claimed"
    )


_FIRST_ANSWERS = ("SELECT message_id, response_status, response_body::text AS body"
                  " FROM inbound_messages WHERE message_id = ANY($1::text[])")


class BatchFailed(RuntimeError):
    """A :class:`Batcher`'s batch gave no answer for this request (the writer left it
    out, or the batcher closed before writing it)."""


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    key: str
    item: T
    #: one future per caller waiting for this key (the first request and its repeats);
    #: a cancelled caller cancels only its own future, never the write
    waiters: list[asyncio.Future[R]]
    settled: bool = False
    queued_at: float = 0.0          # loop time it was queued


@dataclass
class Batcher(Generic[T, R]):
    """Group commit: the :meth:`deliver` calls that arrive together are served by one
    :meth:`write` per batch, on one connection.

    Requests that arrive while earlier batches are being written wait in a queue; when
    a slot is free (at most ``max_in_flight`` batches at once) the queue, up to
    ``max_batch`` requests, is one batch. No batch waits for a timer unless
    ``linger_s`` asks for it. A key still queued or in flight is not queued again: its
    repeat waits for the same answer. The queue's task ends when the queue is empty
    (the next request starts it again), so a batcher left unclosed leaves no task.

    ``hold``: keep up to ``max_in_flight`` connections of ``pool`` between batches
    (returning one to the pool costs a reset round trip; :meth:`close` gives them back,
    so close the batcher before the pool); false: each batch takes a pooled connection
    and gives it back once its callers are answered.

    A batch that raises fails every caller of that batch with the exception (none is
    left waiting); :class:`GroupCommit` retries each message alone instead.
    """

    pool: asyncpg.Pool
    kind: str
    max_batch: int = 256
    max_in_flight: int = 2
    linger_s: float = 0.0
    #: :meth:`overloaded` once a message has waited this long for a free connection
    #: (None: never)
    shed_after_s: float | None = None
    hold: bool = True
    _queue: list[_Pending[T, R]] = field(default_factory=list, init=False)
    _waiting: dict[str, _Pending[T, R]] = field(default_factory=dict, init=False)
    _slots: asyncio.Semaphore = field(init=False)
    _loop_task: asyncio.Task[None] | None = field(default=None, init=False)
    _batches: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _idle: list[asyncpg.Connection] = field(default_factory=list, init=False)
    #: counters for benchmarks and health pages
    batches: int = field(default=0, init=False)
    messages: int = field(default=0, init=False)
    #: repeats of a key still queued or in flight in this batcher
    repeats: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._slots = asyncio.Semaphore(self.max_in_flight)

    async def write(self, conn: asyncpg.Connection, batch: Sequence[tuple[str, T]]
                    ) -> Mapping[str, R | Exception]:
        """Serve ``batch`` (distinct keys, in arrival order) on ``conn``: each key's
        answer, once what it answers is durable, or the exception its callers get (one
        request's own error fails only that request). A key missing from the result fails its
        callers with :class:`BatchFailed`."""
        raise NotImplementedError

    async def deliver(self, key: str, item: T) -> R:
        """``item``'s answer from the batch it goes out in (a repeat of a key still
        queued or in flight: that one's). Cancelling the caller does not cancel the
        write (the batch is shared)."""
        return await self._enqueue(key, item)

    def overloaded(self) -> bool:
        """The database does not keep up: the oldest message still waiting for one of
        the batcher's connections has waited over ``shed_after_s`` (the server should
        refuse new messages with 503 + Retry-After rather than queue them)."""
        return self.shed_after_s is not None and bool(self._queue) and \
            asyncio.get_running_loop().time() - self._queue[0].queued_at > self.shed_after_s

    def _enqueue(self, key: str, item: T) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        existing = self._waiting.get(key)
        if existing is not None:  # a repeat of a key still queued or in flight here
            self.repeats += 1
            existing.waiters.append(future)
            return future
        # the class itself, not _Pending[T, R]: calling the subscripted alias also tries
        # to set __orig_class__ on the instance, an AttributeError (slots) raised and
        # caught for every request
        pending = _Pending(key, item, [future], queued_at=loop.time())
        self._queue.append(pending)
        self._waiting[key] = pending
        if self._loop_task is None or self._loop_task.done():
            # started by the first request, it serves them all: no request's log context
            self._loop_task = asyncio.create_task(self._run(), name=f"batcher {self.kind}",
                                                  context=logs.unbound())
        return future

    async def close(self) -> None:
        """Stop taking batches; wait for those in flight; fail what is still queued (that
        too when the caller's cancellation, passed on, cuts the waits short)."""
        try:
            if self._loop_task is not None:
                await cancel_and_wait(self._loop_task)
                self._loop_task = None
            if self._batches:
                await asyncio.gather(*self._batches, return_exceptions=True)
            idle, self._idle = self._idle, []
            for conn in idle:
                await self.pool.release(conn)
        finally:
            queued, self._queue = self._queue, []
            for pending in queued:      # never leave a caller waiting
                self._missing(pending, f"the {self.kind} batcher is shutting down")

    # --- internals ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while self._queue:
            await self._slots.acquire()
            if len(self._queue) < self.max_batch:
                await self._fill()
            batch = self._queue[:self.max_batch]
            del self._queue[:self.max_batch]
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._flush(batch), name=f"{self.kind} batch")
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    async def _fill(self) -> None:
        """A slot is free and the batch is not full: let more requests join it before it
        is cut (here ``linger_s``, if any; a subclass may wait for what it knows is
        coming)."""
        if self.linger_s > 0:
            await asyncio.sleep(self.linger_s)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:  # a bug, not a DB error
            log.error("%s batch crashed", self.kind, exc_info=task.exception())

    async def _flush(self, batch: list[_Pending[T, R]]) -> None:
        self.batches += 1
        self.messages += len(batch)
        try:
            await self._write_batch(batch)
        finally:
            for pending in batch:  # never leave a caller waiting
                if not pending.settled:
                    self._missing(pending, "no answer")

    async def _write_batch(self, batch: list[_Pending[T, R]]) -> None:
        """Write the batch; if it raises, every caller of the batch gets the exception."""
        try:
            await self._write_on_held(batch)
        except BaseException as exc:
            log.warning("%s batch of %d failed: %s: %s", self.kind, len(batch),
                        type(exc).__name__, exc)
            for pending in batch:
                self._settle_error(pending, exc)
            if not isinstance(exc, Exception):  # cancelled
                raise

    async def _write_on_held(self, batch: Sequence[_Pending[T, R]]) -> None:
        """Write on one of the batcher's own connections (at most ``max_in_flight``).

        Held (``hold``), they are taken from the pool once and kept, not returned after
        every batch: returning one costs a reset round trip (``RESET ALL`` etc.). A
        connection that failed goes back to the pool, which replaces it.
        """
        conn = self._idle.pop() if self._idle else await self.pool.acquire()
        try:
            answers = await self.write(conn, [(p.key, p.item) for p in batch])
        except BaseException:
            await self.pool.release(conn)
            raise
        for pending in batch:  # committed
            answer = answers.get(pending.key, _NONE)
            if answer is _NONE:
                self._missing(pending, "no answer from the writer")
            elif isinstance(answer, Exception):
                self._settle_error(pending, answer)
            else:
                self._settle(pending, answer)
        if self.hold:
            self._idle.append(conn)
        else:
            await self.pool.release(conn)

    def _settle(self, pending: _Pending[T, R], answer: R) -> None:
        self._forget(pending)
        for future in pending.waiters:
            if not future.done():
                future.set_result(answer)

    def _settle_error(self, pending: _Pending[T, R], exc: BaseException) -> None:
        self._forget(pending)
        for future in pending.waiters:
            if not future.done():
                future.set_exception(exc)

    def _missing(self, pending: _Pending[T, R], reason: str) -> None:
        """Fail the callers of a request that got no answer."""
        self._settle_error(pending, BatchFailed(f"{self.kind} {pending.key}: {reason}"))

    def _forget(self, pending: _Pending[T, R]) -> None:
        pending.settled = True
        if self._waiting.get(pending.key) is pending:
            del self._waiting[pending.key]


_NONE: Any = object()


@dataclass
class GroupCommit(Batcher[T, Answer]):
    """Batches :meth:`deliver` calls; :meth:`write` stores a batch in one transaction.

    The batcher keeps up to ``max_in_flight`` connections of ``pool`` for
    itself (taken on first use, given back by :meth:`close` or when one fails);
    size the pool for that plus whatever else shares it, and close the batcher
    before the pool (``Pool.close`` waits for held connections).
    """

    fallbacks: int = field(default=0, init=False)

    async def write(self, conn: asyncpg.Connection, batch: Sequence[tuple[str, T]]
                    ) -> Mapping[str, Answer]:
        """Store ``batch`` (message ids are distinct, sorted) durably, in ONE transaction
        that has committed when this returns; the answer of every message id, the first
        answer for ids already stored. An id missing from the result is answered
        :class:`IntakeFailed`. Any exception but a lost connection has each message
        of the batch retried alone, so one bad message fails only itself."""
        raise NotImplementedError

    async def deliver(self, message_id: str, item: T) -> Answer:
        """Store ``item`` once under ``message_id``; return the first answer.

        Returns only after the commit; raises :class:`IntakeFailed` when the
        message could not be stored. Cancelling the caller does not cancel the
        write (the batch is shared).
        """
        status, body = await self._enqueue(message_id, item)
        return status, dict(body)

    async def deliver_many(self, items: Sequence[tuple[str, T]]) -> list[Answer | IntakeFailed]:
        """:meth:`deliver` for several messages at once (one batch request of the link).

        All are queued together, so they share batches; returns each message's first
        answer, or the :class:`IntakeFailed` that says it was not stored, in order.
        """
        results = await asyncio.gather(*(self.deliver(mid, item) for mid, item in items),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, IntakeFailed):
                raise result
        return results  # type: ignore[return-value]  # narrowed by the loop above

    async def _write_batch(self, batch: list[_Pending[T, Answer]]) -> None:
        batch.sort(key=lambda p: p.key)     # two batches sharing ids lock them in one order
        try:
            await self._write_on_held(batch)
        except CONNECTION_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("intake batch of %d failed, database unreachable: %s", len(batch), reason)
            for pending in batch:
                self._missing(pending, reason)
        except Exception as exc:  # an SQL error, or a bug on one message: isolate it
            log.warning("intake batch of %d failed (%s: %s); retrying each message alone",
                        len(batch), type(exc).__name__, exc)
            self.fallbacks += 1
            await self._one_by_one(batch)
        except BaseException as exc:  # cancelled
            for pending in batch:
                self._missing(pending, f"{type(exc).__name__}: {exc}")
            raise

    async def _one_by_one(self, batch: Sequence[_Pending[T, Answer]]) -> None:
        for pending in batch:
            if pending.settled:  # answered before the failure
                continue
            try:
                await self._write_on_held([pending])
            except CONNECTION_ERRORS as exc:
                log.warning("intake of %s %s failed, database unreachable: %s: %s", self.kind,
                            pending.key, type(exc).__name__, exc)
                self._missing(pending, f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                log.error("intake of %s %s failed alone: %s: %s", self.kind,
                          pending.key, type(exc).__name__, exc, exc_info=exc)
                self._settle_error(pending, IntakeBroken(pending.key,
                                                         f"{type(exc).__name__}: {exc}"))

    def _missing(self, pending: _Pending[T, Answer], reason: str) -> None:
        self._settle_error(pending, IntakeFailed(pending.key, reason))


async def first_answers(conn: asyncpg.Connection, message_ids: Sequence[str]
                        ) -> dict[str, Answer]:
    """The stored first answers of message ids already in ``inbound_messages``."""
    if not message_ids:
        return {}
    return {r[0]: (int(r[1]), json.loads(r[2]))
            for r in await conn.fetch(_FIRST_ANSWERS, list(message_ids))}


class IntakeBatcher(GroupCommit[_Fixed]):
    """Batches :meth:`submit` calls into one durable statement per batch.

    ``store_sql`` is a data-modifying statement (no ``RETURNING`` needed) that
    reads the newly claimed messages from the relation ``fresh(message_id text,
    payload bytea)``, e.g. ``INSERT INTO intake (message_id, body) SELECT
    message_id, payload FROM fresh``. It is code, never request data.
    """

    def __init__(self, pool: asyncpg.Pool, kind: str, store_sql: str, *, max_batch: int = 256,
                 max_in_flight: int = 2, linger_s: float = 0.0) -> None:
        super().__init__(pool, kind, max_batch, max_in_flight, linger_s)
        if "fresh" not in store_sql:
            raise ValueError("store_sql must read the new messages from the relation 'fresh'")
        self.store_sql = store_sql
        self._sql = batch_sql(store_sql)

    async def submit(self, message_id: str, payload: bytes, answer: Answer) -> Answer:
        """Store ``payload`` once under ``message_id``; return the first answer.

        ``answer`` is what a first delivery is answered (and what repeats get
        back). Returns only after the commit; raises :class:`IntakeFailed` when
        the message could not be stored.
        """
        status, body = answer
        return await self.deliver(message_id, _Fixed(
            payload, status, body, json.dumps(body, separators=(",", ":"))))

    async def write(self, conn: asyncpg.Connection, batch: Sequence[tuple[str, _Fixed]]
                    ) -> Mapping[str, Answer]:
        ids = [mid for mid, _ in batch]
        rows = await conn.fetch(self._sql, ids, [f.payload for _, f in batch],
                                [f.status for _, f in batch], [f.answer_json for _, f in batch],
                                self.kind)
        # committed: the statement was its own transaction
        claimed = {r[0] for r in rows}
        answers: dict[str, Answer] = {mid: (f.status, f.answer) for mid, f in batch
                                      if mid in claimed}
        repeats = [mid for mid in ids if mid not in claimed]
        if repeats:
            log.info("duplicate %s messages %s: returning the first answers", self.kind,
                     ", ".join(repeats))
            # an id forgotten between the two statements (purge) gets no answer: not stored
            answers.update(await first_answers(conn, repeats))
        return answers
