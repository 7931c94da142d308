"""Intake: call-back requests the edge sends, stored once each with their answers.

A batch of requests is one transaction (:meth:`IntakeStore.intake_batch`): the message
ids with their answers, the request rows (queued, or refused by the guard with its
reason, which the edge hears through the outbox) and their NOTIFY to the workers.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from callback_server.guard.reasons import Verdict
from callback_server.schemas import IntakeRequest
from callback_server.store.base import StoreBase
from shared.config import Merchant
from shared.link import Answer
from shared.outbox import EVENTS_PATH, Outbox, fact_message_id, isoformat

if TYPE_CHECKING:
    from callback_server.guard.service import IntakeScreen

log = logging.getLogger("callback.store")


def new_callback_id() -> str:
    """``cb-`` and 128 random bits in hex (one for every request that arrives)."""
    return "cb-" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Intake:
    """A call-back request on its way in: what the edge sent, for which merchant."""

    req: IntakeRequest
    merchant: Merchant


class IntakeStore(StoreBase):
    """Merchants and call-back requests in; a request's status out."""

    # --- merchants ----------------------------------------------------------------------

    async def sync_merchants(self, merchants: Sequence[Merchant]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for m in merchants:
                await conn.execute(
                    """INSERT INTO merchants (merchant_id, name, callback_caller_id,
                           pre_callback_delay_s, max_attempts, retry_backoff_s, ring_timeout_s,
                           ivr_flow, operator, inbound_tariff, synced_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())
                       ON CONFLICT (merchant_id) DO UPDATE SET name = $2,
                           callback_caller_id = $3, pre_callback_delay_s = $4,
                           max_attempts = $5, retry_backoff_s = $6, ring_timeout_s = $7,
                           ivr_flow = $8, operator = $9, inbound_tariff = $10, synced_at = now()
                    """, m.id, m.name, str(m.callback_caller_id), m.pre_callback_delay_s,
                    m.max_attempts, list(m.retry_backoff_s), m.ring_timeout_s, m.ivr_flow,
                    m.operator, m.inbound_tariff)

    # --- intake -------------------------------------------------------------------------

    async def intake(self, message_id: str, req: IntakeRequest, merchant: Merchant) -> Answer:
        """Store one call-back request (a batch of one, see :meth:`intake_batch`)."""
        batch = [(message_id, Intake(req, merchant))]
        async with self.pool.acquire() as conn:
            try:
                answers = await self.intake_batch(conn, batch)
            except MessageRace:  # stored meanwhile: now it is a repeat
                answers = await self.intake_batch(conn, batch)
        return answers[message_id]

    async def intake_batch(self, conn: asyncpg.Connection,
                           batch: Sequence[tuple[str, Intake]]) -> dict[str, Answer]:
        """Store call-back requests once each; answer ``202 {callback_id, status}``.

        One transaction for the whole batch (message ids distinct): the message ids
        (``inbound_messages``, with their answers), the request rows and their
        NOTIFY (trigger; delivered at commit). A message id already stored gets its
        first answer; a new message for a known ``edge_call_id`` (stored, or
        earlier in the batch) gets that call-back and queues nothing.

        With a guard, every number is screened in the transaction (policy,
        lists, lock, velocity, brake) under per-number advisory locks, requests
        in message-id order, each judged as if the earlier ones were stored; a
        refusal stores the row as ``refused`` with its reason code, tells the
        edge (``callback_status`` ``failed`` + reason) and answers ``202
        {callback_id, status: "refused", reason}``.

        Four round trips per batch, whatever its size (migration 0400): BEGIN;
        ``callback_intake_open``: the number locks, then the stored message ids,
        the known edge calls and the guard's facts; the statement that stores the
        batch; COMMIT. Plus three per refusal.

        Logs one INFO line per commit (how many messages, by status), not one per
        request: the rows are the record, and a line per request with the caller's
        number costs the intake about a tenth of its CPU at full rate (the HTTP
        handler logs each request at DEBUG).

        Raises :class:`MessageRace` (nothing stored) when another transaction
        stored one of the message ids meanwhile: only possible for numbers not
        locked in common, so without a guard; run the batch again.
        """
        guard = self.guard
        now, brake_since = guard.intake_window() if guard is not None else (None, None)
        async with conn.transaction():
            started = time.perf_counter()
            rows = await conn.fetch(
                "SELECT kind, key, answer_status, answer, facts"
                " FROM callback_intake_open($1, $2, $3, $4, $5)",
                [mid for mid, _ in batch], [item.req.edge_call_id for _, item in batch],
                None if guard is None else [str(item.req.caller) for _, item in batch],
                now, brake_since)
            load_s = time.perf_counter() - started
            stored: dict[str, Answer] = {}
            calls: dict[str, Answer] = {}
            facts = []
            for row in rows:
                if row["kind"] == "message":
                    stored[row["key"]] = (row["answer_status"], _json(row["answer"]))
                elif row["kind"] == "call":
                    calls[row["key"]] = (202, _answer(_json(row["answer"])))
                else:
                    facts.append(row["facts"])
            screen = None if guard is None or now is None \
                else guard.intake_screen(now, facts, load_s)
            fresh = [(mid, item) for mid, item in batch if mid not in stored]
            answers = await self._decide_and_store(conn, fresh, calls, screen) if fresh else {}
        if answers:
            log.info("stored %d call-back request messages in one commit: %s", len(answers),
                     dict(Counter(body.get("status") for _, body in answers.values())))
        if stored:
            log.info("duplicate callback_request messages %s: returning the first answers",
                     ", ".join(stored))
            answers.update(stored)
        return answers

    async def _decide_and_store(self, conn: asyncpg.Connection,
                                fresh: Sequence[tuple[str, Intake]], calls: dict[str, Answer],
                                screen: IntakeScreen | None) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        new: list[_NewRequest] = []
        for mid, item in fresh:
            req = item.req
            known_call = calls.get(req.edge_call_id)
            if known_call is not None:  # a repeat of a known edge call: its call-back
                answers[mid] = known_call
                continue
            known_number = False
            if screen is not None:
                screening = screen.screen(req.caller)
                if screening.verdict is not None:
                    answers[mid] = calls[req.edge_call_id] = await self._refuse(
                        conn, mid, req, item.merchant, screening.verdict)
                    continue
                known_number = screening.known
                screen.accepted(req.caller)
            request = _NewRequest(mid, item, new_callback_id(), known_number)
            new.append(request)
            answers[mid] = calls[req.edge_call_id] = request.answer
        await self._store_batch(conn, new, answers, None if screen is None else screen.now)
        return answers

    async def _store_batch(self, conn: asyncpg.Connection, new: Sequence[_NewRequest],
                           answers: dict[str, Answer], screened_at: datetime | None) -> None:
        """The message ids with every answer of the batch, the new request rows and (when
        ``screened_at``) the guard's counts of them, in one statement."""
        row = await conn.fetchrow(_STORE_BATCH, *_request_columns(new),
                                  *_answer_columns(answers), [n.known for n in new],
                                  screened_at)
        assert row is not None
        raced = answers.keys() - set(row["claimed"])
        if raced:
            raise MessageRace(sorted(raced))
        queued = set(row["queued"])
        lost = {n.callback_id: n.item.req.edge_call_id for n in new
                if n.callback_id not in queued}
        if lost:  # stored meanwhile by another transaction (only without the guard's locks)
            stored = {r["edge_call_id"]: (202, _answer(r)) for r in await conn.fetch(
                "SELECT edge_call_id, callback_id, status, reason FROM callback_requests"
                " WHERE edge_call_id = ANY($1::text[])", list(lost.values()))}
            fixed = {mid: stored[lost[body["callback_id"]]] for mid, (_, body) in answers.items()
                     if body.get("callback_id") in lost}
            log.info("edge calls %s already had call-backs", ", ".join(lost.values()))
            answers.update(fixed)
            await conn.execute(_UPDATE_ANSWERS, *_answer_columns(fixed))
        if self.guard is not None and screened_at is not None:
            self.guard.accepted(len(queued))

    async def _refuse(self, conn: asyncpg.Connection, message_id: str, req: IntakeRequest,
                      merchant: Merchant, verdict: Verdict) -> Answer:
        """Keep the refused request (status ``refused`` + reason code) and tell the edge
        (``callback_status`` ``failed`` with that reason); nothing is queued."""
        row = await conn.fetchrow(
            """INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller,
                   dialed, announce_mode, received_at, hungup_at, message_id, max_attempts,
                   next_attempt_at, status, reason, finished_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), 'refused', $11, now())
               ON CONFLICT (edge_call_id) DO NOTHING
               RETURNING callback_id, status, reason, finished_at""",
            new_callback_id(), req.edge_call_id, merchant.id, str(req.caller), req.dialed,
            req.announce_mode, req.received_at, req.hungup_at, message_id,
            merchant.max_attempts, str(verdict.reason))
        if row is None:
            existing = await conn.fetchrow(
                "SELECT callback_id, status, reason FROM callback_requests "
                "WHERE edge_call_id = $1", req.edge_call_id)
            assert existing is not None
            return 202, _answer(existing)
        assert self.guard is not None
        await self.guard.refused(conn, verdict, stage="intake", number=str(req.caller),
                            merchant_id=merchant.id, callback_id=row["callback_id"],
                            edge_call_id=req.edge_call_id, message_id=message_id)
        await Outbox.enqueue(conn, kind="callback_status", path=EVENTS_PATH, payload={
            "kind": "callback_status", "callback_id": row["callback_id"],
            "edge_call_id": req.edge_call_id, "merchant_id": merchant.id,
            "status": "failed", "reason": str(verdict.reason), "attempts": 0,
            "at": isoformat(row["finished_at"]),
        }, message_id=fact_message_id("callback_status", row["callback_id"]),
            merchant_id=merchant.id)
        return 202, _answer(row)

    async def get(self, callback_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            """SELECT callback_id, edge_call_id, merchant_id, caller, status, reason, attempts,
                      max_attempts, received_at, accepted_at, next_attempt_at, finished_at
               FROM callback_requests WHERE callback_id = $1""", callback_id)
        if row is None:
            return None
        legs = await self.pool.fetch(
            """SELECT channel_id, attempt_no, leg, carrier_id, status, cause, created_at
               FROM callback_attempts WHERE callback_id = $1 ORDER BY leg_seq""", callback_id)
        flows = await self.pool.fetch(
            """SELECT attempt_no, flow_name AS ivr_flow, version AS ivr_flow_version,
                      started_at
               FROM callback_round_flows WHERE callback_id = $1 ORDER BY attempt_no""",
            callback_id)
        out = {k: (isoformat(v) if isinstance(v, datetime) else v) for k, v in row.items()}
        for key, rows in (("legs", legs), ("flows", flows)):
            out[key] = [{k: (isoformat(v) if isinstance(v, datetime) else v)
                         for k, v in r.items()} for r in rows]
        return out


@dataclass(frozen=True, slots=True)
class _NewRequest:
    message_id: str
    item: Intake
    callback_id: str
    known: bool        # the guard knows the number (confirmed before, or allow-listed)

    @property
    def answer(self) -> Answer:
        return 202, {"callback_id": self.callback_id, "status": "queued"}


class MessageRace(RuntimeError):
    """Another transaction stored some of a batch's message ids meanwhile (the batch was
    rolled back; run it again, and they are repeats)."""

    def __init__(self, message_ids: Sequence[str]) -> None:
        super().__init__(f"message ids stored meanwhile: {', '.join(message_ids)}")
        self.message_ids = message_ids


_UPDATE_ANSWERS = """
UPDATE inbound_messages m SET response_status = a.status, response_body = a.body::jsonb
FROM unnest($1::text[], $2::int[], $3::text[]) AS a(message_id, status, body)
WHERE m.message_id = a.message_id"""

# $1-$11 the new requests (_request_columns), $12-$14 every answer of the batch
# (_answer_columns), $15 the guard knows each new request's number, $16 when the guard
# screened them (NULL: not screened, not counted). The pre-call-back delay counts from the
# hang-up, or from when the edge received the call if it sent no hang-up time.
_STORE_BATCH = """
WITH claimed AS (
    INSERT INTO inbound_messages (message_id, kind, response_status, response_body)
    SELECT message_id, 'callback_request', status, body::jsonb
    FROM unnest($12::text[], $13::int[], $14::text[]) AS a(message_id, status, body)
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id),
queued AS (
    INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller, dialed,
        announce_mode, received_at, hungup_at, message_id, max_attempts, next_attempt_at)
    SELECT callback_id, edge_call_id, merchant_id, caller, dialed, announce_mode,
           received_at, hungup_at, message_id, max_attempts,
           least(now() + delay_s * interval '1 second',
                 greatest(now(), coalesce(hungup_at, received_at)
                                 + delay_s * interval '1 second'))
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::timestamptz[], $8::timestamptz[], $9::text[], $10::int[], $11::numeric[])
         AS r(callback_id, edge_call_id, merchant_id, caller, dialed, announce_mode,
              received_at, hungup_at, message_id, max_attempts, delay_s)
    ON CONFLICT (edge_call_id) DO NOTHING
    RETURNING callback_id, caller, merchant_id),
counted AS (
    SELECT guard_note_accepted(array_agg(q.callback_id), array_agg(q.caller),
                               array_agg(q.merchant_id), array_agg(k.known), $16)
    FROM queued q JOIN unnest($1::text[], $15::bool[]) AS k(callback_id, known)
         USING (callback_id))
SELECT ARRAY(SELECT message_id FROM claimed) AS claimed,
       ARRAY(SELECT callback_id FROM queued) AS queued,
       (SELECT count(*) FROM counted) AS counted"""


def _request_columns(new: Sequence[_NewRequest]) -> tuple[list[Any], ...]:
    reqs = [n.item.req for n in new]
    merchants = [n.item.merchant for n in new]
    return ([n.callback_id for n in new], [r.edge_call_id for r in reqs],
            [m.id for m in merchants], [str(r.caller) for r in reqs], [r.dialed for r in reqs],
            [r.announce_mode for r in reqs], [r.received_at for r in reqs],
            [r.hungup_at for r in reqs], [n.message_id for n in new],
            [m.max_attempts for m in merchants], [m.pre_callback_delay_s for m in merchants])


def _answer_columns(answers: dict[str, Answer]) -> tuple[list[Any], ...]:
    return (list(answers), [status for status, _ in answers.values()],
            [json.dumps(body, separators=(",", ":")) for _, body in answers.values()])


def _json(value: Any) -> Any:
    """A json/jsonb value, whether or not the connection has a JSON codec."""
    return json.loads(value) if isinstance(value, str) else value


def _answer(row: Mapping[str, Any]) -> dict[str, Any]:
    answer = {"callback_id": row["callback_id"], "status": row["status"]}
    if row["status"] == "refused":
        answer["reason"] = row["reason"]
    return answer
