"""SMS in PostgreSQL (migration set ``ivr_platform``) and the sender that uses it.

:class:`SmsSender` writes the row first (``pending``, with its encoding and segments),
then calls the provider, then records its answer: the provider's id and status, or
``rejected`` with its error. A provider that cannot be reached is asked again after each
of ``retry_after_s`` (the same row); after the last it leaves the row ``pending`` and
raises :class:`~ivr_platform.delivery.Unavailable`: sending it again after a restart (an
outbox) is not built yet. Status callbacks and fetches go
through :meth:`SmsStore.record_status`, which moves a status forward only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg

from ivr_platform.delivery import Rejected, Unavailable
from ivr_platform.sms import Encoding, SmsStatus, count
from ivr_platform.sms_twilio import Receipt
from shared.db import MigrationSet, package_migrations
from shared.phone import E164, NumberType

MAX_BODY = 1600
_SMS_NUMBER_TYPES = frozenset({NumberType.MOBILE, NumberType.FIXED_LINE_OR_MOBILE})


def migrations() -> MigrationSet:
    import ivr_platform

    return package_migrations("ivr_platform", ivr_platform.__file__)


class SmsProvider(Protocol):
    @property
    def provider(self) -> str: ...

    async def send(self, to: E164, sender: E164 | str, body: str,
                   status_callback: str | None = None) -> Receipt: ...


@dataclass(frozen=True, slots=True)
class SmsRecord:
    id: int
    merchant_id: str
    to: E164
    sender: str
    body: str
    encoding: Encoding
    segments: int
    provider: str
    provider_id: str | None
    status: SmsStatus
    error_code: int | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime


def check_message(to: E164, body: str) -> None:
    """ValueError unless ``to`` can receive an SMS (a valid mobile number) and ``body``
    is 1 to 1600 characters."""
    if not to.is_valid() or to.number_type not in _SMS_NUMBER_TYPES:
        raise ValueError(f"to: {to} is not a mobile number ({to.number_type})")
    if not body.strip():
        raise ValueError("body: empty")
    if len(body) > MAX_BODY:
        raise ValueError(f"body: at most {MAX_BODY} characters, got {len(body)}")


class SmsStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, merchant_id: str, to: E164, sender: str, body: str,
                     provider: str) -> int:
        counted = count(body)
        async with self._pool.acquire() as conn, conn.transaction():
            sms_id: int = await conn.fetchval(
                """INSERT INTO sms_messages (merchant_id, to_number, sender, body, encoding,
                                             segments, provider)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
                merchant_id, str(to), sender, body, counted.encoding.value, counted.segments,
                provider)
            await _event(conn, sms_id, SmsStatus.PENDING, None)
        return sms_id

    async def accepted(self, sms_id: int, receipt: Receipt) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE sms_messages SET provider_id = $2, status = $3, error_code = $4,
                          error_message = $5, updated_at = now() WHERE id = $1""",
                sms_id, receipt.provider_id, receipt.status.value, receipt.error_code,
                receipt.error_message)
            await _event(conn, sms_id, receipt.status, receipt.error_code)

    async def rejected(self, sms_id: int, error: Rejected) -> None:
        code = error.code if isinstance(error.code, int) else None   # Twilio's are numbers
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE sms_messages SET status = 'rejected', error_code = $2,
                          error_message = $3, updated_at = now() WHERE id = $1""",
                sms_id, code, error.message[:500])
            await _event(conn, sms_id, SmsStatus.REJECTED, code)

    async def record_status(self, provider: str, provider_id: str, status: SmsStatus,
                            error_code: int | None) -> SmsRecord | None:
        """Record a status the provider reported (None: no such message). The event is
        always kept; the message's status only moves forward."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, status FROM sms_messages WHERE provider = $1 AND provider_id = $2"
                " FOR UPDATE", provider, provider_id)
            if row is None:
                return None
            await _event(conn, row["id"], status, error_code)
            if status.rank > SmsStatus(row["status"]).rank:
                await conn.execute(
                    """UPDATE sms_messages SET status = $2,
                              error_code = coalesce($3, error_code), updated_at = now()
                       WHERE id = $1""", row["id"], status.value, error_code)
            sms_id: int = row["id"]
        return await self.get(sms_id)

    async def get(self, sms_id: int) -> SmsRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM sms_messages WHERE id = $1", sms_id)
        if row is None:
            return None
        return SmsRecord(
            id=row["id"], merchant_id=row["merchant_id"], to=E164.parse(row["to_number"]),
            sender=row["sender"], body=row["body"], encoding=Encoding(row["encoding"]),
            segments=row["segments"], provider=row["provider"], provider_id=row["provider_id"],
            status=SmsStatus(row["status"]), error_code=row["error_code"],
            error_message=row["error_message"], created_at=row["created_at"],
            updated_at=row["updated_at"])

    async def events(self, sms_id: int) -> list[tuple[SmsStatus, int | None]]:
        rows = await self._pool.fetch(
            "SELECT status, error_code FROM sms_events WHERE sms_id = $1 ORDER BY at", sms_id)
        return [(SmsStatus(r["status"]), r["error_code"]) for r in rows]


async def _event(conn: asyncpg.Connection, sms_id: int, status: SmsStatus,
                 error_code: int | None) -> None:
    await conn.execute("INSERT INTO sms_events (sms_id, status, error_code) VALUES ($1, $2, $3)",
                       sms_id, status.value, error_code)


class SmsSender:
    """A durable row, then the provider's call, then its answer recorded."""

    def __init__(self, store: SmsStore, provider: SmsProvider,
                 status_callback: str | None = None) -> None:
        self.store = store
        self.provider = provider
        self.status_callback = status_callback

    async def send(self, merchant_id: str, to: E164, sender: E164 | str, body: str, *,
                   retry_after_s: Sequence[float] = ()) -> SmsRecord:
        """One row, then the provider; when it is :class:`Unavailable` the same row is
        sent again after each of ``retry_after_s`` (then it stays ``pending`` and the last
        error is raised)."""
        check_message(to, body)
        sms_id = await self.store.create(merchant_id, to, str(sender), body,
                                         self.provider.provider)
        waits = list(retry_after_s)
        while True:
            try:
                receipt = await self.provider.send(to, sender, body, self.status_callback)
                break
            except Rejected as exc:
                await self.store.rejected(sms_id, exc)
                raise
            except Unavailable:
                if not waits:
                    raise
                await asyncio.sleep(waits.pop(0))
        await self.store.accepted(sms_id, receipt)
        record = await self.store.get(sms_id)
        assert record is not None
        return record
