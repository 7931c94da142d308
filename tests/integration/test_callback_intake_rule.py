"""The intake's rule, written twice: the statement that stores a batch (``callback_intake``,
migration 1020) refuses and accepts exactly as the Python rule
(:class:`callback_server.guard.service.IntakeScreen`: destination policy, lists, lock,
velocity, brake, requests judged in order, each as if the earlier ones were stored), the
reason and its detail text included, over random facts, settings and batches; and two
requests for one number sent at once to two servers make one job."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from callback_server.guard.brake import BrakeSettings
from callback_server.guard.service import Guard, IntakeScreen
from callback_server.guard.settings import GuardSettings
from callback_server.guard.store import brake_since
from callback_server.guard.testing import FakeClock
from callback_server.guard.velocity import Limits, VelocitySettings
from callback_server.intake import CallbackIntake
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.store.intake_store import Intake, _intake_args
from callback_server.testing import merchant
from shared.destination import PolicySettings
from shared.phone import E164
from tests.harness.sync import run_async
from tests.integration import callback_db

pytestmark = pytest.mark.integration

T = TypeVar("T")
ACME = merchant("acme")
T0 = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
NAMES = itertools.count()
#: JP mobile and fixed line (most: the velocity rules and the brake judge only numbers
#: the policy lets through), toll free, premium, IP phone, US, UK personal, too short
DIALABLE = ("819012345678", "819087654321", "819011112222", "81312345678", "81612345678")
NUMBERS = DIALABLE + ("81120123456", "81990123456", "81501234567", "12025550123",
                      "447012345678", "8190123")

pool, clean = callback_db.fixtures([ACME])


limits_st = st.builds(Limits, concurrent=st.integers(1, 2), per_hour=st.integers(1, 4),
                      per_day=st.integers(1, 6), min_gap_s=st.sampled_from([0, 1, 60, 300]))
settings_st = st.builds(
    GuardSettings,
    policy=st.sampled_from([PolicySettings(), PolicySettings(allow_prefixes=("8199",)),
                            PolicySettings(deny_prefixes=("81312",)),
                            PolicySettings(countries=frozenset({"JP", "US"}))]),
    velocity=st.builds(VelocitySettings, known=limits_st, unknown=limits_st),
    brake=st.builds(BrakeSettings, threshold=st.integers(0, 2), window_s=st.just(600)))
#: seconds ago, with microseconds (the detail texts' rounding and ISO forms): within the
#: minimum gaps, the hour, the day, or before it
ago_st = st.one_of(st.floats(-30, 400), st.floats(400, 3600), st.floats(3600, 86_400),
                   st.floats(86_400, 2 * 86_400), st.sampled_from([0.5, 1.5, 59.5, 60.0])
                   ).map(lambda s: round(s, 6))
def rarely(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    """None three times in four."""
    return st.tuples(st.integers(0, 3), strategy).map(lambda x: x[1] if x[0] == 3 else None)


list_st = rarely(st.tuples(st.sampled_from(["", "fraud"]), st.one_of(st.none(), ago_st)))
facts_st = st.fixed_dictionaries({
    "accepted": st.lists(ago_st, max_size=5),
    "active": st.sampled_from([0, 0, 0, 1, 2]),
    "confirmations": st.sampled_from([None, 0, 1]),
    "locked": rarely(ago_st),
    "block": list_st,
    "allow": list_st,
})


@st.composite
def case_st(draw: st.DrawFn) -> dict[str, Any]:
    numbers = draw(st.lists(st.one_of(st.sampled_from(DIALABLE), st.sampled_from(NUMBERS)),
                            min_size=1, max_size=4, unique=True))
    batch = draw(st.lists(st.tuples(st.integers(0, len(numbers) - 1), st.integers(0, 7)),
                          min_size=1, max_size=7))
    return {"settings": draw(settings_st), "now": T0 + timedelta(
                microseconds=draw(st.integers(0, 999_999))),
            "facts": {n: draw(facts_st) for n in numbers}, "brake": draw(st.integers(0, 3)),
            "batch": [(numbers[i], edge) for i, edge in batch]}


async def arrange(conn: asyncpg.Connection, name: str, now: datetime,
                  facts: dict[str, dict[str, Any]], brake: int) -> None:
    """The facts of each number, and ``brake`` new numbers left unconfirmed, as rows."""
    def at(ago: float) -> datetime:
        return now - timedelta(seconds=ago)
    seq = itertools.count()
    for digits, f in facts.items():
        number = "+" + digits
        for ago in f["accepted"]:
            await conn.execute(
                "INSERT INTO guard_callbacks (callback_id, number, merchant_id, known,"
                " accepted_at) VALUES ($1, $2, 'acme', false, $3)",
                f"{name}-gc-{next(seq)}", number, at(ago))
        for _ in range(f["active"]):
            i = next(seq)
            await conn.execute(
                "INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller,"
                " received_at, message_id, max_attempts, next_attempt_at)"
                " VALUES ($1, $1, 'acme', $2, $3, $1, 1, $3)", f"{name}-a-{i}", number, now)
        if f["confirmations"] is not None or f["locked"] is not None:
            await conn.execute(
                "INSERT INTO guard_numbers (number, first_seen_at, confirmations, locked_until)"
                " VALUES ($1, $2, $3, $4)", number, now, f["confirmations"] or 0,
                None if f["locked"] is None else at(-f["locked"]))
        for kind in ("block", "allow"):
            if f[kind] is not None:
                reason, expires = f[kind]
                await conn.execute(
                    "INSERT INTO guard_lists (number, list, reason, created_at, expires_at)"
                    " VALUES ($1, $2, $3, $4, $5)", number, kind, reason, now,
                    None if expires is None else at(-expires))
    for i in range(brake):
        await conn.execute(
            "INSERT INTO guard_rounds (callback_id, attempt_no, number, merchant_id, known,"
            " rang, confirmed, ended_at) VALUES ($1, 1, $2, 'acme', false, true, false, $3)",
            f"{name}-r-{i}", f"+8170000000{i}", now - timedelta(seconds=60))


def pythons(guard: Guard, now: datetime, facts: list[asyncpg.Record],
            batch: list[tuple[str, IntakeRequest]]) -> list[tuple[str, str | None, str | None]]:
    """The batch as the Python rule decides it: (outcome, reason, detail) a message."""
    screen: IntakeScreen = guard.intake_screen(now, facts, 0.0)
    calls: dict[str, tuple[str, str | None, str | None]] = {}
    out = []
    for _, req in batch:
        known = calls.get(req.edge_call_id)
        if known is not None:
            out.append(("call", known[1], None))
            continue
        verdict = screen.screen(req.caller).verdict
        if verdict is None:
            screen.accepted(req.caller)
            decided: tuple[str, str | None, str | None] = ("queued", None, None)
        else:
            decided = ("refused", str(verdict.reason), verdict.detail)
        calls[req.edge_call_id] = decided
        out.append(decided)
    return out


async def compared(url: str, case: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """One batch by ``callback_intake`` against :class:`IntakeScreen`, on the same facts,
    in a transaction rolled back."""
    conn = await asyncpg.connect(url)
    try:
        tx = conn.transaction()
        await tx.start()
        name = f"p{next(NAMES)}"
        now, guard_settings = case["now"], case["settings"]
        await arrange(conn, name, now, case["facts"], case["brake"])
        batch = [(f"{name}-m{i:02d}", IntakeRequest(f"{name}-e{edge}", "acme", E164(digits),
                                                     None, now, now, None))
                 for i, (digits, edge) in enumerate(case["batch"])]
        guard = Guard(conn, guard_settings, clock=FakeClock(now))  # type: ignore[arg-type]
        facts = await conn.fetch("SELECT * FROM guard_number_facts($1, $2, $3)",
                                 [str(req.caller) for _, req in batch], now,
                                 brake_since(now, guard_settings.brake.window_s))
        python = pythons(guard, now, facts, batch)
        rows = await conn.fetch(
            "SELECT * FROM callback_intake($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
            " $13, $14, $15, $16, $17, $18, $19, $20)",
            *_intake_args([(mid, Intake(req, ACME)) for mid, req in batch], guard))
        sql = [(r["outcome"], r["reason"], r["detail"]) for r in rows]
        assert sql == python, (case, facts)
        refused = sum(1 for outcome, *_ in python if outcome == "refused")
        assert await conn.fetchval("SELECT count(*) FROM guard_refusals") == refused
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE kind = "
                                   "'callback_status'") == refused
        assert await conn.fetchval(
            "SELECT count(*) FROM guard_callbacks WHERE callback_id = ANY($1)",
            [r["callback_id"] for r in rows if r["outcome"] == "queued"]) == \
            sum(1 for outcome, *_ in python if outcome == "queued")
        await tx.rollback()
    finally:
        await conn.close()
    return python


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(case=case_st())
def test_the_statements_intake_decisions_are_pythons(pool: asyncpg.Pool, pg_url: str,
                                                     case: dict[str, Any]) -> None:
    """``callback_intake`` refuses (reason and detail) and accepts as ``IntakeScreen``
    over random velocity and brake settings, destination policies, facts (counts, gaps
    with microseconds, locks, confirmations, block and allow lists, expired ones too)
    and batches (one number several times, one edge call twice)."""
    for outcome, reason, _ in run_async(lambda: compared(pg_url, case)):
        event(reason or outcome)


# --- per-number serialisation ---------------------------------------------------------------

async def test_two_requests_for_one_number_at_once_on_two_servers_make_one_job(
        clean: asyncpg.Pool) -> None:
    """Two callback servers (two batchers, two connections) take a request each for one
    number at the same moment: the number's lock serialises them, the second is judged
    on the first's row, one job is queued and the other refused ``velocity_concurrent``;
    requests for other numbers go through meanwhile (no global lock)."""
    pool = clean
    servers = [CallbackIntake(CallbackStore(pool, owner=f"s{i}",
                                            guard=Guard(pool, GuardSettings())))
               for i in range(2)]
    now = datetime.now(UTC)

    def req(edge: str, digits: str) -> IntakeRequest:
        return IntakeRequest(edge, "acme", E164(digits), None, now, now, None)
    try:
        for round_no in range(5):
            number = f"8190555{round_no:05d}"
            answers = await asyncio.gather(
                servers[0].submit(f"x{round_no}-a", req(f"x{round_no}-a", number), ACME),
                servers[1].submit(f"x{round_no}-b", req(f"x{round_no}-b", number), ACME),
                servers[1].submit(f"y{round_no}", req(f"y{round_no}", f"8190666{round_no:05d}"),
                                  ACME))
            assert sorted(body["status"] for _, body in answers[:2]) == ["queued", "refused"]
            assert [body.get("reason") for _, body in answers[:2]
                    if body["status"] == "refused"] == ["velocity_concurrent"]
            assert answers[2][1]["status"] == "queued"
            assert await pool.fetchval("SELECT count(*) FROM callback_requests WHERE caller = $1"
                                       " AND status = 'queued'", "+" + number) == 1
    finally:
        for server in servers:
            await server.close()
    assert await pool.fetchval("SELECT count(*) FROM guard_refusals") == 5
