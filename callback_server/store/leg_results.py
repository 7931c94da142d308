"""Legs' results (``originated``, ``answered``, ...) written together: group commit.

A call-back request reaches the callback site with its partner (the edge pairs them on
the link), the two are claimed together, and their legs are dialled a millisecond or two
apart; under load many rounds' legs are. Each leg's result was an UPDATE of its own, a
round trip and a commit each. :class:`LegResults` is a
:class:`~shared.intake_batch.Batcher`: the results that wait together go out as ONE
statement (an UPDATE from arrays, its own transaction), and each caller returns once it
has committed, as before (a rescue never re-dials a leg whose ``originated`` it saw).

How a batch forms: what is queued when a slot is free goes out at once, except that it
waits a little (``partner_wait_s``, a few milliseconds) for a partner that *is* coming:
a leg persisted moments ago (:meth:`LegResults.expect`, by the leg's persist) whose
result has not arrived yet, its originate on its way. A leg with no such partner never
waits; a partner whose originate failed is forgotten (:meth:`LegResults.forget`), and
one older than ``expect_s`` no longer counts.

Failures (:class:`~callback_server.store.grouped.GroupedWrites`): a lost connection fails
every caller of the batch with that error (the store's live-call retry,
:func:`shared.db.survives_database_restarts`, then writes each again); any other error has
each result of the batch written alone, so one bad result fails only its own caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from callback_server.store.grouped import GroupedWrites
from shared.db import holding
from shared.waits import within

#: the results of a batch as one UPDATE (the result of :func:`~callback_server.store.
#: leg_end.write_leg_result` for each channel id of ``$1``)
_RESULTS = """UPDATE callback_attempts a SET status = v.status,
                  cause = coalesce(v.cause, a.cause),
                  answered = a.answered OR v.status = 'answered',
                  answered_at = CASE WHEN v.status = 'answered'
                                     THEN coalesce(a.answered_at, now()) ELSE a.answered_at END,
                  updated_at = now()
              FROM unnest($1::text[], $2::text[], $3::int[]) AS v(channel_id, status, cause)
              WHERE a.channel_id = v.channel_id"""


@dataclass(frozen=True, slots=True)
class LegResult:
    channel_id: str
    status: str
    cause: int | None


@dataclass
class LegResults(GroupedWrites[LegResult]):
    """Group commit of legs' results (see the module docstring)."""

    kind: str = "leg_result"
    #: the longest a batch waits for a leg's result that is coming (:meth:`expect`)
    partner_wait_s: float = 0.003
    #: a leg persisted longer ago than this is no longer waited for
    expect_s: float = 0.25
    #: legs persisted whose result has not come: when each was persisted (loop time)
    _expected: dict[str, float] = field(default_factory=dict, init=False)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    #: batches that waited for a partner, and those whose partner came in time
    waited: int = field(default=0, init=False)
    joined: int = field(default=0, init=False)

    def expect(self, channel_id: str) -> None:
        """``channel_id``'s leg is persisted and about to be originated: its result is
        coming (a batch formed meanwhile may wait a little for it)."""
        self._expected[channel_id] = asyncio.get_running_loop().time()

    def forget(self, channel_id: str) -> None:
        """``channel_id``'s result is not coming (its originate failed, or it ended)."""
        if self._expected.pop(channel_id, None) is not None:
            self._arrived.set()

    async def record(self, channel_id: str, status: str, cause: int | None) -> None:
        """Write the leg's result; returns once it has committed."""
        self._expected.pop(channel_id, None)
        self._arrived.set()
        with holding("leg_result"):     # a running call's write (the batch's task inherits it)
            await self.deliver(f"{channel_id} {status}", LegResult(channel_id, status, cause))

    def _coming(self, now: float) -> bool:
        """Whether a leg's result is on its way (its leg persisted lately, not queued)."""
        stale = [cid for cid, at in self._expected.items() if now - at > self.expect_s]
        for cid in stale:
            del self._expected[cid]
        return bool(self._expected)

    async def _fill(self) -> None:
        """Wait up to ``partner_wait_s`` while a leg's result is coming (:meth:`expect`)
        and the batch is not full; never for one that is not."""
        loop = asyncio.get_running_loop()
        if not self._coming(loop.time()):
            return
        self.waited += 1
        until = loop.time() + self.partner_wait_s
        queued = len(self._queue)
        while len(self._queue) < self.max_batch and self._coming(loop.time()) \
                and (left := until - loop.time()) > 0:
            self._arrived.clear()
            await within(self._arrived.wait(), left)
        if len(self._queue) > queued:
            self.joined += 1

    async def write(self, conn: asyncpg.Connection, batch: Sequence[tuple[str, LegResult]]
                    ) -> Mapping[str, None]:
        results = sorted(batch, key=lambda kv: kv[1].channel_id)   # one lock order
        channels = [r.channel_id for _, r in results]
        if len(set(channels)) == len(channels):
            await conn.execute(_RESULTS, channels, [r.status for _, r in results],
                               [r.cause for _, r in results])
        else:       # one leg's two results: each its own statement, in arrival order
            for _, r in batch:
                await conn.execute(_RESULTS, [r.channel_id], [r.status], [r.cause])
        return dict.fromkeys((key for key, _ in batch), None)
