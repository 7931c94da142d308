"""The SMS worker: sends the ``pending`` rows of ``sms_messages`` (migration
``ivr_platform/0006``) with retries across restarts.

One per site process (several are safe). Like the notification outbox it leases due rows
(``FOR UPDATE SKIP LOCKED``, ``attempts + 1``, ``leased_until``;
:class:`~ivr_platform.claim_loop.ClaimWorker` runs it) and records each attempt's result
only while its lease holds:

* the provider took it: its id (the SID) and status; status callbacks move it on;
* :class:`~ivr_platform.delivery.Rejected`: ``rejected`` with the provider's error;
* :class:`~ivr_platform.delivery.Unavailable`: ``pending`` again after the backoff.

A message still not taken ``max_age_s`` after it was accepted is ``expired`` (never sent).

**Sent once.** Twilio's send takes no idempotency key, and a process can die (or a
timeout can cut the answer) after Twilio took the message and before its SID is recorded.
So an attempt is marked in doubt (``attempt_started_at``) before the provider is called
and cleared with its definite outcome; a row claimed in doubt is first looked up at the
provider (:meth:`~ivr_platform.sms_twilio.TwilioSms.find`: the same number, sender and
body, created since the doubtful attempt began less :data:`CLOCK_SLACK`, not a SID already
recorded): found, its SID is recorded and nothing is sent; not found, it is sent. A
look-up that fails is a retry like a send that fails. What remains: Twilio's list may
lag a message just created by a fraction of a second, and a message that was both sent
once and was 50 messages back to that number is not found; either way it is sent again
(at least once rather than lost).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from ivr_platform.claim_loop import CLAIM_BATCH, ClaimWorker
from ivr_platform.delivery import Rejected, Unavailable
from ivr_platform.metrics import ivr
from ivr_platform.sms import SmsStatus
from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_store import CHANNEL, SmsProvider, event
from ivr_platform.sms_twilio import Receipt
from shared.db import CONNECTION_ERRORS
from shared.phone import E164

log = logging.getLogger("ivr.sms")

CLOCK_SLACK = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    attempt: int
    in_doubt_since: datetime | None      # an earlier attempt's outcome is unknown
    expired: bool
    merchant_id: str
    to: E164
    sender: E164 | str
    body: str


class SmsWorker(ClaimWorker[Claimed]):
    def __init__(self, pool: asyncpg.Pool, provider: SmsProvider, settings: SmsSettings, *,
                 owner: str) -> None:
        super().__init__(channel=CHANNEL, what="SMS delivery", poll_s=settings.poll_s,
                         log=log)
        self.pool = pool
        self.provider = provider
        self.settings = settings
        self.owner = owner

    async def _claim(self) -> list[Claimed]:
        rows = await self.pool.fetch(
            """WITH due AS (
                   SELECT id, attempt_started_at FROM sms_messages
                    WHERE status = 'pending' AND provider = $4 AND next_attempt_at <= now()
                      AND (leased_until IS NULL OR leased_until <= now())
                    ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
               UPDATE sms_messages m
                  SET attempts = m.attempts + 1, leased_by = $1,
                      leased_until = now() + make_interval(secs => $2),
                      attempt_started_at = coalesce(m.attempt_started_at, now())
                 FROM due WHERE m.id = due.id
            RETURNING m.id, m.attempts, due.attempt_started_at AS in_doubt_since,
                      m.created_at + make_interval(secs => $5) <= now() AS expired,
                      m.merchant_id, m.to_number, m.sender, m.body""",
            self.owner, self.settings.lease_s, CLAIM_BATCH, self.provider.provider,
            self.settings.max_age_s)
        return [Claimed(r["id"], r["attempts"], r["in_doubt_since"], r["expired"],
                        r["merchant_id"], E164.parse(r["to_number"]),
                        _sender(r["sender"]), r["body"]) for r in rows]

    async def _deliver(self, c: Claimed) -> None:
        try:
            receipt = None
            if c.in_doubt_since is not None:
                receipt = await self.provider.find(c.to, c.sender, c.body,
                                                   c.in_doubt_since - CLOCK_SLACK,
                                                   await self._known(c.to))
                if receipt is not None:
                    log.info("sms %d: found at the provider as %s, not sent again", c.id,
                             receipt.provider_id)
            if receipt is None and c.expired:
                await self._expire(c)
                return
            if receipt is None:
                receipt = await self.provider.send(c.to, c.sender, c.body,
                                                   self.settings.status_callback_url)
        except Rejected as exc:
            await self._rejected(c, exc)
        except Unavailable as exc:
            await self._retry(c, str(exc))
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:   # the look-up's SIDs
            await self._retry(c, f"database: {exc}")
        else:
            await self._accepted(c, receipt)

    async def _known(self, to: E164) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT provider_id FROM sms_messages WHERE to_number = $1 AND provider = $2"
            " AND provider_id IS NOT NULL", str(to), self.provider.provider)
        return [r["provider_id"] for r in rows]

    async def _accepted(self, c: Claimed, receipt: Receipt) -> None:
        segments = await self._finish(c, "provider_id = $4, status = $5, error_code = $6, "
                                         "error_message = $7, last_error = NULL",
                                      receipt.status, receipt.error_code,
                                      receipt.provider_id, receipt.status.value,
                                      receipt.error_code, receipt.error_message)
        if segments is not None:             # taken by the provider (it bills them)
            ivr().sms.labels(c.merchant_id, "sent").inc()
            ivr().sms_segments.labels(c.merchant_id).inc(segments)
        log.info("sms %d to %s: %s as %s", c.id, c.to, receipt.status.value,
                 receipt.provider_id)

    async def _rejected(self, c: Claimed, exc: Rejected) -> None:
        code = exc.code if isinstance(exc.code, int) else None    # Twilio's are numbers
        if await self._finish(c, "status = 'rejected', error_code = $4, error_message = $5, "
                                 "last_error = $5", SmsStatus.REJECTED, code,
                              code, exc.message[:500]) is not None:
            ivr().sms.labels(c.merchant_id, "failed").inc()
        log.warning("sms %d to %s: rejected: %s", c.id, c.to, exc)

    async def _expire(self, c: Claimed) -> None:
        message = (f"not taken by the provider within {self.settings.max_age_s:g} s "
                   f"({c.attempt - 1} attempts)")
        if await self._finish(c, "status = 'expired', error_message = $4",
                              SmsStatus.EXPIRED, None, message) is not None:
            ivr().sms.labels(c.merchant_id, "failed").inc()
        log.warning("sms %d to %s: expired: %s", c.id, c.to, message)

    async def _finish(self, c: Claimed, assignments: str, status: SmsStatus,
                      error_code: int | None, *values: object) -> int | None:
        """A definite outcome, only while the lease holds: the row, and its event; the
        message's segments (None: the lease was lost, nothing recorded)."""
        async with self.pool.acquire() as conn, conn.transaction():
            segments: int | None = await conn.fetchval(
                f"""UPDATE sms_messages SET {assignments}, leased_by = NULL,
                           leased_until = NULL, attempt_started_at = NULL, updated_at = now()
                     WHERE id = $1 AND attempts = $2 AND leased_by = $3
                       AND status = 'pending' RETURNING segments""",
                c.id, c.attempt, self.owner, *values)
            if segments is None:
                log.warning("sms %d: lease lost, %s not recorded", c.id, status.value)
                return None
            await event(conn, c.id, status, error_code)
        return segments

    async def _retry(self, c: Claimed, error: str) -> None:
        """Again after the backoff; the attempt stays in doubt (a timeout or a cut
        connection may have reached the provider)."""
        done = await self.pool.fetchval(
            """UPDATE sms_messages SET last_error = $4, leased_by = NULL, leased_until = NULL,
                      next_attempt_at = now() + make_interval(secs => $5), updated_at = now()
                WHERE id = $1 AND attempts = $2 AND leased_by = $3 AND status = 'pending'
            RETURNING true""",
            c.id, c.attempt, self.owner, error[:500], self.settings.backoff(c.attempt))
        log.warning("sms %d to %s: attempt %d failed%s: %s", c.id, c.to, c.attempt,
                    "" if done else " (lease lost)", error)


def _sender(stored: str) -> E164 | str:
    """A number as it was given (E.164), or a Messaging Service SID."""
    return E164.parse(stored) if stored.startswith("+") else stored
