"""Intake: call-back requests the edge sends, stored once each with their answers.

A batch of requests is one statement (:meth:`IntakeStore.intake_batch`, migration 1020):
the message ids with their answers, the request rows (queued, or refused by the guard with
its reason, which the edge hears through the outbox) and their NOTIFY to the workers.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from callback_server.guard.intake import limits_param, policy_parts
from callback_server.guard.reasons import Refusal, Verdict
from callback_server.metrics import callback as metrics
from callback_server.schemas import IntakeRequest
from callback_server.store.base import StoreBase
from shared.config import Merchant
from shared.link import Answer
from shared.outbox import fact_message_id, isoformat

if TYPE_CHECKING:
    from callback_server.guard.service import Guard

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

        One statement for the whole batch (message ids distinct, sorted), sent on its own
        so it is its own transaction: ``callback_intake`` (migration 1020) stores the
        message ids (``inbound_messages``, with their answers), the request rows and
        their NOTIFY (trigger; delivered at commit). A message id already stored gets its
        first answer; a new message for a known ``edge_call_id`` (stored, or earlier in
        the batch) gets that call-back and queues nothing.

        With a guard, every number is screened in the statement (policy, lists, lock,
        velocity, brake) under per-number advisory locks, requests in message-id order,
        each judged as if the earlier ones were stored; a refusal stores the row as
        ``refused`` with its reason code, records it (``guard_refusals``), tells the
        edge (``callback_status`` ``failed`` + reason) and answers ``202 {callback_id,
        status: "refused", reason}``. The destination policy is decided here, before
        the statement (:func:`callback_server.guard.intake.policy_parts`), the rest in
        the statement (the rule held equal to
        :class:`callback_server.guard.service.IntakeScreen` by a property test).

        One round trip per batch, whatever its size and its refusals (four before
        migration 1020, plus three a refusal).

        Logs one INFO line per commit (how many messages, by status), not one per
        request: the rows are the record, and a line per request with the caller's
        number costs the intake about a tenth of its CPU at full rate (the HTTP
        handler logs each request at DEBUG). Each refusal is logged (WARNING) and
        counted as :meth:`Guard.refused` does.

        Raises :class:`MessageRace` (nothing stored) when another transaction
        stored one of the message ids meanwhile: only possible for numbers not
        locked in common, so without a guard; run the batch again.
        """
        guard = self.guard
        started = time.perf_counter()
        try:
            rows = await conn.fetch(_INTAKE, *_intake_args(batch, guard))
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == _MESSAGE_RACE:
                raise MessageRace(str(getattr(exc, "detail", "") or "").split(",")) from None
            raise
        answers: dict[str, Answer] = {}
        repeats: list[str] = []
        for row in rows:
            if row["outcome"] == "repeat":
                answers[row["message_id"]] = (row["answer_status"], _json(row["body"]))
                repeats.append(row["message_id"])
            else:
                answers[row["message_id"]] = (202, _answer(row))
        self._noted(batch, rows, time.perf_counter() - started)
        if len(repeats) < len(answers):
            fresh = [body for mid, (_, body) in answers.items() if mid not in repeats]
            log.info("stored %d call-back request messages in one commit: %s", len(fresh),
                     dict(Counter(body.get("status") for body in fresh)))
        if repeats:
            log.info("duplicate callback_request messages %s: returning the first answers",
                     ", ".join(repeats))
        return answers

    def _noted(self, batch: Sequence[tuple[str, Intake]], rows: Sequence[asyncpg.Record],
               elapsed_s: float) -> None:
        """The guard's metrics and logs of a stored batch (``callback_intake``'s rows, in
        ``elapsed_s``): decisions timed, refusals counted and logged, acceptances counted;
        edge calls stored meanwhile by another transaction logged."""
        items = dict(batch)
        decided = [row for row in rows if row["outcome"] in ("queued", "refused")]
        guard = self.guard
        if guard is not None and decided:
            share = elapsed_s / len(decided)  # the statement decided them all
            for row in decided:
                metrics().guard_decision.observe(share)
                if row["outcome"] == "refused":
                    item = items[row["message_id"]]
                    guard.refusal_noted(Verdict(Refusal(row["reason"]), row["detail"] or ""),
                                        stage="intake", number=str(item.req.caller),
                                        merchant_id=item.merchant.id,
                                        callback_id=row["callback_id"])
            accepted = sum(row["outcome"] == "queued" for row in decided)
            if accepted:
                guard.accepted(accepted)
        lost = [items[row["message_id"]].req.edge_call_id for row in rows
                if row["outcome"] == "lost"]
        if lost:
            log.info("edge calls %s already had call-backs", ", ".join(lost))

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


class MessageRace(RuntimeError):
    """Another transaction stored some of a batch's message ids meanwhile (the batch was
    rolled back; run it again, and they are repeats)."""

    def __init__(self, message_ids: Sequence[str]) -> None:
        super().__init__(f"message ids stored meanwhile: {', '.join(message_ids)}")
        self.message_ids = message_ids


_MESSAGE_RACE = "CB001"       # callback_intake: message ids stored meanwhile

_INTAKE = ("SELECT message_id, outcome, answer_status, body, callback_id, status, reason,"
           " detail FROM callback_intake($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
           " $13, $14, $15, $16, $17, $18, $19, $20)")


def _intake_args(batch: Sequence[tuple[str, Intake]], guard: Guard | None) -> list[Any]:
    """``callback_intake``'s arguments: the requests, their destination policy (with a
    guard), the guard's clock, brake window and limits (None: no guard)."""
    reqs = [item.req for _, item in batch]
    merchants = [item.merchant for _, item in batch]
    callback_ids = [new_callback_id() for _ in batch]
    args: list[Any] = [
        [mid for mid, _ in batch], callback_ids, [r.edge_call_id for r in reqs],
        [m.id for m in merchants], [str(r.caller) for r in reqs], [r.dialed for r in reqs],
        [r.announce_mode for r in reqs], [r.received_at for r in reqs],
        [r.hungup_at for r in reqs], [m.max_attempts for m in merchants],
        [m.pre_callback_delay_s for m in merchants]]
    if guard is None:
        return [*args, None, None, None, None, None, None, None, None, None]
    parts = [policy_parts(guard.policy, r.caller) for r in reqs]
    now, brake_since = guard.intake_window()    # brake_since None: the brake off
    settings = guard.settings
    return [*args,
            [uuid.UUID(fact_message_id("callback_status", cb)) for cb in callback_ids],
            [p.first for p in parts],
            [None if p.plain is None else str(p.plain.reason) for p in parts],
            [None if p.plain is None else p.plain.detail for p in parts],
            [None if p.allowed is None else str(p.allowed.reason) for p in parts],
            [None if p.allowed is None else p.allowed.detail for p in parts],
            now, brake_since, limits_param(settings.velocity, settings.brake)]


def _json(value: Any) -> Any:
    """A json/jsonb value, whether or not the connection has a JSON codec."""
    return json.loads(value) if isinstance(value, str) else value


def _answer(row: Mapping[str, Any]) -> dict[str, Any]:
    answer = {"callback_id": row["callback_id"], "status": row["status"]}
    if row["status"] == "refused":
        answer["reason"] = row["reason"]
    return answer
