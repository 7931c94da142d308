"""Carrier quality from the call-back site's own CDRs, and the ranking it moves.

Per carrier and destination, over the customer legs of the last
:attr:`QualityBoard.window_s` (default 7 days) in ``cdrs`` (the callback site's own; on
the edge, those it received over the link: ASR and ACD, no PDD). A destination is kept
at two levels:

* the **range of the carrier's deck row** that prices the number (its prefix, up to
  :data:`HEAD_DIGITS` digits: ``8170`` for 070 mobiles on a deck with a row per mobile
  range): the legs to numbers under that prefix;
* the called number's **type** under the numbering plan (``routing_rates.numbering``:
  mobile, fixed_line, voip ...; ``other`` without a plan): every leg to that type.

A carrier is judged on its row's range once that has ``min_calls`` legs, else on the
type: a carrier failing only on 070 numbers moves down for 070 callers, not for 090
callers with figures of their own. A row of another type than the number (the country's
fixed-line row pricing a mobile, a gap priced at the type's rate) is judged on the type
only.

* **ASR** (answer-seizure ratio): answered legs / legs;
* **ACD** (average call length): talk seconds / answered legs;
* **PDD** (post-dial delay): the mean time from the originate (``cdrs.started_at``) to
  the first sign of the far end, ringing or answer (``callback_attempts.progress_at``,
  written by ``callback_server.leg_progress`` when ARI reports it); legs without it
  (failed before any progress, or dialled before it was recorded) are left out of PDD.

A merchant's ``shared.config.CarrierQuality`` (``[merchants.carrier_quality]``: ``min_asr``,
``max_pdd_s``, ``min_calls``) demote a carrier whose figures for the destination fall
below them over at least ``min_calls`` legs: :func:`demote` moves it after the others
(cheapest first among each), with the reason and the destination judged. Fewer legs at
both levels: no verdict. Pure but for
:func:`load` and :class:`QualityBoard` (refreshed every ``refresh_s``, default 300 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from routing_rates.decision import RouteQuote
from routing_rates.numbering import prefix_type
from shared.config import CarrierQuality
from shared.db import Connection, Pool
from shared.waits import cancel_and_wait

log = logging.getLogger("rates.quality")
#: digits of the destination the figures are grouped by (81 90 12345): the longest range
#: kept (a deck row's prefix longer than this is judged on its first 7 digits)
HEAD_DIGITS = 7
#: the shortest range kept: a row of the country code alone (81) is judged on the type
MIN_RANGE_DIGITS = 3


@dataclass(frozen=True, slots=True)
class Stats:
    calls: int
    answered: int
    talk_s: Decimal
    pdd_calls: int
    pdd_total_s: Decimal

    @property
    def asr(self) -> Decimal:
        return Decimal(self.answered) / self.calls if self.calls else Decimal(0)

    @property
    def acd_s(self) -> Decimal | None:
        return self.talk_s / self.answered if self.answered else None

    @property
    def pdd_s(self) -> Decimal | None:
        return self.pdd_total_s / self.pdd_calls if self.pdd_calls else None

    def __add__(self, other: Stats) -> Stats:
        return Stats(self.calls + other.calls, self.answered + other.answered,
                     self.talk_s + other.talk_s, self.pdd_calls + other.pdd_calls,
                     self.pdd_total_s + other.pdd_total_s)

    def to_json(self) -> dict[str, Any]:
        def text(value: Decimal | None, places: str) -> str | None:
            return None if value is None else str(value.quantize(Decimal(places)))
        return {"calls": self.calls, "answered": self.answered,
                "asr": text(self.asr, "0.001"), "acd_s": text(self.acd_s, "0.1"),
                "pdd_s": text(self.pdd_s, "0.01"), "pdd_calls": self.pdd_calls}


def destination_of(digits: str) -> str:
    """The destination key of a number (or its first digits): its plan type, or other."""
    kind = prefix_type(digits)
    return "other" if kind is None else str(kind)


def verdict(stats: Stats | None, limits: CarrierQuality) -> str | None:
    """Why a carrier with ``stats`` is below ``limits``; None if it is not (or too few)."""
    if stats is None or stats.calls < limits.min_calls:
        return None
    reasons = []
    if limits.min_asr is not None and stats.asr < limits.min_asr:
        reasons.append(f"ASR {stats.asr:.3f} < {limits.min_asr}")
    pdd = stats.pdd_s
    if limits.max_pdd_s is not None and pdd is not None and pdd > limits.max_pdd_s:
        reasons.append(f"PDD {pdd:.2f} s > {limits.max_pdd_s} s")
    if not reasons:
        return None
    return f"{', '.join(reasons)} over {stats.calls} calls"


Board = Mapping[tuple[str, str], Stats]


def judged(board: Board, carrier_id: str, row_prefix: str, destination: str,
           limits: CarrierQuality) -> tuple[str, Stats | None]:
    """The destination a carrier is judged on and its figures: the row's range once it
    has ``limits.min_calls`` legs (a row of the number's type only), else the type."""
    if len(row_prefix) >= MIN_RANGE_DIGITS and destination_of(row_prefix) == destination:
        key = row_prefix[:HEAD_DIGITS]
        stats = board.get((carrier_id, key))
        if stats is not None and stats.calls >= limits.min_calls:
            return key, stats
    return destination, board.get((carrier_id, destination))


def demote(quotes: Sequence[RouteQuote], board: Board, destination: str,
           limits: CarrierQuality) -> list[RouteQuote]:
    """``quotes`` (cheapest first) for a number of type ``destination`` with the carriers
    below ``limits`` (:func:`judged`) moved after the others, each marked (``demoted``
    and ``explain["demoted"]``: the verdict and the destination judged)."""
    kept: list[RouteQuote] = []
    moved: list[RouteQuote] = []
    for q in quotes:
        matched = q.gap.matched_prefix if q.gap is not None else q.row.prefix
        where, stats = judged(board, q.carrier_id, matched, destination, limits)
        why = verdict(stats, limits)
        if why is None:
            kept.append(q)
            continue
        assert stats is not None
        why = f"{why} to {where}"
        moved.append(replace(q, demoted=why, explain=q.explain | {
            "demoted": why, "quality": {"destination": where, **stats.to_json()}}))
    return kept + moved


#: the callback site: its own CDRs and the legs' progress (PDD)
CALLBACK_QUERY = f"""
SELECT c.carrier_id, left(ltrim(c.destination, '+'), {HEAD_DIGITS}) AS head,
       count(*) AS calls,
       count(*) FILTER (WHERE c.answered_at IS NOT NULL) AS answered,
       coalesce(sum(c.duration_s) FILTER (WHERE c.answered_at IS NOT NULL), 0) AS talk_s,
       count(a.progress_at) AS pdd_calls,
       coalesce(sum(extract(epoch FROM a.progress_at - c.started_at))
                FILTER (WHERE a.progress_at >= c.started_at), 0) AS pdd_s
FROM cdrs c LEFT JOIN callback_attempts a ON a.channel_id = c.call_id
WHERE c.leg = 'customer' AND c.started_at >= $1
GROUP BY 1, 2"""
#: the edge: the CDRs the callback site sent it (``cdr`` link events); no leg progress
#: travels with them, so no PDD there (a ``max_pdd_s`` floor only acts on the callback site)
EDGE_QUERY = f"""
SELECT carrier AS carrier_id, left(ltrim(destination, '+'), {HEAD_DIGITS}) AS head,
       count(*) AS calls,
       count(*) FILTER (WHERE answered_at IS NOT NULL) AS answered,
       coalesce(sum(duration_s) FILTER (WHERE answered_at IS NOT NULL), 0) AS talk_s,
       0 AS pdd_calls, 0 AS pdd_s
FROM cdrs
WHERE leg = 'customer' AND carrier IS NOT NULL AND started_at >= $1
GROUP BY 1, 2"""
QUERIES = {"callback": CALLBACK_QUERY, "edge": EDGE_QUERY}


async def load(conn: Connection, since: datetime, site: str = "callback",
               ) -> dict[tuple[str, str], Stats]:
    """Every carrier's figures per destination from the customer legs since ``since``
    in ``site``'s CDRs: per number type and per range (each prefix of the destinations'
    first :data:`HEAD_DIGITS` digits from :data:`MIN_RANGE_DIGITS` on)."""
    board: dict[tuple[str, str], Stats] = {}
    for r in await conn.fetch(QUERIES[site], since):
        stats = Stats(r["calls"], r["answered"], Decimal(r["talk_s"]), r["pdd_calls"],
                      Decimal(r["pdd_s"]))
        head: str = r["head"]
        ranges = [head[:n] for n in range(MIN_RANGE_DIGITS, len(head) + 1)]
        for destination in (destination_of(head), *ranges):
            key = (r["carrier_id"], destination)
            board[key] = board[key] + stats if key in board else stats
    return board


class QualityBoard:
    """The figures in memory, reloaded every ``refresh_s`` (lookups never touch the DB)."""

    def __init__(self, pool: Pool, *, site: str = "callback", window_s: float = 7 * 86400.0,
                 refresh_s: float = 300.0) -> None:
        self.pool = pool
        self.site = site
        self.window_s = window_s
        self.refresh_s = refresh_s
        self.board: Board = {}
        self.loaded_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn:
            board = await load(conn, now - timedelta(seconds=self.window_s), self.site)
        self.board, self.loaded_at = board, now

    async def start(self) -> QualityBoard:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="rates-quality")
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:  # keep the last figures; the next round retries
                log.exception("carrier quality not refreshed")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
