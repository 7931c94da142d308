"""What every part of the callback store shares: the pool and lease owner, the ids of
the facts it reports to the edge, and the retry of writes made during a live call.

Every fact that the edge must hear about is written together with its outbox
message in one transaction (:meth:`shared.outbox.Outbox.enqueue`), with a
message id derived from the fact (uuid5), so writing a fact twice is a no-op
and never sends two messages.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import asyncpg
import tenacity

from shared.db import CONNECTION_ERRORS

if TYPE_CHECKING:
    from callback_server.guard.service import Guard

log = logging.getLogger("callback.store")

EVENTS_PATH = "/v1/link/events"
_NS = uuid.UUID("6f0c7f0e-8a53-4c1e-9d44-3b1c2d0e5a10")


def fact_message_id(kind: str, key: str) -> str:
    """The outbox message id of a fact: the same fact always gets the same id."""
    return str(uuid.uuid5(_NS, f"{kind}:{key}"))


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
                retry=tenacity.retry_if_exception_type(CONNECTION_ERRORS),
                wait=tenacity.wait_exponential(multiplier=0.2, max=5),
                stop=tenacity.stop_after_delay(LIVE_CALL_WRITE_RETRY_S), reraise=True,
                before_sleep=lambda rs: log.warning(
                    "%s: database unavailable (%s); retrying", fn.__name__,
                    rs.outcome.exception() if rs.outcome else "?")):
            with attempt:
                return await fn(*args, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


class StoreBase:
    """The state the store's parts share: one pool, one lease owner, one guard."""

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
        # Jobs whose round this store is giving back (finish, release), until the worker
        # forgets them: a heartbeat that no longer finds them ours is not a lost lease.
        self.ending: set[str] = set()
