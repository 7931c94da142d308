"""SQL of the guard (migration ``0100_guard.sql``). Every method takes the caller's
connection, so guard reads and writes join the caller's transaction (intake,
leg persistence, CDR). Times are passed in from the guard's clock, never
``now()``, so tests can drive a simulated clock; only the CPS window uses the
database clock, because ``callback_attempts.created_at`` is written by it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from callback_server.dialer_messages import CAPPED_LEGS, EDGE_TRUNK
from callback_server.guard.brake import BrakeSettings
from callback_server.guard.caps import CapLimits
from callback_server.guard.reasons import Verdict
from callback_server.guard.velocity import NumberHistory

LIVE = ("dialing", "originated", "answered")


@dataclass(frozen=True, slots=True)
class NumberFacts:
    history: NumberHistory
    blocked: bool
    block_reason: str
    allowed: bool
    confirmations: int

    def accepted(self, now: datetime) -> NumberFacts:
        """The facts after one more request was accepted at ``now``."""
        return NumberFacts(self.history.accepted(now), self.blocked, self.block_reason,
                           self.allowed, self.confirmations)


@dataclass(frozen=True, slots=True)
class CapSnapshot:
    trips: dict[tuple[str, str], str]           # (scope, kind) -> reason of an active trip
    channels: dict[str, int]                    # scope -> live customer legs
    cps: dict[str, int]                         # scope -> legs created in the last second
    spend: dict[str, Decimal]                   # scope -> today's spend since the last reset


async def number_facts(conn: asyncpg.Connection, number: str, now: datetime) -> NumberFacts:
    rows = await conn.fetch("SELECT * FROM guard_number_facts($1::text[], $2, NULL)",
                            [number], now)
    return facts_of(rows[0])


def brake_since(now: datetime, window_s: int) -> datetime:
    """Where the anomaly brake's window starts, for ``guard_number_facts``."""
    return now - timedelta(seconds=window_s)


def facts_of(row: asyncpg.Record) -> NumberFacts:
    """A ``guard_facts`` row (migration 0400) as :class:`NumberFacts`."""
    allowed = bool(row["allowed"])
    confirmations = row["confirmations"]
    history = NumberHistory(known=confirmations > 0 or allowed, active=row["active"],
                            last_accepted_at=row["last_at"], accepted_hour=row["accepted_hour"],
                            accepted_day=row["accepted_day"], locked_until=row["locked_until"])
    return NumberFacts(history, row["block_reason"] is not None, row["block_reason"] or "",
                       allowed, confirmations)


async def unconfirmed_new_numbers(conn: asyncpg.Connection, now: datetime,
                                  window_s: int, limit: int | None) -> int:
    """The anomaly brake's count of new numbers left unconfirmed in its window, counted up
    to ``limit`` (``guard_brake_count``, migration 1030; None: all of them)."""
    value = await conn.fetchval("SELECT guard_brake_count($1, $2)",
                                brake_since(now, window_s), limit)
    return int(value or 0)


async def record_refusal(conn: asyncpg.Connection, *, stage: str, verdict: Verdict,
                         number: str | None, merchant_id: str | None, callback_id: str | None,
                         edge_call_id: str | None, message_id: str | None,
                         now: datetime) -> None:
    if stage == "dial":
        await conn.execute(
            """INSERT INTO guard_refusals (at, last_at, stage, reason, detail, number,
                   merchant_id, callback_id) VALUES ($1, $1, 'dial', $2, $3, $4, $5, $6)
               ON CONFLICT (callback_id, reason) WHERE stage = 'dial'
               DO UPDATE SET occurrences = guard_refusals.occurrences + 1,
                             last_at = EXCLUDED.last_at, detail = EXCLUDED.detail""",
            now, str(verdict.reason), verdict.detail, number, merchant_id, callback_id)
        return
    await conn.execute(
        """INSERT INTO guard_refusals (at, last_at, stage, reason, detail, number, merchant_id,
               callback_id, edge_call_id, message_id)
           VALUES ($1, $1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO NOTHING""",
        now, stage, str(verdict.reason), verdict.detail, number, merchant_id, callback_id,
        edge_call_id, message_id)


@dataclass(frozen=True, slots=True)
class RoundFacts:
    """What ``guard_round_ended`` wrote and read (migration 0997): whether the round was
    recorded now (False: it already was, nothing else was done), whether its number was
    known, and for a round that rang unconfirmed the velocity counts (unconfirmed rounds
    since the last confirmation within the lock window, within the block window), the
    number's lock and, for a number not known, the brake's count of new numbers left
    unconfirmed."""

    recorded: bool
    known: bool
    recent: int
    window: int
    locked_until: datetime | None
    new_unconfirmed: int


def round_ended_query(first: int) -> str:
    """Record a round's end under its number's lock and read what the velocity rules and
    the brake decide on (:class:`RoundFacts`, :func:`round_facts_of`): one query, its
    parameters (:func:`round_ended_args`) from ``$first`` on, alone or carried by a
    statement of the round's finish."""
    return "SELECT * FROM guard_round_ended({})".format(
        ", ".join(f"${n}" for n in range(first, first + 11)))


def round_ended_args(*, callback_id: str, attempt_no: int, number: str, merchant_id: str,
                     rang: bool, confirmed: bool, now: datetime, lock_window_s: int,
                     block_window_s: int, brake: BrakeSettings) -> tuple[object, ...]:
    """The brake's count is bounded at ``brake.limit``, and not made at all with the
    brake off (its window's start NULL)."""
    return (callback_id, attempt_no, number, merchant_id, rang, confirmed, now,
            now - timedelta(seconds=lock_window_s), now - timedelta(seconds=block_window_s),
            brake_since(now, brake.window_s) if brake.enabled else None, brake.limit)


def round_facts_of(row: asyncpg.Record) -> RoundFacts:
    return RoundFacts(bool(row["recorded"]), bool(row["number_known"]),
                      int(row["recent_unconfirmed"] or 0), int(row["window_unconfirmed"] or 0),
                      row["number_locked_until"], int(row["new_unconfirmed"] or 0))


async def lock(conn: asyncpg.Connection, number: str, until: datetime, now: datetime) -> None:
    await conn.execute(
        """UPDATE guard_numbers SET locked_until = $2, locked_at = $3, locks = locks + 1
           WHERE number = $1""", number, until, now)


async def unlock(conn: asyncpg.Connection, number: str) -> bool:
    done = await conn.fetchval(
        """UPDATE guard_numbers SET locked_until = NULL WHERE number = $1
           AND locked_until IS NOT NULL RETURNING true""", number)
    return bool(done)


async def add_entry(conn: asyncpg.Connection, *, number: str, list_name: str, reason: str,
                    source: str, by: str, now: datetime, expires_at: datetime | None,
                    replace: bool = True) -> bool:
    conflict = ("DO UPDATE SET reason = $3, source = $4, created_by = $5, created_at = $6, "
                "expires_at = $7") if replace else "DO NOTHING"
    inserted = await conn.fetchval(
        f"""INSERT INTO guard_lists (number, list, reason, source, created_by, created_at,
                expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (number, list) {conflict} RETURNING true""",
        number, list_name, reason, source, by, now, expires_at)
    return bool(inserted)


async def remove_entry(conn: asyncpg.Connection, number: str, list_name: str) -> bool:
    done = await conn.fetchval(
        "DELETE FROM guard_lists WHERE number = $1 AND list = $2 RETURNING true",
        number, list_name)
    return bool(done)


async def entries(conn: asyncpg.Connection, list_name: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT number, list, reason, source, created_by, created_at, expires_at
           FROM guard_lists WHERE list = $1 ORDER BY created_at DESC""", list_name)
    return [dict(r) for r in rows]


async def cap_snapshot(conn: asyncpg.Connection, day: date) -> CapSnapshot:
    trips = {(r["scope"], r["kind"]): r["reason"] for r in await conn.fetch(
        "SELECT scope, kind, reason FROM guard_trips WHERE reset_at IS NULL")}
    rows = await conn.fetch(
        """SELECT carrier_id,
                  count(*) FILTER (WHERE status = ANY($1::text[])) AS live,
                  count(*) FILTER (WHERE created_at > now() - interval '1 second') AS cps
           FROM callback_attempts
           WHERE leg = ANY($2::text[]) AND carrier_id <> $3 AND (status = ANY($1::text[])
                 OR created_at > now() - interval '1 second')
           GROUP BY carrier_id""", list(LIVE), list(CAPPED_LEGS), EDGE_TRUNK)
    channels = {f"trunk:{r['carrier_id']}": int(r["live"]) for r in rows}
    cps = {f"trunk:{r['carrier_id']}": int(r["cps"]) for r in rows}
    channels["global"] = sum(channels.values())
    cps["global"] = sum(cps.values())
    spend = {r["scope"]: r["effective"] for r in await conn.fetch(
        """SELECT scope, sum(amount - offset_amount) AS effective FROM guard_spend
           WHERE day = $1 GROUP BY scope""", day)}
    return CapSnapshot(trips, channels, cps, spend)


def snapshot_of(rows: Sequence[Any]) -> CapSnapshot:
    """``guard_cap_use`` rows (migration 0998) as a :class:`CapSnapshot` (a scope not in
    them has no usage)."""
    return CapSnapshot(
        trips={(r["scope"], kind): reason for r in rows
               for kind, reason in zip(r["trip_kinds"], r["trip_reasons"], strict=True)},
        channels={r["scope"]: int(r["live"]) for r in rows},
        cps={r["scope"]: int(r["cps"] or 0) for r in rows},
        spend={r["scope"]: r["spend"] for r in rows if r["spend"] is not None})


def admission_ctes(first: int) -> str:
    """A leg's admission as CTEs of the statement that stores the leg (its parameters from
    ``$first`` on, :class:`LegAdmission`; after a CTE ``held``: a row while the leg may be
    stored). ``admitted`` is one row: ``ok`` (the leg row may be inserted, with the slots
    ``cap_scopes``/``cap_shards`` and the CPS window's clock ``admitted_at``), the first
    cap ``guard_claim`` found reached (``reached_scope``, ``reached_kind``, ``in_use``,
    ``free_in``: migration 0930), and ``usage``: the ``guard_cap_use`` rows read before
    (migration 0998). The slots are claimed only when no scope of the leg is tripped, at
    or over its spend cap, or at its channel cap or (a CPS cap that does not pace) its
    CPS cap: the test :meth:`~callback_server.guard.service.Guard.admitted` makes on
    ``usage`` to tell which."""
    scopes, channels, cps, spend, paces, day, claimed, shards = (
        f"${n}" for n in range(first, first + 8))
    return f"""usage AS (SELECT * FROM guard_cap_usage({scopes}::text[], {day}::date)),
               gate AS (
                   SELECT EXISTS (SELECT 1 FROM held) AND NOT EXISTS (
                       SELECT 1 FROM usage u JOIN unnest({scopes}::text[], {channels}::int[],
                           {cps}::int[], {spend}::numeric[]) AS l(scope, channels, cps, spend)
                           USING (scope)
                       WHERE cardinality(u.trip_kinds) > 0
                          OR coalesce(u.spend, 0) >= l.spend OR u.live >= l.channels
                          OR (NOT {paces}::boolean AND u.cps >= l.cps)) AS open),
               claim AS (
                   SELECT g.open, c.* FROM gate g, LATERAL guard_claim(
                       CASE WHEN g.open THEN {claimed}::text[] END, {channels}::int[],
                       {cps}::int[], {shards}::int) c),
               admitted AS (
                   SELECT c.open AND c.reached_scope IS NULL AS ok,
                          ARRAY(SELECT s FROM unnest({scopes}::text[], c.shards) x(s, sh)
                                WHERE sh IS NOT NULL) AS cap_scopes,
                          ARRAY(SELECT sh FROM unnest({scopes}::text[], c.shards) x(s, sh)
                                WHERE sh IS NOT NULL) AS cap_shards,
                          CASE WHEN {claimed}::text[] IS NOT NULL THEN c.admitted_at END
                              AS admitted_at,
                          c.reached_scope, c.reached_kind, c.in_use, c.free_in,
                          (SELECT coalesce(array_agg(ROW(u.*)::guard_cap_use), '{{}}')
                           FROM usage u) AS usage
                   FROM claim c)"""


def admission_args(scopes: Sequence[str], limits: Sequence[CapLimits], *, paces: bool,
                   day: date, shards: int) -> tuple[object, ...]:
    """:func:`admission_ctes`' parameters: a leg's ``scopes`` and their ``limits``; the
    slots are claimed only in a scope with a channel or CPS cap (``guard_claim``), so
    none when no scope has one."""
    claimed = list(scopes) if any(lim.channels or lim.cps for lim in limits) else None
    return (list(scopes), [lim.channels for lim in limits], [lim.cps for lim in limits],
            [lim.spend_daily for lim in limits], paces, day, claimed, shards)


def spend_ctes(first: int, gate: str) -> str:
    """A CDR's carrier cost added to its scopes' spend of the day, the spend caps it took
    over tripped, as CTEs of the statement that stores the CDR (its parameters
    (:func:`spend_args`) from ``$first`` on; after a CTE ``gate``: a row when the CDR is
    new, none when it was stored before). ``spend``: each scope's spend after it as this
    statement sees it (``guard_add_spend``, migrations 0985, 0986: a shard row no other
    transaction holds; other open transactions' additions not yet counted), ``crossed``
    when the cost took it from below its cap to at or above it, with the trip's
    ``detail``; ``spend_trip``: the scopes whose trip this statement stored (a latched
    spend cap not tripped yet). Committed with the statement, no spend row stays locked
    while the client is away."""
    day, scopes, currency, amount, shards, caps_, reasons, latch, now = (
        f"${n}" for n in range(first, first + 9))
    return f"""spend AS (
                   SELECT s.scope, s.spent, s.reason,
                          s.cap IS NOT NULL AND s.spent - {amount}::numeric < s.cap
                              AND s.cap <= s.spent AS crossed,
                          format('%s: spent %s of %s', s.scope, s.spent, s.cap) AS detail
                   FROM {gate},
                        LATERAL guard_add_spend({day}::date, {scopes}::text[],
                            {currency}::text, {amount}::numeric, {shards}::int) AS a(afters),
                        unnest({scopes}::text[], a.afters, {caps_}::numeric[],
                               {reasons}::text[]) AS s(scope, spent, cap, reason)),
               spend_trip AS (
                   INSERT INTO guard_trips (scope, kind, reason, detail, tripped_at)
                   SELECT scope, 'spend_daily', reason, detail, {now}::timestamptz
                   FROM spend WHERE crossed AND {latch}::boolean
                   ON CONFLICT (scope, kind) WHERE reset_at IS NULL DO NOTHING
                   RETURNING scope)"""


#: what :func:`spend_ctes` did, as a column of its statement: the scopes whose spend cap
#: the cost crossed (``scope``, ``detail``, ``tripped``: its trip stored now), a list
SPEND_CROSSED = """(SELECT coalesce(jsonb_agg(jsonb_build_object(
                        'scope', s.scope, 'detail', s.detail,
                        'tripped', EXISTS (SELECT 1 FROM spend_trip t WHERE t.scope = s.scope))),
                        '[]'::jsonb)
                    FROM spend s WHERE s.crossed) AS spend_crossed"""


def spend_args(day: date, scopes: Sequence[str], currency: str, amount: Decimal,
               limits: Sequence[CapLimits], reasons: Sequence[str], *, latch: bool,
               now: datetime, shards: int) -> tuple[object, ...]:
    """:func:`spend_ctes`' parameters: the cost ``amount`` (in the caps' ``currency``) of
    a CDR counted in ``scopes``, their ``limits`` and trip ``reasons``; ``latch``: a
    reached spend cap trips (stored at ``now``)."""
    return (day, list(scopes), currency, amount, shards,
            [lim.spend_daily for lim in limits], list(reasons), latch, now)


async def trip(conn: asyncpg.Connection, scope: str, kind: str, verdict: Verdict,
               now: datetime) -> bool:
    inserted = await conn.fetchval(
        """INSERT INTO guard_trips (scope, kind, reason, detail, tripped_at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (scope, kind) WHERE reset_at IS NULL DO NOTHING RETURNING true""",
        scope, kind, str(verdict.reason), verdict.detail, now)
    return bool(inserted)


async def reset_caps(conn: asyncpg.Connection, scope: str | None, kind: str | None, by: str,
                     now: datetime, day: date) -> int:
    """Reset active trips (all, or one scope/kind); spend counts from now on again."""
    rows = await conn.fetch(
        """UPDATE guard_trips SET reset_at = $3, reset_by = $4
           WHERE reset_at IS NULL AND ($1::text IS NULL OR scope = $1)
                 AND ($2::text IS NULL OR kind = $2) RETURNING scope, kind""",
        scope, kind, now, by)
    if kind in (None, "spend_daily"):
        await conn.execute(
            """UPDATE guard_spend SET offset_amount = amount
               WHERE day = $1 AND ($2::text IS NULL OR scope = $2)""", day, scope)
    return len(rows)


async def active_trips(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT scope, kind, reason, detail, tripped_at FROM guard_trips
           WHERE reset_at IS NULL ORDER BY tripped_at""")
    return [dict(r) for r in rows]


async def refusals(conn: asyncpg.Connection, *, since: datetime | None, reason: str | None,
                   limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, at, last_at, stage, reason, detail, number, merchant_id, callback_id,
                  edge_call_id, occurrences FROM guard_refusals
           WHERE ($1::timestamptz IS NULL OR last_at >= $1)
             AND ($2::text IS NULL OR reason = $2)
           ORDER BY id DESC LIMIT $3""", since, reason, limit)
    return [dict(r) for r in rows]


async def locked_numbers(conn: asyncpg.Connection, now: datetime) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT number, locked_until, locked_at, locks FROM guard_numbers
           WHERE locked_until > $1 ORDER BY locked_at DESC LIMIT 1000""", now)
    return [dict(r) for r in rows]


async def record_alert(conn: asyncpg.Connection, *, at: datetime, kind: str, key: str,
                       message: str, details: dict[str, Any], repeat_s: int = 0) -> bool:
    """Record the alert; False (nothing recorded) when the same kind and key was recorded
    less than ``repeat_s`` before ``at``: another process raised it and sends it."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('guard_alert:' || $1))",
                           f"{kind}/{key}")
        inserted = await conn.fetchval(
            """INSERT INTO guard_alerts (at, kind, key, message, details)
               SELECT $1::timestamptz, $2, $3, $4, $5
               WHERE NOT EXISTS (SELECT 1 FROM guard_alerts WHERE kind = $2 AND key = $3
                                 AND at > $1::timestamptz - $6::int * interval '1 second'
                                 AND at <= $1::timestamptz)
               RETURNING true""", at, kind, key, message,
            json.loads(json.dumps(details, default=str)), repeat_s)
    return bool(inserted)
