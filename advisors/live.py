"""Presence and assignment in PostgreSQL: the adapter of :mod:`advisors.presence` and
:mod:`advisors.assignment`.

Every change runs in one transaction: the advisor's presence row is locked
(``FOR UPDATE``), the machine decides, the new state is written, the change is an
``advisor_events`` row with its time, and ``NOTIFY advisor_events`` carries the row to
subscribers when the transaction commits (:mod:`advisors.events`). An assignment first
locks the merchant's settings row, then the presence rows of the customer's group (and
of the advisor offered the call), so assignments of one merchant run one at a time and
each sees every consultation the others started: two concurrent assignments never exceed
an advisor's maximum or the merchant's lines. The other advisors' consultations are
counted, not locked: only an assignment adds one (an offer), so the count read under
the merchant's lock is exact, or one too high while a consultation ending elsewhere
commits. A presence change of an advisor outside the group never waits for an
assignment, nor one for it.

Commands: ``Notify`` is the event row and its NOTIFY; ``StartWrapUpTimer`` is a due
time on the row that :meth:`Presences.expire_wrap_ups` (run every second by the site)
turns into ``WrapUpElapsed``; ``AutoBreak`` is the event row's reason; ``RefuseOffer``
and ``Ignored`` change nothing. Assignment commands ``OfferTo``/``Withdraw`` are applied
to the advisor in the same transaction; ``Queue``, ``LinesBusy`` and ``Connect`` are the
caller's (the call wiring) to act on. A queued customer is a row of ``advisor_queue``
(when they were first queued, when last tried), written by each try that queues them and
deleted by the one that does not: it is the next customer's ``Board.ahead`` (every
customer of the merchant queued before them, with their members), read under the
merchant's lock with the presence of the merchant's other advisors (on the board beside
the group's locked ones), so two tries never see the same place and the free lines go to
the customers in queue order (:func:`advisors.assignment.place`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, assert_never

import asyncpg

from advisors import assignment as am
from advisors import presence as pm
from advisors.errors import Busy, NotFound, Retired
from advisors.model import Rules, Via, WhenLinesBusy
from advisors.sessions import revoke
from advisors.store import lock_settings, presence_of, rules_of

log = logging.getLogger("advisors.live")

CHANNEL = "advisor_events"
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def event_name(event: pm.Event) -> str:
    match event:
        case pm.GoOnline():
            return "online"
        case pm.GoOffline():
            return "offline"
        case pm.SetWorking():
            return "working"
        case pm.SetBreak():
            return "break"
        case pm.Offered():
            return "offered"
        case pm.Answered():
            return "answered"
        case pm.RingMissed():
            return "ring_missed"
        case pm.ConsultationEnded():
            return "ended"
        case pm.WrapUpElapsed():
            return "wrap_up_elapsed"
        case _:
            assert_never(event)


_PRESENCE_ROW = """
    SELECT p.*, a.max_concurrent, a.retired_at
    FROM advisor_presence p JOIN advisors a ON a.id = p.advisor_id
    WHERE p.merchant_id = $1"""
#: a queued customer not tried again for this long is a dead process's: not waiting
QUEUE_STALE_S = 15
#: the merchant's customers queued before this one (now, if not queued), oldest first
_AHEAD = """
    SELECT q.members FROM advisor_queue q
    WHERE q.merchant_id = $1 AND q.consultation_id <> $2
      AND q.seen_at > $3::timestamptz - make_interval(secs => $4)
      AND q.queued_at < coalesce((SELECT queued_at FROM advisor_queue
                                  WHERE consultation_id = $2), $3::timestamptz)
    ORDER BY q.queued_at, q.consultation_id"""
_QUEUED = """
    INSERT INTO advisor_queue (consultation_id, merchant_id, members, queued_at, seen_at)
    VALUES ($1, $2, $3, $4, $4)
    ON CONFLICT (consultation_id) DO UPDATE SET seen_at = $4"""

class Presences:
    def __init__(self, pool: asyncpg.Pool, clock: Clock = utcnow) -> None:
        self.pool = pool
        self.clock = clock

    # --- one advisor ----------------------------------------------------------------------

    async def apply(self, merchant_id: str, advisor_id: int, event: pm.Event,
                    conn: asyncpg.Connection | None = None
                    ) -> tuple[pm.Presence, list[pm.Command]]:
        """Apply ``event`` to the advisor (404 if not the merchant's), in a transaction of
        its own or in the caller's on ``conn`` (the change commits with the caller's facts).
        """
        if conn is None:
            async with self.pool.acquire() as own, own.transaction():
                return await self.apply(merchant_id, advisor_id, event, own)
        rules = await _rules(conn, merchant_id, lock=False)
        row = await conn.fetchrow(_PRESENCE_ROW + " AND p.advisor_id = $2 FOR UPDATE OF p",
                                  merchant_id, advisor_id)
        if row is None:
            raise NotFound("advisor", advisor_id)
        if row["retired_at"] is not None:
            raise Retired(advisor_id)
        return await _apply(conn, merchant_id, advisor_id, presence_of(row), event, rules)

    async def retire(self, merchant_id: str, advisor_id: int) -> bool:
        """Retire the advisor (404 if not the merchant's): offline, out of every group,
        their sessions and sign-in links ended, ``retired_at`` set, a ``retired`` event
        recorded and published, in one transaction. Refused (409 ``advisor-busy``) while
        they are rung or talking, or a queued customer waits for them alone (by their
        code). False if they were already retired (nothing changes)."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            rules = await _rules(conn, merchant_id, lock=True)  # no offer to them meanwhile
            row = await conn.fetchrow(_PRESENCE_ROW + " AND p.advisor_id = $2 FOR UPDATE OF p",
                                      merchant_id, advisor_id)
            if row is None:
                raise NotFound("advisor", advisor_id)
            if row["retired_at"] is not None:
                return False
            before = presence_of(row)
            if before.sessions:
                raise Busy(advisor_id, f"is {before.state}: "
                           + ", ".join(s.consultation_id for s in before.sessions))
            waiting = await conn.fetchval(
                "SELECT consultation_id FROM advisor_queue WHERE merchant_id = $1 AND "
                "members = ARRAY[$2::bigint] AND seen_at > $3::timestamptz - "
                "make_interval(secs => $4) LIMIT 1", merchant_id, advisor_id, now,
                QUEUE_STALE_S)
            if waiting is not None:
                raise Busy(advisor_id, f"is awaited by the queued consultation {waiting}")
            await _apply(conn, merchant_id, advisor_id, before,
                         pm.GoOffline(now, Via.SYSTEM), rules, recorded_as="retired")
            await conn.execute("DELETE FROM advisor_group_members WHERE advisor_id = $1",
                               advisor_id)
            await conn.execute("UPDATE advisors SET retired_at = $2 WHERE id = $1",
                               advisor_id, now)
            await revoke(conn, merchant_id, advisor_id, now)
        return True

    async def ringing(self, merchant_id: str, consultation_id: str) -> list[int]:
        """The advisors being rung for ``consultation_id`` (an offer not answered)."""
        rows = await self.pool.fetch(
            "SELECT advisor_id FROM advisor_presence WHERE merchant_id = $1 AND sessions @> "
            "jsonb_build_array(jsonb_build_object('consultation_id', $2::text, "
            "'answered', false)) ORDER BY advisor_id", merchant_id, consultation_id)
        return [r["advisor_id"] for r in rows]

    async def expire_wrap_ups(self) -> int:
        """Bring back to standby the advisors whose after-call work timer elapsed."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT p.*, a.max_concurrent FROM advisor_presence p
                   JOIN advisors a ON a.id = p.advisor_id
                   WHERE p.wrap_up_due <= $1 ORDER BY p.wrap_up_due LIMIT 100
                   FOR UPDATE OF p SKIP LOCKED""", now)
            for row in rows:
                rules = await _rules(conn, row["merchant_id"], lock=False)
                await _apply(conn, row["merchant_id"], row["advisor_id"], presence_of(row),
                             pm.WrapUpElapsed(now, row["wrap_up_token"]), rules)
        return len(rows)

    async def run_timers(self, every_s: float = 1.0) -> None:
        while True:
            try:
                await self.expire_wrap_ups()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("after-call work timers: %s", exc)
            await asyncio.sleep(every_s)

    # --- assignment -----------------------------------------------------------------------

    async def members(self, merchant_id: str, *, group_id: int | None = None,
                      code: str | None = None) -> frozenset[int]:
        """Who a customer's choice reaches: a group's members, or the advisor of a code."""
        if code is not None:
            found = await self.pool.fetchval(
                "SELECT id FROM advisors WHERE merchant_id = $1 AND code = $2"
                " AND retired_at IS NULL",
                merchant_id, code)
            if found is None:
                raise NotFound("advisor with code", code)
            return frozenset({found})
        rows = await self.pool.fetch(
            """SELECT m.advisor_id FROM advisor_group_members m
               JOIN advisor_groups g ON g.id = m.group_id
               WHERE g.merchant_id = $1 AND g.id = $2""", merchant_id, group_id)
        if not rows and not await self.pool.fetchval(
                "SELECT 1 FROM advisor_groups WHERE merchant_id = $1 AND id = $2",
                merchant_id, group_id):
            raise NotFound("group", str(group_id))
        return frozenset(r["advisor_id"] for r in rows)

    async def assign(self, merchant_id: str, a: am.Assignment
                     ) -> tuple[am.Assignment, list[am.Command]]:
        """A new customer, or one retried from the queue."""
        return await self._assignment(merchant_id, a, None)

    async def ring_missed(self, merchant_id: str, a: am.Assignment
                          ) -> tuple[am.Assignment, list[am.Command]]:
        """The offered advisor missed the ring: counted on them, then the next one."""
        return await self._assignment(merchant_id, a, pm.RingMissed)

    async def answered(self, merchant_id: str, a: am.Assignment
                       ) -> tuple[am.Assignment, list[am.Command]]:
        return await self._assignment(merchant_id, a, pm.Answered)

    async def cancelled(self, merchant_id: str, a: am.Assignment
                        ) -> tuple[am.Assignment, list[am.Command]]:
        return await self._assignment(merchant_id, a, None, cancel=True)

    async def _assignment(self, merchant_id: str, a: am.Assignment,
                          offered_event: type[pm.RingMissed] | type[pm.Answered] | None,
                          *, cancel: bool = False) -> tuple[am.Assignment, list[am.Command]]:
        now = self.clock()
        advisor = a.offered_to
        concerned = sorted(a.members | ({advisor} if advisor is not None else set()))
        async with self.pool.acquire() as conn, conn.transaction():
            rules = await _rules(conn, merchant_id, lock=True)
            seats = {r["advisor_id"]: presence_of(r) for r in await conn.fetch(
                _PRESENCE_ROW + " AND p.advisor_id = ANY($2::bigint[])"
                " ORDER BY p.advisor_id FOR UPDATE OF p", merchant_id, concerned)}
            event: am.Event
            if offered_event is not None and advisor is not None and advisor in seats:
                seats[advisor], _ = await _apply(conn, merchant_id, advisor, seats[advisor],
                                                 offered_event(now, a.consultation_id), rules)
            if cancel:
                event = am.Cancelled()
            elif offered_event is pm.Answered:
                event = am.OfferAnswered()
            else:
                others = {r["advisor_id"]: presence_of(r) for r in await conn.fetch(
                    _PRESENCE_ROW + " AND p.advisor_id <> ALL($2::bigint[])",
                    merchant_id, list(seats))}
                ahead = await conn.fetch(_AHEAD, merchant_id, a.consultation_id, now,
                                         QUEUE_STALE_S)
                board = am.Board(
                    rules.lines, {**others, **seats},
                    ahead=tuple(frozenset(r["members"]) for r in ahead),
                    busy_queue=rules.lines_busy is WhenLinesBusy.QUEUE)
                event = (am.OfferMissed(board) if offered_event is pm.RingMissed
                         else am.Assign(board))
            after, cmds = am.transition(a, event)
            for cmd in cmds:
                await self._execute(conn, merchant_id, after, cmd, seats, rules, now)
            if any(isinstance(c, am.Queue) for c in cmds):
                await conn.execute(_QUEUED, a.consultation_id, merchant_id,
                                   sorted(a.members), now)
            elif not any(isinstance(c, am.NotApplicable) for c in cmds):
                await conn.execute("DELETE FROM advisor_queue WHERE consultation_id = $1",
                                   a.consultation_id)
        return after, cmds

    async def _execute(self, conn: asyncpg.Connection, merchant_id: str, a: am.Assignment,
                       cmd: am.Command, seats: dict[int, pm.Presence], rules: Rules,
                       now: datetime) -> None:
        match cmd:
            case am.OfferTo(advisor_id=advisor, consultation_id=cid):
                seats[advisor], done = await _apply(conn, merchant_id, advisor, seats[advisor],
                                                    pm.Offered(now, cid), rules)
                assert not any(isinstance(c, pm.RefuseOffer) for c in done), done
            case am.Withdraw(advisor_id=advisor):
                seats[advisor], _ = await _apply(conn, merchant_id, advisor, seats[advisor],
                                                 pm.ConsultationEnded(now, a.consultation_id),
                                                 rules)
            case am.Queue() | am.LinesBusy() | am.Connect() | am.NotApplicable():
                pass  # the caller's to act on
            case _:
                assert_never(cmd)


async def _rules(conn: asyncpg.Connection, merchant_id: str, *, lock: bool) -> Rules:
    if not lock:
        return rules_of(await conn.fetchrow(
            "SELECT * FROM advisor_settings WHERE merchant_id = $1", merchant_id))
    return rules_of(await lock_settings(conn, merchant_id))


async def _apply(conn: asyncpg.Connection, merchant_id: str, advisor_id: int,
                 before: pm.Presence, event: pm.Event, rules: Rules, *,
                 recorded_as: str | None = None) -> tuple[pm.Presence, list[pm.Command]]:
    """``recorded_as``: the event row's name instead of the event's, recorded even when
    the presence does not change."""
    after, cmds = pm.transition(before, event, rules)
    if after == before and recorded_as is None:
        return after, cmds
    due: datetime | None = None
    for cmd in cmds:
        match cmd:
            case pm.StartWrapUpTimer(seconds=seconds):
                due = event.at + timedelta(seconds=seconds)
            case pm.Notify() | pm.AutoBreak() | pm.RefuseOffer() | pm.Ignored():
                pass  # the event row below records and publishes them
            case _:
                assert_never(cmd)
    await conn.execute(
        """UPDATE advisor_presence SET desk = $2, sessions = $3, misses = $4, reason = $5,
               idle_since = $6, wrap_up_token = $7, updated_at = $8,
               wrap_up_due = CASE WHEN $2 <> 'wrap_up' THEN NULL ELSE coalesce($9, wrap_up_due)
                             END
           WHERE advisor_id = $1""",
        advisor_id, after.desk.value,
        [{"consultation_id": s.consultation_id, "answered": s.answered}
         for s in after.sessions],
        after.misses, after.reason, after.idle_since, after.wrap_up_token, event.at, due)
    await _record(conn, merchant_id, advisor_id, before, after, event,
                  recorded_as or event_name(event))
    return after, cmds


async def _record(conn: asyncpg.Connection, merchant_id: str, advisor_id: int,
                  before: pm.Presence, after: pm.Presence, event: pm.Event, name: str
                  ) -> None:
    via = getattr(event, "via", None)
    row: dict[str, Any] = {
        "merchant_id": merchant_id, "advisor_id": advisor_id, "at": event.at,
        "event": name, "via": via.value if via is not None else None,
        "consultation_id": getattr(event, "consultation_id", None),
        "before": before.state.value, "after": after.state.value, "desk": after.desk.value,
        "load": after.load, "reason": after.reason}
    row["id"] = await conn.fetchval(
        """INSERT INTO advisor_events (merchant_id, advisor_id, at, event, via,
               consultation_id, before, after, desk, load, reason)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id""",
        *row.values())
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps(event_json(row)))


def event_json(row: Any) -> dict[str, Any]:
    """An ``advisor_events`` row as subscribers get it."""
    return {"id": row["id"], "merchant_id": row["merchant_id"],
            "advisor_id": row["advisor_id"], "at": row["at"].isoformat(),
            "event": row["event"], "via": row["via"],
            "consultation_id": row["consultation_id"], "before": row["before"],
            "after": row["after"], "desk": row["desk"], "load": row["load"],
            "reason": row["reason"]}

