"""Fan ARI events out to one queue per call, so each call runs in its own task.

The router is the only reader of ``AriClient.events()``. It never awaits ARI
itself, so a slow call task cannot stall the stream for the others::

    router = EventRouter(on_stasis_start=handle_call, on_connected=resync)
    runner = asyncio.create_task(router.run(client.events()))

    async def handle_call(start: StasisStart, queue: asyncio.Queue[Event]) -> None:
        ...                                   # one task per new inbound channel
        event = await queue.get()             # events for that channel, in order

* A ``StasisStart`` for a channel nobody subscribed to creates a queue and
  starts ``on_stasis_start(event, queue)`` as a task; the queue is released
  when that task ends.
* ``subscribe(channel_id)`` claims a channel *before* its events arrive (an
  originate, or a second leg the call task owns); pass ``queue=`` to merge
  several channels into one call's queue. The claimer calls ``release``.
* ``Connected`` goes to ``on_connected`` (run as a task) so the application
  can re-sync; events for channels nobody claims are logged and dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterable, Callable, Coroutine
from typing import Any

from shared.ari.events import Connected, Event, StasisStart, channel_ids

log = logging.getLogger("ari.router")

StasisStartHandler = Callable[[StasisStart, "asyncio.Queue[Event]"], Coroutine[Any, Any, None]]
ConnectedHandler = Callable[[Connected], Coroutine[Any, Any, None]]


class EventRouter:
    """Routes events to per-channel ``asyncio.Queue`` s."""

    def __init__(
        self,
        on_stasis_start: StasisStartHandler | None = None,
        on_connected: ConnectedHandler | None = None,
    ) -> None:
        self._on_stasis_start = on_stasis_start
        self._on_connected = on_connected
        self._queues: dict[str, asyncio.Queue[Event]] = {}
        self._observers: list[Callable[[Event], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def channel_ids(self) -> frozenset[str]:
        """Channels that currently have a queue."""
        return frozenset(self._queues)

    def subscribe(self, channel_id: str,
                  queue: asyncio.Queue[Event] | None = None) -> asyncio.Queue[Event]:
        """Route ``channel_id``'s events to ``queue`` (a new one if not given)."""
        q = queue if queue is not None else asyncio.Queue()
        self._queues[channel_id] = q
        return q

    def release(self, channel_id: str) -> None:
        """Stop routing ``channel_id``; later events for it are dropped."""
        self._queues.pop(channel_id, None)

    def observe(self, observer: Callable[[Event], None]) -> None:
        """Show ``observer`` every event before it is routed (synchronous, quick)."""
        self._observers.append(observer)

    def dispatch(self, event: Event) -> None:
        """Route one event (synchronous: never blocks the reader)."""
        for observer in self._observers:
            try:
                observer(event)
            except Exception:   # an observer never stops the routing
                log.exception("event observer failed")
        if isinstance(event, Connected):
            if self._on_connected is not None:
                self._spawn(self._on_connected(event), "on_connected")
            return
        ids = channel_ids(event)
        delivered = set()
        for cid in ids:
            queue = self._queues.get(cid)
            if queue is not None and id(queue) not in delivered:
                queue.put_nowait(event)
                delivered.add(id(queue))
        if delivered:
            return
        if isinstance(event, StasisStart) and self._on_stasis_start is not None:
            cid = event.channel.id
            queue = self.subscribe(cid)
            queue.put_nowait(event)
            task = self._spawn(self._on_stasis_start(event, queue), f"call {cid}")
            task.add_done_callback(functools.partial(self._release_if, cid, queue))
            return
        log.debug("unrouted %s for %s", type(event).__name__, ids or "-")

    async def run(self, events: AsyncIterable[Event]) -> None:
        """Consume ``events`` until cancelled; then cancel every call task (shutdown)."""
        try:
            async for event in events:
                self.dispatch(event)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def drain(self) -> None:
        """Wait for every spawned task to finish (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _release_if(self, channel_id: str, queue: asyncio.Queue[Event],
                    _task: asyncio.Task[None]) -> None:
        if self._queues.get(channel_id) is queue:
            del self._queues[channel_id]

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", name)

        def finished(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            coro.close()  # never started (cancelled first): no "never awaited" warning

        task = asyncio.get_running_loop().create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(finished)
        return task
