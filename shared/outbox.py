"""Transactional outbox: nothing acknowledged is lost, nothing is sent twice in effect.

A message is written to the sender's database in the same transaction as the
fact it reports (:meth:`Outbox.enqueue`), then :class:`OutboxRelay` delivers it
over the :class:`~shared.link.LinkClient` until the peer acknowledges it. The
message id is fixed at enqueue time, so a retry is a duplicate that the
receiver recognises (:func:`shared.link.accept_once`).

A message may be written *held*: durable, but not to be sent yet (the edge
holds a call-back request until the caller has hung up). :meth:`Outbox.release`
makes it sendable; :meth:`Outbox.release_stale` is the crash-recovery sweep.

The relay is event-driven: a trigger NOTIFYs ``outbox`` when a message becomes
sendable, and the relay wakes at once. Besides that it sleeps until the next
retry is due (at most ``sweep_s``), so a lost notification delays a message by
at most that much. Retries back off exponentially up to ``max_backoff_s`` and
never give up: a message the peer refuses as invalid (4xx other than 401/403/
408/409/429) is parked as dead and logged as an error instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import listening
from shared.link import LinkClient, LinkRejected, LinkUnavailable

log = logging.getLogger("shared.outbox")

NOTIFY_CHANNEL = "outbox"
_RETRYABLE_4XX = frozenset({401, 403, 408, 409, 425, 429})


def encode(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes that will be signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class Outbox:
    """Writes messages; used inside the caller's transaction."""

    @staticmethod
    async def enqueue(conn: asyncpg.Connection, *, kind: str, path: str,
                      payload: Mapping[str, Any], message_id: str | None = None,
                      merchant_id: str | None = None, held: bool = False) -> str:
        mid = message_id or str(uuid.uuid4())
        await conn.execute(
            "INSERT INTO outbox (message_id, kind, path, body, merchant_id, held) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
            uuid.UUID(mid), kind, path, encode(payload), merchant_id, held)
        return mid

    @staticmethod
    async def release(conn: asyncpg.Connection, message_id: str) -> bool:
        """Make a held message sendable now. False if it was not held."""
        result: str = await conn.execute(
            "UPDATE outbox SET held = false, released_at = now(), next_attempt_at = now() "
            "WHERE message_id = $1 AND held", uuid.UUID(message_id))
        return result.endswith(" 1")

    @staticmethod
    async def discard(conn: asyncpg.Connection, message_id: str) -> bool:
        """Drop a message that is still held (its fact was cancelled). False if not held."""
        result: str = await conn.execute(
            "DELETE FROM outbox WHERE message_id = $1 AND held", uuid.UUID(message_id))
        return result.endswith(" 1")

    @staticmethod
    async def release_stale(conn: asyncpg.Connection, older_than_s: int) -> int:
        """Release messages held for longer than ``older_than_s`` (crash recovery)."""
        result: str = await conn.execute(
            "UPDATE outbox SET held = false, released_at = now(), next_attempt_at = now() "
            "WHERE held AND created_at < now() - $1 * interval '1 second'", older_than_s)
        return int(result.split()[-1])


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    held: int
    dead: int
    oldest_pending_s: float | None


class OutboxRelay:
    """Delivers pending messages. Several relays (processes) may run at once."""

    def __init__(self, pool: asyncpg.Pool, db_url: str, client: LinkClient, *, owner: str,
                 batch: int = 64, lease_s: int = 30, max_backoff_s: int = 60,
                 sweep_s: float = 5.0, alert_after_s: int = 300) -> None:
        self.pool = pool
        self.db_url = db_url
        self.client = client
        self.owner = owner
        self.batch = batch
        self.lease_s = lease_s
        self.max_backoff_s = max_backoff_s
        self.sweep_s = sweep_s
        self.alert_after_s = alert_after_s
        self.delivered = 0
        self._last_alert = 0.0

    async def run(self) -> None:
        """Run until cancelled, surviving database restarts."""
        while True:
            try:
                async with listening(self.db_url, NOTIFY_CHANNEL) as wakeups:
                    await self._loop(wakeups)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox relay lost the database (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _loop(self, wakeups: asyncio.Queue[str]) -> None:
        while True:
            while not wakeups.empty():
                wakeups.get_nowait()
            sent = await self.pass_once()
            if sent >= self.batch:
                continue  # more may be waiting
            wait = await self._seconds_to_next_due()
            try:
                await asyncio.wait_for(wakeups.get(), timeout=wait)
            except TimeoutError:
                pass

    async def _seconds_to_next_due(self) -> float:
        due = await self.pool.fetchval(
            "SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now())) FROM outbox "
            "WHERE delivered_at IS NULL AND dead_at IS NULL AND NOT held")
        if due is None:
            return self.sweep_s
        return max(0.0, min(self.sweep_s, float(due)))

    async def pass_once(self) -> int:
        """Claim due messages and deliver them concurrently. Returns how many were claimed."""
        rows = await self.pool.fetch(
            """UPDATE outbox SET lease_owner = $1,
                      lease_expires_at = now() + $2 * interval '1 second',
                      attempts = attempts + 1
               WHERE message_id IN (
                   SELECT message_id FROM outbox
                   WHERE delivered_at IS NULL AND dead_at IS NULL AND NOT held
                     AND next_attempt_at <= now()
                     AND (lease_expires_at IS NULL OR lease_expires_at < now())
                   ORDER BY next_attempt_at
                   LIMIT $3
                   FOR UPDATE SKIP LOCKED)
               RETURNING message_id, kind, path, body, attempts, created_at""",
            self.owner, self.lease_s, self.batch)
        if rows:
            await asyncio.gather(*(self._deliver(r) for r in rows))
        await self._maybe_alert()
        return len(rows)

    async def _deliver(self, row: asyncpg.Record) -> None:
        mid = str(row["message_id"])
        try:
            result = await self.client.post(row["path"], bytes(row["body"]), mid)
        except LinkRejected as exc:
            if exc.status in _RETRYABLE_4XX:
                await self._retry(row, f"HTTP {exc.status}: {exc.body}")
            else:
                log.error("peer refused %s message %s as invalid (HTTP %s): %s; parked as dead",
                          row["kind"], mid, exc.status, exc.body)
                await self.pool.execute(
                    "UPDATE outbox SET dead_at = now(), response_status = $2, "
                    "response_body = $3, lease_owner = NULL WHERE message_id = $1",
                    row["message_id"], exc.status, _as_object(exc.body))
            return
        except LinkUnavailable as exc:
            await self._retry(row, str(exc))
            return
        await self.pool.execute(
            "UPDATE outbox SET delivered_at = now(), response_status = $2, response_body = $3, "
            "last_route = $4, lease_owner = NULL, last_error = NULL WHERE message_id = $1",
            row["message_id"], result.status, _as_object(result.body), result.route)
        self.delivered += 1
        log.debug("delivered %s %s via %s in %.1f ms", row["kind"], mid, result.route,
                  result.elapsed_s * 1000)

    async def _retry(self, row: asyncpg.Record, error: str) -> None:
        attempts = int(row["attempts"])
        backoff = min(self.max_backoff_s, 0.5 * 2 ** min(attempts, 16))
        backoff *= random.uniform(0.8, 1.2)
        log.warning("delivery of %s %s failed (attempt %d, next in %.1f s): %s",
                    row["kind"], row["message_id"], attempts, backoff, error[:300])
        await self.pool.execute(
            "UPDATE outbox SET next_attempt_at = now() + $2 * interval '1 millisecond', "
            "last_error = $3, lease_owner = NULL, lease_expires_at = NULL "
            "WHERE message_id = $1", row["message_id"], int(backoff * 1000), error[:1000])

    async def stats(self) -> OutboxStats:
        row = await self.pool.fetchrow(
            """SELECT count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL
                                       AND NOT held) AS pending,
                      count(*) FILTER (WHERE held AND delivered_at IS NULL) AS held,
                      count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,
                      EXTRACT(EPOCH FROM now() - min(created_at) FILTER (
                          WHERE delivered_at IS NULL AND dead_at IS NULL AND NOT held))
                          AS oldest
               FROM outbox""")
        assert row is not None
        oldest = row["oldest"]
        return OutboxStats(int(row["pending"]), int(row["held"]), int(row["dead"]),
                           None if oldest is None else float(oldest))

    async def _maybe_alert(self) -> None:
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._last_alert < 60:
            return
        self._last_alert = loop_now
        stats = await self.stats()
        if stats.oldest_pending_s is not None and stats.oldest_pending_s > self.alert_after_s:
            log.error("ALERT outbox: %d messages pending, oldest %.0f s old (threshold %d s)",
                      stats.pending, stats.oldest_pending_s, self.alert_after_s)


def _as_object(body: Any) -> dict[str, Any]:
    return body if isinstance(body, dict) else {"body": body}


def isoformat(value: datetime | None) -> str | None:
    """Timestamps on the wire: ISO 8601 UTC with milliseconds and a Z."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
