"""Transcripts of recorded messages, made after the call: :class:`TranscriptionWorker`
(one per site process; several are safe) leases the ``recording_transcriptions`` rows a
recording stored with ``transcribe=True`` left pending (migration ``ivr_platform/0007``;
:class:`~ivr_platform.claim_loop.ClaimWorker` runs it, woken by NOTIFY at the recording's
commit), runs the :class:`~ivr_platform.transcribe.Transcriber` on the file (the engine in
its own process: the call and the event loop never wait for it), and in one transaction,
only while its lease holds, stores the transcript with the recording, marks the row
``done`` and queues the recording's ``message_recorded`` notification, which so carries
the transcript, and, for a recording made on a call-back, the transcript's link message to
the edge (kind ``recording_transcript``, :func:`forward_transcript`), which stores it with
the call's request data. An engine that cannot read the file marks it ``failed`` (``error``) and
the notification is queued without a transcript. A process that dies while transcribing
leaves the row pending: once its lease runs out it is transcribed again (the result is
recorded once).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from ivr_platform.claim_loop import CLAIM_BATCH, ClaimWorker
from ivr_platform.recordings import TRANSCRIPTIONS, RecordingStore
from ivr_platform.transcribe import Transcriber, TranscriptionError
from shared.outbox import EVENTS_PATH, Outbox, fact_message_id

log = logging.getLogger("ivr.transcribe")

LEASE_S = 600.0
POLL_S = 5.0
#: the link message kind (outbox ``kind`` and the body's ``kind``)
KIND = "recording_transcript"


@dataclass(frozen=True, slots=True)
class Claimed:
    recording_id: uuid.UUID
    attempt: int
    merchant_id: str
    file: str
    notify_facts: Mapping[str, Any] | None
    callback_id: str | None
    edge_call_id: str | None


class TranscriptionWorker(ClaimWorker[Claimed]):
    def __init__(self, store: RecordingStore, transcriber: Transcriber, *, owner: str,
                 lease_s: float = LEASE_S, poll_s: float = POLL_S) -> None:
        super().__init__(channel=TRANSCRIPTIONS, what="transcription", poll_s=poll_s,
                         log=log)
        self.store = store
        self.transcriber = transcriber
        self.owner = owner
        self.lease_s = lease_s

    async def _claim(self) -> list[Claimed]:
        rows = await self.store.pool.fetch(
            """UPDATE recording_transcriptions t
                  SET attempts = t.attempts + 1, leased_by = $1,
                      leased_until = now() + make_interval(secs => $2)
                 FROM recordings r
                WHERE r.id = t.recording_id AND t.recording_id IN (
                      SELECT recording_id FROM recording_transcriptions
                       WHERE state = 'pending'
                         AND (leased_until IS NULL OR leased_until <= now())
                       ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED)
            RETURNING t.recording_id, t.attempts, r.merchant_id, r.file, t.notify_facts,
                      r.callback_id, r.edge_call_id""",
            self.owner, self.lease_s, CLAIM_BATCH)
        return [Claimed(r["recording_id"], r["attempts"], r["merchant_id"], r["file"],
                        r["notify_facts"], r["callback_id"], r["edge_call_id"])
                for r in rows]

    async def _deliver(self, c: Claimed) -> None:
        try:
            text = await self.transcriber.transcribe(self.store.directory / c.file)
        except TranscriptionError as exc:
            await self._finish(c, None, str(exc))
        else:
            await self._finish(c, text or None, None)

    async def _finish(self, c: Claimed, transcript: str | None, error: str | None) -> None:
        async with self.store.pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                """UPDATE recording_transcriptions
                      SET state = $4, error = $5, leased_by = NULL, leased_until = NULL,
                          finished_at = now()
                    WHERE recording_id = $1 AND attempts = $2 AND leased_by = $3
                      AND state = 'pending' RETURNING true""",
                c.recording_id, c.attempt, self.owner, "failed" if error else "done", error)
            if not done:     # the lease ran out and another worker took it
                log.warning("transcript of %s: lease lost, not recorded", c.recording_id)
                return
            await conn.execute("UPDATE recordings SET transcript = $2 WHERE id = $1",
                               c.recording_id, transcript)
            if c.notify_facts is not None:
                await self.store.notify_recorded(conn, c.merchant_id, c.notify_facts)
            if transcript is not None and c.callback_id and c.edge_call_id:
                await forward_transcript(conn, c, transcript)
        if error:
            log.warning("recording %s: no transcript: %s", c.recording_id, error)
        else:
            log.info("recording %s transcribed (%d characters)", c.recording_id,
                     len(transcript or ""))


async def forward_transcript(conn: asyncpg.Connection, c: Claimed, transcript: str) -> str:
    """Queue the transcript of a call-back's recording for the edge, inside the caller's
    transaction; the message id is the recording's fact id, so it is queued once."""
    return await Outbox.enqueue(conn, kind=KIND, path=EVENTS_PATH, payload={
        "kind": KIND, "merchant_id": c.merchant_id, "callback_id": c.callback_id,
        "edge_call_id": c.edge_call_id, "recording_id": str(c.recording_id),
        "transcript": transcript,
    }, message_id=fact_message_id(KIND, str(c.recording_id)), merchant_id=c.merchant_id)
