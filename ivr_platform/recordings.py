"""Recordings of calls: the files under ``[media] recordings_dir``, a row each in
``recordings`` (migration set ``ivr_platform``), kept for the merchant's retention and then
deleted by :meth:`RecordingStore.expire` (the site runs :func:`expire_forever`).

    <recordings_dir>/<merchant>/<id>.wav

A recording is fetched with a link signed for it (:class:`LinkSigner`): HMAC-SHA256 over
the path and the expiry with the site's secret, so the link alone (in a notification, in
a browser) fetches the file until it expires, and nothing else.

With notification settings, storing a recording also queues a ``message_recorded``
notification to the merchant's channels that take it, in the row's transaction
(:mod:`ivr_platform.notify_outbox`); a recording stored to be transcribed queues it with
its transcript instead (:mod:`ivr_platform.transcribe_outbox`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import shutil
import uuid
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from ivr_platform.audio import wav_seconds
from ivr_platform.notify_config import Event, NotifySettings
from ivr_platform.notify_outbox import enqueue as enqueue_notification
from shared.db import CONNECTION_ERRORS
from shared.outbox import isoformat
from shared.phone import E164

log = logging.getLogger("ivr.recordings")

AUDIO_PATH = "/v1/recordings/{recording_id}/audio"
EXPIRE_BATCH = 500


@dataclass(frozen=True, slots=True)
class Recording:
    id: uuid.UUID
    merchant_id: str
    call_id: str | None
    callback_id: str | None
    edge_call_id: str | None
    file: str                 # relative to the store's directory
    duration_ms: int
    size_bytes: int
    created_at: datetime
    expires_at: datetime
    transcript: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "merchant_id": self.merchant_id, "call_id": self.call_id,
                "callback_id": self.callback_id, "edge_call_id": self.edge_call_id,
                "duration_ms": self.duration_ms, "size_bytes": self.size_bytes,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat(), "transcript": self.transcript}


#: NOTIFY channel: a recording waits for its transcript (at its commit)
TRANSCRIPTIONS = "recording_transcriptions"
_COLUMNS = ("id, merchant_id, call_id, callback_id, edge_call_id, file, duration_ms, "
            "size_bytes, created_at, expires_at, transcript")


def _recording(row: Mapping[str, Any]) -> Recording:
    return Recording(**dict(row))


class RecordingStore:
    def __init__(self, pool: asyncpg.Pool, directory: Path,
                 notify: NotifySettings | None = None) -> None:
        self.pool = pool
        self.directory = directory
        self.notify = notify

    def path(self, recording: Recording) -> Path:
        return self.directory / recording.file

    async def add(self, merchant_id: str, source: Path, *, retention: timedelta,
                  call_id: str | None = None, callback_id: str | None = None,
                  edge_call_id: str | None = None, transcript: str | None = None,
                  caller: E164 | None = None, transcribe: bool = False) -> Recording:
        """Move the WAV file ``source`` (what a call recorded) into the store for
        ``retention``; ValueError if it is not a WAV file (nothing moved). ``caller``
        (None: withheld or unknown) is what its notification shows. ``transcribe``: the
        transcription worker (:mod:`ivr_platform.transcribe_outbox`) transcribes it after
        the call and queues its notification then, with the transcript."""
        if retention <= timedelta(0):
            raise ValueError("retention must be positive")
        try:
            seconds = wav_seconds(source)
        except (EOFError, OSError, wave.Error) as exc:
            raise ValueError(f"{source}: not a readable WAV file: {exc}") from None
        recording_id = uuid.uuid4()
        relative = f"{merchant_id}/{recording_id}.wav"
        dest = self.directory / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, dest)
        created = datetime.now(UTC)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    f"INSERT INTO recordings ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                    f"$8, $9, $10, $11) RETURNING {_COLUMNS}",
                    recording_id, merchant_id, call_id, callback_id, edge_call_id, relative,
                    round(seconds * 1000), dest.stat().st_size, created, created + retention,
                    transcript)
                facts = {"caller": str(caller) if caller else None,
                         "at": isoformat(created), "recording_id": str(recording_id),
                         "edge_call_id": edge_call_id}
                if transcribe:      # the notification waits for the transcript
                    await conn.execute(
                        "INSERT INTO recording_transcriptions (recording_id, notify_facts) "
                        "VALUES ($1, $2)", recording_id,
                        facts if self.notify is not None else None)
                    await conn.execute("SELECT pg_notify($1, '')", TRANSCRIPTIONS)
                elif self.notify is not None:
                    await self.notify_recorded(conn, merchant_id, facts)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        assert row is not None
        return _recording(row)

    async def notify_recorded(self, conn: asyncpg.Connection, merchant_id: str,
                              facts: Mapping[str, Any]) -> None:
        """Inside the recording's (or its transcript's) transaction: its
        ``message_recorded`` notification, once per recording."""
        if self.notify is not None:
            await enqueue_notification(
                conn, self.notify, merchant_id=merchant_id, event=Event.MESSAGE_RECORDED,
                fact_key=f"recording:{facts['recording_id']}", facts=facts)

    async def get(self, merchant_id: str, recording_id: uuid.UUID) -> Recording | None:
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM recordings WHERE merchant_id = $1 AND id = $2 "
            "AND expires_at > now()", merchant_id, recording_id)
        return None if row is None else _recording(row)

    async def by_id(self, recording_id: uuid.UUID) -> Recording | None:
        """Any merchant's, not expired (for a signed link, which names no merchant)."""
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM recordings WHERE id = $1 AND expires_at > now()",
            recording_id)
        return None if row is None else _recording(row)

    async def list(self, merchant_id: str, *, limit: int = 100, offset: int = 0,
                   edge_call_id: str | None = None) -> list[Recording]:
        """Newest first; those of one call with ``edge_call_id``."""
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM recordings WHERE merchant_id = $1 AND expires_at > now() "
            "AND ($2::text IS NULL OR edge_call_id = $2) "
            "ORDER BY created_at DESC, id LIMIT $3 OFFSET $4",
            merchant_id, edge_call_id, limit, offset)
        return [_recording(r) for r in rows]

    async def set_transcript(self, merchant_id: str, recording_id: uuid.UUID,
                             transcript: str | None) -> Recording | None:
        row = await self.pool.fetchrow(
            f"UPDATE recordings SET transcript = $3 WHERE merchant_id = $1 AND id = $2 "
            f"RETURNING {_COLUMNS}", merchant_id, recording_id, transcript)
        return None if row is None else _recording(row)

    async def delete(self, merchant_id: str, recording_id: uuid.UUID) -> bool:
        """The row, then the file; False if the merchant has no such recording."""
        file = await self.pool.fetchval(
            "DELETE FROM recordings WHERE merchant_id = $1 AND id = $2 RETURNING file",
            merchant_id, recording_id)
        if file is None:
            return False
        (self.directory / file).unlink(missing_ok=True)
        return True

    async def expire(self, batch: int = EXPIRE_BATCH) -> int:
        """Delete the recordings past their ``expires_at``: the files, then the rows, in
        batches (a crash between leaves rows whose files are gone; the next run deletes
        them). Concurrent runs skip each other's rows. The number deleted."""
        deleted = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "SELECT id, file FROM recordings WHERE expires_at <= now() "
                    "ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED", batch)
                for row in rows:
                    (self.directory / row["file"]).unlink(missing_ok=True)
                await conn.execute("DELETE FROM recordings WHERE id = ANY($1::uuid[])",
                                   [row["id"] for row in rows])
            deleted += len(rows)
            if len(rows) < batch:
                return deleted


async def expire_forever(store: RecordingStore, every_s: float) -> None:
    """:meth:`RecordingStore.expire` now and every ``every_s`` seconds; a failed run is
    logged and tried again at the next."""
    while True:
        try:
            deleted = await store.expire()
        except (*CONNECTION_ERRORS, asyncpg.PostgresError, OSError) as exc:
            log.warning("deleting expired recordings failed (next in %.0f s): %s", every_s, exc)
        else:
            if deleted:
                log.info("deleted %d expired recordings", deleted)
        await asyncio.sleep(every_s)


# --- signed links ---------------------------------------------------------------------


class LinkRefused(Exception):
    """A link that does not fetch: ``error_id`` ``link-invalid`` or ``link-expired``."""

    def __init__(self, error_id: str, message: str) -> None:
        super().__init__(message)
        self.error_id = error_id


@dataclass(frozen=True, slots=True)
class SignedLink:
    path: str                 # path and query
    expires_at: datetime


class LinkSigner:
    """Links to a path valid until an instant: ``?expires=<unix s>&signature=<hex>``, the
    signature HMAC-SHA256 of ``f"{path}\\n{expires}"`` with the secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("a link secret has at least 32 bytes")
        self._secret = secret

    @classmethod
    def from_file(cls, path: Path | None) -> LinkSigner:
        """The secret in ``path``; None: a random one (links die with the process)."""
        if path is None:
            log.warning("no [media] link_secret_file: recording links are signed with a "
                        "secret of this process and stop working when it restarts")
            return cls(secrets.token_bytes(32))
        return cls(path.read_bytes())

    def signature(self, path: str, expires: int) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def link(self, path: str, expires_at: datetime) -> SignedLink:
        expires = int(expires_at.timestamp())
        return SignedLink(f"{path}?expires={expires}&signature={self.signature(path, expires)}",
                          datetime.fromtimestamp(expires, UTC))

    def verify(self, path: str, query: Mapping[str, str], now: datetime) -> None:
        """Nothing if the query signs ``path`` and has not expired; else
        :class:`LinkRefused` (a wrong signature first: a forged expiry is not news)."""
        expires_text = query.get("expires", "")
        signature = query.get("signature", "")
        if not (expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12):
            raise LinkRefused("link-invalid", "the link has no valid expires parameter")
        expires = int(expires_text)
        if not hmac.compare_digest(signature.encode(errors="replace"),
                                   self.signature(path, expires).encode()):
            raise LinkRefused("link-invalid", "the link's signature is not valid")
        if now.timestamp() >= expires:
            raise LinkRefused("link-expired", "the link has expired; ask for a new one")


def audio_path(recording_id: uuid.UUID) -> str:
    return AUDIO_PATH.format(recording_id=recording_id)


def link_for(signer: LinkSigner, recording: Recording, ttl: timedelta, now: datetime
             ) -> SignedLink:
    """A link to the recording's audio for ``ttl``, never past the recording's expiry."""
    return signer.link(audio_path(recording.id), min(now + ttl, recording.expires_at))
