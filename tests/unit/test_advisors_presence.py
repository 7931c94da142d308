"""One advisor's state machine (advisors.presence): examples, then invariants under random
event sequences (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import advisors
from advisors.model import AfterCallMode, Desk, Rules, State, Via
from advisors.presence import (
    Answered,
    AutoBreak,
    Command,
    ConsultationEnded,
    Event,
    GoOffline,
    GoOnline,
    Ignored,
    Notify,
    Offered,
    Presence,
    RefuseOffer,
    RingMissed,
    SetBreak,
    SetWorking,
    StartWrapUpTimer,
    WrapUpElapsed,
    transition,
)
from tests.purity import io_imports

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
RULES = Rules(after_call=AfterCallMode.TIMER, wrap_up_s=30, misses_before_break=3)


def run(p: Presence, *events: Event, rules: Rules = RULES) -> tuple[Presence, list[Command]]:
    out: list[Command] = []
    for ev in events:
        p, cmds = transition(p, ev, rules)
        out += cmds
    return p, out


def at(s: int) -> datetime:
    return T0 + timedelta(seconds=s)


# --- import rule ---------------------------------------------------------------------------

PURE = ["model.py", "presence.py", "assignment.py"]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    banned = io_imports(Path(advisors.__file__).parent / module,
                        ("time", "shared.ari", "shared.db", "shared.http", "advisors.store",
                         "advisors.live", "advisors.http"))
    assert banned == [], f"{module} imports I/O modules: {banned}"


# --- examples ------------------------------------------------------------------------------

def test_online_offer_answer_end_wraps_up_then_the_timer_brings_standby_back() -> None:
    p, cmds = run(Presence(), GoOnline(at(0), Via.API))
    assert p.state is State.STANDBY and p.idle_since == at(0)
    assert cmds == [Notify(State.OFFLINE, State.STANDBY, Desk.STANDBY, "")]
    p, cmds = run(p, Offered(at(5), "c1"))
    assert p.state is State.RINGING and p.idle_since == at(5)
    p, _ = run(p, Answered(at(7), "c1"))
    assert p.state is State.TALKING
    p, cmds = run(p, ConsultationEnded(at(70), "c1"))
    assert p.state is State.WRAP_UP
    assert cmds == [Notify(State.TALKING, State.WRAP_UP, Desk.WRAP_UP, ""),
                    StartWrapUpTimer(30, 1)]
    p, cmds = run(p, WrapUpElapsed(at(100), 1))
    assert p.state is State.STANDBY and p.idle_since == at(100)


def test_manual_after_call_work_stays_until_the_advisor_changes_it() -> None:
    rules = Rules(after_call=AfterCallMode.MANUAL)
    p, cmds = run(Presence(), GoOnline(at(0), Via.PHONE), Offered(at(1), "c"),
                  Answered(at(2), "c"), ConsultationEnded(at(3), "c"), rules=rules)
    assert p.state is State.WRAP_UP
    assert not [c for c in cmds if isinstance(c, StartWrapUpTimer)]
    p, _ = run(p, GoOnline(at(50), Via.API), rules=rules)
    assert p.state is State.STANDBY


def test_a_stale_wrap_up_timer_is_ignored() -> None:
    p, _ = run(Presence(), GoOnline(at(0), Via.API), Offered(at(1), "a"), Answered(at(2), "a"),
               ConsultationEnded(at(3), "a"), SetWorking(at(4), Via.API))
    p2, cmds = run(p, WrapUpElapsed(at(33), 1))
    assert p2 == p and isinstance(cmds[0], Ignored)


def test_the_third_missed_ring_in_a_row_puts_the_advisor_on_break_with_a_reason() -> None:
    p, _ = run(Presence(), GoOnline(at(0), Via.API))
    p, _ = run(p, Offered(at(1), "a"), RingMissed(at(21), "a"),
               Offered(at(22), "b"), RingMissed(at(42), "b"))
    assert p.state is State.STANDBY and p.misses == 2
    p, _ = run(p, Offered(at(43), "c"))
    p, cmds = run(p, RingMissed(at(63), "c"))
    assert p.state is State.BREAK and p.reason == "missed 3 calls in a row"
    assert cmds == [Notify(State.RINGING, State.BREAK, Desk.BREAK, "missed 3 calls in a row"),
                    AutoBreak("missed 3 calls in a row", 3)]
    p, _ = run(p, GoOnline(at(100), Via.PHONE))
    assert p.state is State.STANDBY and p.misses == 0 and p.reason == ""


def test_an_answer_resets_the_misses() -> None:
    p, _ = run(Presence(), GoOnline(at(0), Via.API), Offered(at(1), "a"), RingMissed(at(2), "a"),
               Offered(at(3), "b"), RingMissed(at(4), "b"), Offered(at(5), "c"),
               Answered(at(6), "c"))
    assert p.misses == 0


def test_offers_are_refused_unless_standby_with_a_free_line() -> None:
    for setup in (SetWorking(at(0), Via.API), SetBreak(at(0), Via.API),
                  GoOffline(at(0), Via.API)):
        p, cmds = run(Presence(), GoOnline(at(0), Via.API), setup, Offered(at(1), "x"))
        assert p.sessions == () and isinstance(cmds[-1], RefuseOffer)
    p, cmds = run(Presence(), GoOnline(at(0), Via.API), Offered(at(1), "a"), Offered(at(2), "b"))
    assert [s.consultation_id for s in p.sessions] == ["a"]
    assert cmds[-1] == RefuseOffer("b", "1 of 1 consultations in progress")


def test_two_lines_of_their_own_take_two_consultations() -> None:
    p, cmds = run(Presence(max_concurrent=2), GoOnline(at(0), Via.API), Offered(at(1), "a"),
                  Answered(at(2), "a"), Offered(at(3), "b"))
    assert p.load == 2 and p.state is State.TALKING
    p, _ = run(p, ConsultationEnded(at(4), "a"))
    assert p.state is State.RINGING and p.desk is Desk.STANDBY


def test_break_during_a_call_keeps_the_call_and_skips_after_call_work() -> None:
    p, _ = run(Presence(), GoOnline(at(0), Via.API), Offered(at(1), "a"), Answered(at(2), "a"),
               SetBreak(at(3), Via.API, "lunch"))
    assert p.state is State.TALKING and p.desk is Desk.BREAK
    p, cmds = run(p, ConsultationEnded(at(9), "a"))
    assert p.state is State.BREAK and p.reason == "lunch"
    assert not [c for c in cmds if isinstance(c, StartWrapUpTimer)]


def test_customer_hanging_up_during_the_ring_is_no_miss_and_no_wrap_up() -> None:
    p, _ = run(Presence(), GoOnline(at(0), Via.API), Offered(at(1), "a"),
               ConsultationEnded(at(2), "a"))
    assert p.state is State.STANDBY and p.misses == 0


def test_zero_wrap_up_seconds_go_straight_back_to_standby() -> None:
    p, _ = run(Presence(), GoOnline(at(0), Via.API), Offered(at(1), "a"), Answered(at(2), "a"),
               ConsultationEnded(at(9), "a"), rules=Rules(wrap_up_s=0))
    assert p.state is State.STANDBY and p.idle_since == at(9)


def test_events_for_unknown_consultations_are_ignored() -> None:
    p0, _ = run(Presence(), GoOnline(at(0), Via.API))
    for ev in (Answered(at(1), "zz"), RingMissed(at(1), "zz"), ConsultationEnded(at(1), "zz")):
        p, cmds = run(p0, ev)
        assert p == p0 and isinstance(cmds[0], Ignored)


# --- invariants under random sequences -------------------------------------------------------

CIDS = ["a", "b", "c"]
VIAS = st.sampled_from(list(Via))


def events() -> st.SearchStrategy[list[tuple[int, object]]]:
    kinds = st.one_of(
        st.builds(lambda v: ("online", v), VIAS), st.builds(lambda v: ("offline", v), VIAS),
        st.builds(lambda v: ("working", v), VIAS), st.builds(lambda v: ("break", v), VIAS),
        st.tuples(st.sampled_from(["offer", "answer", "miss", "end"]), st.sampled_from(CIDS)),
        st.tuples(st.just("timer"), st.integers(0, 4)))
    return st.lists(st.tuples(st.integers(0, 120), kinds), max_size=60)


def to_event(now: datetime, kind: tuple[str, object]) -> Event:
    name, arg = kind
    match name:
        case "online":
            return GoOnline(now, arg)  # type: ignore[arg-type]
        case "offline":
            return GoOffline(now, arg)  # type: ignore[arg-type]
        case "working":
            return SetWorking(now, arg)  # type: ignore[arg-type]
        case "break":
            return SetBreak(now, arg)  # type: ignore[arg-type]
        case "offer":
            return Offered(now, str(arg))
        case "answer":
            return Answered(now, str(arg))
        case "miss":
            return RingMissed(now, str(arg))
        case "end":
            return ConsultationEnded(now, str(arg))
    return WrapUpElapsed(now, int(arg))  # type: ignore[call-overload]


@settings(max_examples=400, deadline=None)
@given(seq=events(), max_concurrent=st.integers(1, 3), misses=st.integers(0, 3),
       mode=st.sampled_from(list(AfterCallMode)))
def test_invariants_under_random_event_sequences(
        seq: list[tuple[int, tuple[str, object]]], max_concurrent: int, misses: int,
        mode: AfterCallMode) -> None:
    rules = Rules(after_call=mode, wrap_up_s=10, misses_before_break=misses)
    p = Presence(max_concurrent=max_concurrent)
    now = T0
    for gap, kind in seq:
        now += timedelta(seconds=gap)
        before = p
        event = to_event(now, kind)
        p, cmds = transition(p, event, rules)
        # never more consultations than the advisor's maximum
        assert p.load <= p.max_concurrent
        # an offer is taken only by an advisor in standby with a free line
        if isinstance(event, Offered) and p.load > before.load:
            assert before.desk is Desk.STANDBY and before.load < before.max_concurrent
        # the shown state follows the sessions
        assert (p.state in (State.RINGING, State.TALKING)) == bool(p.sessions)
        # after-call work only with no consultation in progress
        if p.desk is Desk.WRAP_UP:
            assert p.sessions == ()
        # a change is always notified, and only a change
        notified = [c for c in cmds if isinstance(c, Notify)]
        changed = (p.state, p.desk) != (before.state, before.desk)
        assert len(notified) == int(changed)
        if notified:
            assert (notified[0].before, notified[0].after) == (before.state, p.state)
        # misses reach the limit only by an automatic break
        if misses and p.desk is Desk.STANDBY:
            assert p.misses < misses
        # an automatic break happens exactly when the misses reach the limit in standby
        if any(isinstance(c, AutoBreak) for c in cmds):
            assert p.desk is Desk.BREAK and p.misses == misses
        # an ignored or refused event changes nothing
        if cmds and isinstance(cmds[0], (Ignored, RefuseOffer)):
            assert p == before
        # unique consultation ids
        ids = [s.consultation_id for s in p.sessions]
        assert len(ids) == len(set(ids))
