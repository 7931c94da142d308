"""Presence events to in-process subscribers: one ``LISTEN advisor_events`` connection
per process, fanned out to each subscriber of the event's merchant.

Each event is decoded and encoded once for all subscribers (:class:`Published`: the row
and its JSON text). A subscriber's queue is bounded; one that falls :data:`BACKLOG` events
behind is closed
(it gets ``None``) rather than let memory grow, and reconnects with the id of the last
event it saw (the SSE ``Last-Event-ID``): :func:`since` replays the rows after it. The
same happens to every subscriber when the LISTEN connection is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from advisors.live import CHANNEL, event_json

log = logging.getLogger("advisors.events")

BACKLOG = 1000
REPLAY_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Published:
    """One ``advisor_events`` row as every subscriber gets it: the row (``event_json``)
    and its JSON text (not ASCII-escaped)."""

    event: dict[str, Any]
    text: str

    @classmethod
    def of(cls, event: dict[str, Any]) -> Published:
        return cls(event, json.dumps(event, ensure_ascii=False))

    @property
    def id(self) -> int:
        event_id: int = self.event["id"]
        return event_id


Subscriber = asyncio.Queue[Published | None]


class EventHub:
    def __init__(self, db_url: str, reconnect_s: float = 1.0) -> None:
        self.db_url = db_url
        self.reconnect_s = reconnect_s
        self.listening = asyncio.Event()
        self._subscribers: dict[str, set[Subscriber]] = {}

    async def run(self) -> None:
        """Listen until cancelled. A lost connection is opened again, and every
        subscriber is closed meanwhile: what was published while nobody listened is
        replayed when they reconnect with the last id they saw."""
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self.db_url)
                try:
                    conn.add_termination_listener(lambda _, lost=lost: lost.set())
                    await conn.add_listener(CHANNEL, self._notified)
                    self.listening.set()
                    await lost.wait()
                    log.warning("advisor events: the LISTEN connection was lost")
                finally:
                    self.listening.clear()
                    self.close()
                    conn.terminate()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("advisor events: %s", exc)
            await asyncio.sleep(self.reconnect_s)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.dispatch(Published.of(json.loads(payload)))

    def dispatch(self, published: Published) -> None:
        merchant_id = published.event["merchant_id"]
        for queue in list(self._subscribers.get(merchant_id, ())):
            if queue.qsize() >= BACKLOG - 1:
                self._drop(merchant_id, queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(published)

    @contextmanager
    def subscribe(self, merchant_id: str) -> Iterator[Subscriber]:
        queue: Subscriber = asyncio.Queue(maxsize=BACKLOG)
        self._subscribers.setdefault(merchant_id, set()).add(queue)
        try:
            yield queue
        finally:
            self._drop(merchant_id, queue)

    def close(self) -> None:
        """End every subscription (the server is stopping)."""
        for subscribers in self._subscribers.values():
            for queue in subscribers:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(None)

    def _drop(self, merchant_id: str, queue: Subscriber) -> None:
        subscribers = self._subscribers.get(merchant_id, set())
        subscribers.discard(queue)
        if not subscribers:
            self._subscribers.pop(merchant_id, None)


async def since(pool: asyncpg.Pool, merchant_id: str, last_id: int) -> list[dict[str, Any]]:
    """The merchant's events after ``last_id`` (oldest first, at most REPLAY_LIMIT)."""
    rows = await pool.fetch(
        "SELECT * FROM advisor_events WHERE merchant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        merchant_id, last_id, REPLAY_LIMIT)
    return [event_json(r) for r in rows]
