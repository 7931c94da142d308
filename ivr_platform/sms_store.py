"""SMS in PostgreSQL (migration set ``ivr_platform``).

A message accepted for sending is a row (:func:`enqueue` inside the caller's transaction,
or :class:`SmsSender`): ``pending``, with its encoding and segments. The SMS worker
(:mod:`ivr_platform.sms_outbox`) sends it and records the provider's answer. Status
callbacks and fetches go through :meth:`SmsStore.record_status`, which moves a status
forward only.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg

from ivr_platform.sms import Encoding, SmsStatus, count
from ivr_platform.sms_twilio import Receipt
from shared.db import MigrationSet, package_migrations
from shared.phone import E164, NumberType

MAX_BODY = 1600
#: NOTIFY channel: a message was queued (at its commit)
CHANNEL = "sms_messages"
_SMS_NUMBER_TYPES = frozenset({NumberType.MOBILE, NumberType.FIXED_LINE_OR_MOBILE})


def migrations() -> MigrationSet:
    import ivr_platform

    return package_migrations("ivr_platform", ivr_platform.__file__)


class SmsProvider(Protocol):
    @property
    def provider(self) -> str: ...

    async def send(self, to: E164, sender: E164 | str, body: str,
                   status_callback: str | None = None) -> Receipt: ...

    async def find(self, to: E164, sender: E164 | str, body: str, since: datetime,
                   known: Collection[str]) -> Receipt | None: ...


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
        async with self._pool.acquire() as conn, conn.transaction():
            return await enqueue(conn, merchant_id, to, sender, body, provider)

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
            await event(conn, row["id"], status, error_code)
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


async def enqueue(conn: asyncpg.Connection, merchant_id: str, to: E164, sender: str,
                  body: str, provider: str) -> int:
    """Inside the caller's transaction: the message's row, ``pending`` and due now (the
    SMS worker, woken by NOTIFY at the commit, sends it); its id. ValueError as
    :func:`check_message`."""
    check_message(to, body)
    counted = count(body)
    sms_id: int = await conn.fetchval(
        """INSERT INTO sms_messages (merchant_id, to_number, sender, body, encoding, segments,
                                     provider)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        merchant_id, str(to), sender, body, counted.encoding.value, counted.segments, provider)
    await event(conn, sms_id, SmsStatus.PENDING, None)
    await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return sms_id


async def event(conn: asyncpg.Connection, sms_id: int, status: SmsStatus,
                error_code: int | None) -> None:
    await conn.execute("INSERT INTO sms_events (sms_id, status, error_code) VALUES ($1, $2, $3)",
                       sms_id, status.value, error_code)


class SmsSender:
    """Accepts a message for sending: its durable row (the SMS worker delivers it)."""

    def __init__(self, store: SmsStore, provider: str) -> None:
        self.store = store
        self.provider = provider

    async def send(self, merchant_id: str, to: E164, sender: E164 | str,
                   body: str) -> SmsRecord:
        """The message's row, ``pending``; ValueError for a message no phone can take."""
        check_message(to, body)
        sms_id = await self.store.create(merchant_id, to, str(sender), body, self.provider)
        record = await self.store.get(sms_id)
        assert record is not None
        return record
