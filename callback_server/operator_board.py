"""What the merchant's operators' page shows (``GET /v1/operator/board``), read from the
site's tables as of one moment:

* ``advisors``: each advisor's state (``advisors.model.State``) and since when (the
  presence row's last change);
* ``consultations``: those talking now (``consult_live``: the runner keeps a row from the
  answer to the record), the customer's number masked but its last 4 digits, the advisor,
  the method, talking since, on hold (a hold without an end) and a consult transfer in
  progress;
* ``queue``: the customers waiting (``advisor_queue`` rows still tried), oldest first,
  with the place :func:`advisors.assignment.place` gives each (what the customer hears);
* ``lines``: in use (the advisors' consultations, ringing ones too) and the merchant's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from advisors import assignment as am
from advisors.live import QUEUE_STALE_S
from advisors.store import AdvisorStore
from shared.openapi import Schema

#: digits of a customer's number the board shows
SHOWN_DIGITS = 4


def masked(number: str) -> str:
    """``+819012345678`` → ``********5678``."""
    return "*" * max(len(number) - SHOWN_DIGITS, 0) + number[-SHOWN_DIGITS:]


async def board(store: AdvisorStore, merchant_id: str, now: datetime) -> dict[str, Any]:
    advisors = await store.advisors(merchant_id)
    rules = await store.rules(merchant_id)
    pool: asyncpg.Pool = store.pool
    since = dict(await pool.fetch(
        "SELECT advisor_id, updated_at FROM advisor_presence WHERE merchant_id = $1",
        merchant_id))
    names = {a.id: a.display_name for a, _ in advisors}
    talking = await pool.fetch(
        "SELECT consultation_id, advisor_id, snapshot, second_party IS NOT NULL AS"
        " transferring FROM consult_live WHERE merchant_id = $1"
        " ORDER BY snapshot->>'answered_at', consultation_id", merchant_id)
    queued = await pool.fetch(
        "SELECT consultation_id, members, queued_at FROM advisor_queue WHERE merchant_id = $1"
        " AND seen_at > $2::timestamptz - make_interval(secs => $3)"
        " ORDER BY queued_at, consultation_id", merchant_id, now, QUEUE_STALE_S)
    seats = am.Board(rules.lines, {a.id: p for a, p in advisors})
    return {
        "advisors": [{"advisor_id": a.id, "display_name": a.display_name,
                      "state": p.state.value, "since": since[a.id].isoformat()}
                     for a, p in advisors],
        "consultations": [_consultation(r, names) for r in talking],
        "queue": [{"consultation_id": r["consultation_id"],
                   "queued_at": r["queued_at"].isoformat(),
                   "place": am.place(am.Board(rules.lines, seats.seats, ahead=tuple(
                       frozenset(q["members"]) for q in queued[:i])),
                       frozenset(r["members"]))}
                  for i, r in enumerate(queued)],
        "lines": {"in_use": seats.lines_in_use, "total": rules.lines},
    }


def _consultation(row: asyncpg.Record, names: dict[int, str]) -> dict[str, Any]:
    snapshot = row["snapshot"]
    return {"consultation_id": row["consultation_id"],
            "customer": masked(snapshot["customer_number"]),
            "advisor_id": row["advisor_id"],
            "advisor_name": names.get(row["advisor_id"], ""),
            "method": snapshot["method"], "talking_since": snapshot["answered_at"],
            "on_hold": any(h["ended_at"] is None for h in snapshot["holds"]),
            "transferring": row["transferring"]}


_TIME = {"type": "string", "format": "date-time"}
BOARD: Schema = {
    "type": "object", "required": ["advisors", "consultations", "queue", "lines"],
    "properties": {
        "advisors": {"type": "array", "items": {"type": "object", "properties": {
            "advisor_id": {"type": "integer"}, "display_name": {"type": "string"},
            "state": {"enum": ["standby", "ringing", "talking", "wrap_up", "working",
                               "break", "offline"]},
            "since": _TIME}}},
        "consultations": {"type": "array", "items": {"type": "object", "properties": {
            "consultation_id": {"type": "string"},
            "customer": {"type": "string", "description": "masked but the last 4 digits"},
            "advisor_id": {"type": "integer"}, "advisor_name": {"type": "string"},
            "method": {"type": "string"}, "talking_since": _TIME,
            "on_hold": {"type": "boolean"}, "transferring": {"type": "boolean"}}}},
        "queue": {"type": "array", "items": {"type": "object", "properties": {
            "consultation_id": {"type": "string"}, "queued_at": _TIME,
            "place": {"type": "integer", "minimum": 1}}}},
        "lines": {"type": "object", "properties": {"in_use": {"type": "integer"},
                                                   "total": {"type": "integer"}}}}}
