"""Call notifications through a durable outbox (migration ``ivr_platform/0003``).

:func:`enqueue` runs inside the transaction that stores a fact (request info collected,
a recording stored): one ``notifications`` row (its facts as JSON, unique per fact) and
one ``notification_deliveries`` row per channel of the merchant that takes the event. No
channel configured: nothing is written. Nothing is sent there, so a channel that is down
never delays the call. A NOTIFY on ``notifications`` at commit wakes the worker.

:class:`NotificationWorker` (one per site process; several are safe) leases due
deliveries (``FOR UPDATE SKIP LOCKED``, ``attempts + 1``, ``leased_until``), builds each
notice (:class:`~ivr_platform.notify_compose.Composer`), sends it, and in one transaction
records the attempt and the result, only while its lease holds:

* sent: ``delivered`` (never claimed again);
* :class:`~ivr_platform.delivery.Unavailable` (transport, timeout, 408, 429, 5xx, SMTP
  4xx): ``pending`` again after the backoff, until ``max_attempts``, then ``parked``;
* :class:`~ivr_platform.delivery.Rejected` (another 4xx, SMTP 5xx): ``parked`` at once.

Parked deliveries are listed (:func:`deliveries`) and put back by :func:`requeue`.

Delivery is at least once: a process that dies after the destination took the message
and before the result is committed leaves the delivery ``pending``; once its lease runs
out it is sent again. The chat webhooks (Slack, Teams, Google Chat), Chatwork, LINE WORKS
and SMTP take no idempotency key, so that one message can arrive twice. Once the result is
committed it is never sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ivr_platform.claim_loop import CLAIM_BATCH, ClaimWorker
from ivr_platform.delivery import Rejected, Unavailable
from ivr_platform.metrics import ivr
from ivr_platform.notice import CallNotice, Notifier
from ivr_platform.notify_config import Event, NotifySettings
from shared.db import CONNECTION_ERRORS

log = logging.getLogger("ivr.notify")

#: NOTIFY channel: a notification was queued (at its commit)
CHANNEL = "notifications"


async def enqueue(conn: asyncpg.Connection, settings: NotifySettings, *, merchant_id: str,
                  event: Event, fact_key: str, facts: Mapping[str, Any]) -> int | None:
    """Inside the fact's transaction: the notification and its deliveries; its id, or
    None when no channel takes the event or the fact was notified before."""
    channels = settings.channels_for(merchant_id, event)
    if not channels:
        return None
    notification_id: int | None = await conn.fetchval(
        "INSERT INTO notifications (merchant_id, event, fact_key, facts) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (fact_key) DO NOTHING RETURNING id",
        merchant_id, event.value, fact_key, dict(facts))
    if notification_id is not None:
        await conn.executemany(
            "INSERT INTO notification_deliveries (notification_id, channel) VALUES ($1, $2)",
            [(notification_id, channel) for channel in channels])
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)   # delivered at commit
    return notification_id


def enqueue_ctes(first: int, source: str) -> str:
    """:func:`enqueue` as CTEs of the statement that writes the fact, for a statement that
    commits on its own: after a CTE ``source`` of one row (``merchant_id``, ``facts``:
    jsonb) when the fact happened, none when not, its parameters (:func:`enqueue_args`)
    from ``$first`` on. The statement must read :data:`ENQUEUED` (the wake-up is sent
    only then)."""
    event, fact_key, channels, channel = (f"${n}" for n in range(first, first + 4))
    return f"""notification AS (
        INSERT INTO notifications (merchant_id, event, fact_key, facts)
        SELECT merchant_id, {event}::text, {fact_key}::text, facts FROM {source}
        ON CONFLICT (fact_key) DO NOTHING RETURNING id),
    notification_deliveries_ AS (
        INSERT INTO notification_deliveries (notification_id, channel)
        SELECT n.id, c FROM notification n, unnest({channels}::text[]) c),
    notification_woken AS (SELECT pg_notify({channel}::text, '') FROM notification)"""


#: what :func:`enqueue_ctes` did, a column of its statement: the notification's id, or
#: NULL (the fact was notified before, or did not happen)
ENQUEUED = "(SELECT n.id FROM notification n, (SELECT count(*) FROM notification_woken) w) " \
    "AS notification_id"


def enqueue_args(settings: NotifySettings, *, merchant_id: str, event: Event,
                 fact_key: str) -> tuple[object, ...] | None:
    """:func:`enqueue_ctes`' parameters for the merchant's channels that take ``event``;
    None when none does (nothing to write)."""
    channels = settings.channels_for(merchant_id, event)
    if not channels:
        return None
    return (event.value, fact_key, list(channels), CHANNEL)


@dataclass(frozen=True, slots=True)
class Claimed:
    notification_id: int
    channel: str
    attempt: int              # counts every attempt of the delivery
    tries: int                # those since it was last requeued
    merchant_id: str
    event: Event
    facts: Mapping[str, Any]
    created_at: datetime


Compose = Callable[[Claimed], Awaitable[CallNotice]]


class NotificationWorker(ClaimWorker[Claimed]):
    def __init__(self, pool: asyncpg.Pool, settings: NotifySettings,
                 notifiers: Mapping[tuple[str, str], Notifier], compose: Compose, *,
                 owner: str) -> None:
        super().__init__(channel=CHANNEL, what="notification delivery",
                         poll_s=settings.poll_s, log=log)
        self.pool = pool
        self.settings = settings
        self.notifiers = notifiers     # (merchant, channel name) -> its adapter
        self.compose = compose
        self.owner = owner

    async def _claim(self) -> list[Claimed]:
        rows = await self.pool.fetch(
            """UPDATE notification_deliveries d
                  SET attempts = d.attempts + 1, leased_by = $1,
                      leased_until = now() + make_interval(secs => $2)
                 FROM notifications n
                WHERE n.id = d.notification_id
                  AND (d.notification_id, d.channel) IN (
                      SELECT notification_id, channel FROM notification_deliveries
                       WHERE state = 'pending' AND next_attempt_at <= now()
                         AND (leased_until IS NULL OR leased_until <= now())
                       ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
            RETURNING d.notification_id, d.channel, d.attempts, d.attempts_before,
                      n.merchant_id, n.event, n.facts, n.created_at""",
            self.owner, self.settings.lease_s, CLAIM_BATCH)
        return [Claimed(r["notification_id"], r["channel"], r["attempts"],
                        r["attempts"] - r["attempts_before"], r["merchant_id"],
                        Event(r["event"]), r["facts"], r["created_at"])
                for r in rows]

    async def _deliver(self, c: Claimed) -> None:
        notifier = self.notifiers.get((c.merchant_id, c.channel))
        if notifier is None:
            await self._record(c, "parked", "the channel is no longer configured")
            return
        try:
            await notifier.notify(await self.compose(c))
        except Rejected as exc:
            await self._record(c, "parked", str(exc))
        except Unavailable as exc:
            await self._record(c, "retry", str(exc))
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:   # composing it
            await self._record(c, "retry", f"database: {exc}")
        else:
            await self._record(c, "delivered", None)

    async def _record(self, c: Claimed, outcome: str, error: str | None) -> None:
        if outcome == "retry" and c.tries >= self.settings.max_attempts:
            outcome = "parked"
        state = {"retry": "pending"}.get(outcome, outcome)
        delay = self.settings.backoff(c.tries) if outcome == "retry" else 0.0
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.fetchval(
                """UPDATE notification_deliveries
                      SET state = $4, last_error = $5, leased_by = NULL, leased_until = NULL,
                          next_attempt_at = now() + make_interval(secs => $6),
                          finished_at = CASE WHEN $4 = 'pending' THEN NULL ELSE now() END
                    WHERE notification_id = $1 AND channel = $2 AND attempts = $3
                      AND leased_by = $7 AND state = 'pending'
                RETURNING true""",
                c.notification_id, c.channel, c.attempt, state, error, delay, self.owner)
            if not updated:   # the lease ran out and another worker took it
                log.warning("notification %d to %s: lease lost, result not recorded",
                            c.notification_id, c.channel)
                return
            await conn.execute(
                "INSERT INTO notification_attempts (notification_id, channel, attempt, "
                "outcome, error) VALUES ($1, $2, $3, $4, $5)",
                c.notification_id, c.channel, c.attempt, outcome, error)
        if outcome != "retry":
            channel = self.settings.channel(c.merchant_id, c.channel)
            kind = channel.kind.value if channel is not None else "unknown"
            ivr().notifications.labels(c.merchant_id, kind,
                                       "delivered" if outcome == "delivered" else "failed").inc()
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        log.log(level, "notification %d (%s, %s) to %s: %s%s", c.notification_id,
                c.merchant_id, c.event.value, c.channel, outcome,
                f" after attempt {c.attempt}: {error}" if error else "")


async def deliveries(pool: asyncpg.Pool, merchant_id: str, *, state: str | None = None,
                     limit: int = 100) -> list[dict[str, Any]]:
    """The merchant's deliveries (newest first), with their attempts."""
    rows = await pool.fetch(
        """SELECT d.notification_id, d.channel, d.state, d.attempts, d.next_attempt_at,
                  d.last_error, d.finished_at, n.event, n.created_at,
                  coalesce((SELECT jsonb_agg(jsonb_build_object(
                      'attempt', a.attempt, 'outcome', a.outcome, 'error', a.error,
                      'at', a.at) ORDER BY a.attempt) FROM notification_attempts a
                     WHERE a.notification_id = d.notification_id AND a.channel = d.channel),
                    '[]') AS attempt_log
             FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
            WHERE n.merchant_id = $1 AND ($2::text IS NULL OR d.state = $2)
            ORDER BY n.created_at DESC, d.notification_id DESC, d.channel LIMIT $3""",
        merchant_id, state, limit)
    return [{"notification_id": r["notification_id"], "channel": r["channel"],
             "event": r["event"], "state": r["state"], "attempts": r["attempts"],
             "last_error": r["last_error"], "created_at": r["created_at"].isoformat(),
             "next_attempt_at": (r["next_attempt_at"].isoformat()
                                 if r["state"] == "pending" else None),
             "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
             "attempt_log": r["attempt_log"]} for r in rows]


async def requeue(pool: asyncpg.Pool, merchant_id: str, notification_id: int,
                  channel: str) -> bool:
    """A parked delivery of the merchant pending again now (a fresh count of attempts);
    False if there is no such parked delivery."""
    done = await pool.fetchval(
        """UPDATE notification_deliveries d
              SET state = 'pending', attempts_before = d.attempts, next_attempt_at = now(),
                  finished_at = NULL
             FROM notifications n
            WHERE n.id = d.notification_id AND n.merchant_id = $1
              AND d.notification_id = $2 AND d.channel = $3 AND d.state = 'parked'
        RETURNING true""", merchant_id, notification_id, channel)
    return bool(done)
