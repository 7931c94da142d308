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
  statement fails, each message is retried alone (a bad message fails only
  itself); if the database is unreachable every waiting message gets
  :class:`IntakeFailed` (503 ``intake-failed`` through
  :func:`shared.http.error_middleware`), and the sender retries. A batch whose
  commit outcome is unknown (connection lost mid-commit) is answered with an
  error too; the sender's retry then finds the id and gets the first answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from shared.http import ApiError

log = logging.getLogger("shared.intake_batch")

Answer = tuple[int, dict[str, Any]]

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
    TimeoutError,
)


class IntakeFailed(ApiError):
    """The message was not stored (or its commit is unknown): the sender must retry."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(503, "intake-failed", f"message {message_id} was not stored: {reason}")
        self.message_id = message_id


@dataclass(slots=True)
class _Pending:
    message_id: str
    payload: bytes
    status: int
    answer: dict[str, Any]
    answer_json: str
    #: one future per caller waiting for this message (the first delivery and its repeats);
    #: a cancelled caller cancels only its own future, never the write
    waiters: list[asyncio.Future[Answer]]
    settled: bool = False


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


@dataclass
class IntakeBatcher:
    """Batches :meth:`submit` calls into one durable statement per batch.

    ``store_sql`` is a data-modifying statement (no ``RETURNING`` needed) that
    reads the newly claimed messages from the relation ``fresh(message_id text,
    payload bytea)``, e.g. ``INSERT INTO intake (message_id, body) SELECT
    message_id, payload FROM fresh``. It is code, never request data.

    The batcher keeps up to ``max_in_flight`` connections of ``pool`` for
    itself (taken on first use, given back by :meth:`close` or when one fails);
    size the pool for that plus whatever else shares it, and close the batcher
    before the pool (``Pool.close`` waits for held connections).
    """

    pool: asyncpg.Pool
    kind: str
    store_sql: str
    max_batch: int = 256
    max_in_flight: int = 2
    linger_s: float = 0.0
    _queue: list[_Pending] = field(default_factory=list, init=False)
    _waiting: dict[str, _Pending] = field(default_factory=dict, init=False)
    _wake: asyncio.Event | None = field(default=None, init=False)
    _slots: asyncio.Semaphore | None = field(default=None, init=False)
    _loop_task: asyncio.Task[None] | None = field(default=None, init=False)
    _batches: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _idle: list[asyncpg.Connection] = field(default_factory=list, init=False)
    _sql: str = field(default="", init=False)
    #: counters for benchmarks and health pages
    batches: int = field(default=0, init=False)
    messages: int = field(default=0, init=False)
    repeats: int = field(default=0, init=False)
    fallbacks: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        if "fresh" not in self.store_sql:
            raise ValueError("store_sql must read the new messages from the relation 'fresh'")
        self._sql = batch_sql(self.store_sql)

    async def submit(self, message_id: str, payload: bytes, answer: Answer) -> Answer:
        """Store ``payload`` once under ``message_id``; return the first answer.

        ``answer`` is what a first delivery is answered (and what repeats get
        back). Returns only after the commit; raises :class:`IntakeFailed` when
        the message could not be stored. Cancelling the caller does not cancel
        the write (the batch is shared).
        """
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        existing = self._waiting.get(message_id)
        if existing is not None:  # a repeat of a message still queued or in flight here
            self.repeats += 1
            existing.waiters.append(future)
            return await future
        self._ensure_running()
        assert self._wake is not None
        status, body = answer
        item = _Pending(message_id, payload, status, body,
                        json.dumps(body, separators=(",", ":")), [future])
        self._queue.append(item)
        self._waiting[message_id] = item
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Stop taking batches; wait for those in flight; fail what is still queued."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            await self.pool.release(conn)
        queued, self._queue = self._queue, []
        for item in queued:
            self._settle_error(item, "the intake is shutting down")

    # --- internals ---------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_in_flight)
            self._loop_task = asyncio.create_task(self._run(), name=f"intake batcher {self.kind}")

    async def _run(self) -> None:
        assert self._wake is not None and self._slots is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            if self.linger_s > 0 and len(self._queue) < self.max_batch:
                await asyncio.sleep(self.linger_s)
            batch = self._queue[:self.max_batch]
            del self._queue[:self.max_batch]
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._flush(batch), name="intake batch")
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        assert self._slots is not None
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:  # a bug, not a DB error
            log.error("intake batch crashed", exc_info=task.exception())

    async def _flush(self, batch: list[_Pending]) -> None:
        batch.sort(key=lambda p: p.message_id)
        self.batches += 1
        self.messages += len(batch)
        try:
            await self._write_on_held(batch)
        except _CONNECTION_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("intake batch of %d failed, database unreachable: %s", len(batch), reason)
            for item in batch:
                self._settle_error(item, reason)
        except asyncpg.PostgresError as exc:
            log.warning("intake batch of %d failed (%s: %s); retrying each message alone",
                        len(batch), type(exc).__name__, exc)
            self.fallbacks += 1
            await self._one_by_one(batch)
        except BaseException as exc:
            for item in batch:
                self._settle_error(item, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            for item in batch:  # never leave a caller waiting
                if not item.settled:
                    self._settle_error(item, "no answer")

    async def _one_by_one(self, batch: Sequence[_Pending]) -> None:
        for item in batch:
            if item.settled:  # answered before the failure (a repeat lookup failed)
                continue
            try:
                await self._write_on_held([item])
            except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
                log.warning("intake of %s %s failed: %s: %s", self.kind, item.message_id,
                            type(exc).__name__, exc)
                self._settle_error(item, f"{type(exc).__name__}: {exc}")

    async def _write_on_held(self, batch: Sequence[_Pending]) -> None:
        """Write on one of the batcher's own connections (at most ``max_in_flight``).

        They are taken from the pool once and kept, not returned after every
        batch: returning one costs a reset round trip (``RESET ALL`` etc.). A
        connection that failed goes back to the pool, which replaces it.
        """
        conn = self._idle.pop() if self._idle else await self.pool.acquire()
        try:
            await self._write(conn, batch)
        except BaseException:
            await self.pool.release(conn)
            raise
        self._idle.append(conn)

    async def _write(self, conn: asyncpg.Connection, batch: Sequence[_Pending]) -> None:
        ids = [p.message_id for p in batch]
        rows = await conn.fetch(self._sql, ids, [p.payload for p in batch],
                                [p.status for p in batch], [p.answer_json for p in batch],
                                self.kind)
        # committed: the statement was its own transaction
        claimed = {r[0] for r in rows}
        repeats = [p for p in batch if p.message_id not in claimed]
        for item in batch:
            if item.message_id in claimed:
                self._settle(item, (item.status, item.answer))
        if not repeats:
            return
        self.repeats += len(repeats)
        first = {r[0]: (int(r[1]), json.loads(r[2]))
                 for r in await conn.fetch(_FIRST_ANSWERS, [p.message_id for p in repeats])}
        for item in repeats:
            answer = first.get(item.message_id)
            if answer is None:  # forgotten between the two statements (purge): not stored
                self._settle_error(item, "message id vanished while reading its first answer")
            else:
                log.info("duplicate %s message %s: returning the first answer", self.kind,
                         item.message_id)
                self._settle(item, answer)

    def _settle(self, item: _Pending, answer: Answer) -> None:
        self._forget(item)
        status, body = answer
        for future in item.waiters:
            if not future.done():
                future.set_result((status, dict(body)))

    def _settle_error(self, item: _Pending, reason: str) -> None:
        self._forget(item)
        for future in item.waiters:
            if not future.done():
                future.set_exception(IntakeFailed(item.message_id, reason))

    def _forget(self, item: _Pending) -> None:
        item.settled = True
        if self._waiting.get(item.message_id) is item:
            del self._waiting[item.message_id]
