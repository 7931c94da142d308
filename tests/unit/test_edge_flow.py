"""The edge's inbound call flow: events in, commands out. No I/O anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edge_server import flow
from edge_server.flow import (
    Announcing,
    Call,
    Deciding,
    Done,
    Idle,
    Refusing,
    State,
    StoreOverdue,
    Storing,
    is_terminal,
    transition,
)
from edge_server.flow_messages import (
    PROMPT_DIAL_186,
    PROMPT_RECEIVED,
    AnnounceMode,
    Answer,
    CallArrived,
    CallerHungUp,
    CancelRequest,
    CancelTimer,
    Command,
    ContinueDirect,
    Decided,
    DecisionUnavailable,
    Event,
    FlowTimings,
    Hangup,
    HangupReason,
    Log,
    MerchantSettings,
    Outcome,
    Play,
    PlaybackFinished,
    RecordCall,
    ReleaseToCallback,
    RequestDecision,
    RequestStored,
    StartTimer,
    StoreFailed,
    StoreRequest,
    Timeout,
    TimerName,
    edge_call_id_for,
)
from shared.phone import E164

MOBILE = "09012345678"
MOBILE_E164 = E164("819012345678")
DIALED = E164("81120123456")
EARLY = MerchantSettings("acme")
ANSWER = MerchantSettings("acme", announce_mode=AnnounceMode.ANSWER)


def arrive(caller: str | None = MOBILE, presentation: str | None = "allowed_not_screened",
           merchant: MerchantSettings | None = EARLY, dialed: E164 | None = DIALED,
           asserted: str | None = None) -> CallArrived:
    return CallArrived("1700000000.1", caller, presentation, dialed, merchant,
                       asserted_raw=asserted)


def run(events: list[Event], state: State | None = None) -> tuple[State, list[Command]]:
    """Feed events in order; return the final state and every command emitted."""
    current: State = state or Idle()
    emitted: list[Command] = []
    for event in events:
        current, commands = transition(current, event)
        emitted += commands
    return current, emitted


def of(kind: type[Command], commands: list[Command]) -> list[Command]:
    return [c for c in commands if isinstance(c, kind)]


def without_logs(commands: list[Command]) -> list[Command]:
    return [c for c in commands if not isinstance(c, Log | StartTimer | CancelTimer)]


# --- purity -------------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["flow.py", "flow_messages.py"])
def test_flow_modules_import_no_io(module: str) -> None:
    path = Path(flow.__file__).parent / module
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    forbidden = {m for m in imported
                 if m.split(".")[0] in {"aiohttp", "asyncpg", "asyncio", "socket", "time"}
                 or m.startswith("shared.ari") or m in {"shared.db", "shared.outbox"}}
    assert not forbidden, f"{module} must stay pure, imports {forbidden}"


# --- the happy paths ----------------------------------------------------------------------

def test_early_media_happy_path_stores_before_any_prompt_and_never_answers() -> None:
    state, first = transition(Idle(), arrive())
    assert isinstance(state, Deciding)
    assert RequestDecision(MOBILE_E164, "acme", AnnounceMode.EARLY_MEDIA) in first
    assert StartTimer(TimerName.DECIDE, 1.0) in first

    state, second = transition(state, Decided(callback=True, reason="mobile: cheaper"))
    assert isinstance(state, Storing)
    assert second[-1] == StoreRequest(edge_call_id_for("1700000000.1"), "1700000000.1", "acme",
                                      MOBILE_E164, DIALED, AnnounceMode.EARLY_MEDIA,
                                      "mobile: cheaper")
    assert not of(Play, first + second), "nothing is said before the request is stored"

    state, third = transition(state, RequestStored("edge-1700000000.1"))
    assert isinstance(state, Announcing)
    assert of(Play, third) == [Play(PROMPT_RECEIVED, early=True)]

    state, fourth = transition(state, PlaybackFinished())
    assert state == Done(Outcome.RELEASED)
    assert without_logs(fourth) == [Hangup(HangupReason.BUSY),
                                    ReleaseToCallback("edge-1700000000.1", Outcome.RELEASED)]
    assert not of(Answer, first + second + third + fourth)


def test_answer_mode_answers_after_storing_then_hangs_up_normally() -> None:
    state, commands = run([arrive(merchant=ANSWER), Decided(True, "ok"), RequestStored("r1")])
    assert isinstance(state, Announcing)
    tail = commands[-3:]
    # 4.5 s: the guard ends the call with margin under the 5 s cap on the line
    assert tail == [Answer(), StartTimer(TimerName.ANNOUNCE, 4.5),
                    Play(PROMPT_RECEIVED, early=False)]
    assert commands.index(Answer()) > commands.index(of(StoreRequest, commands)[0])
    state, end = transition(state, PlaybackFinished())
    assert without_logs(end) == [Hangup(HangupReason.NORMAL),
                                 ReleaseToCallback("r1", Outcome.RELEASED)]


def test_answer_mode_guard_cuts_the_prompt_at_five_seconds() -> None:
    state, _ = run([arrive(merchant=ANSWER), Decided(True, "ok"), RequestStored("r1")])
    state, commands = transition(state, Timeout(TimerName.ANNOUNCE))
    assert state == Done(Outcome.RELEASED_AFTER_GUARD)
    assert without_logs(commands) == [Hangup(HangupReason.NORMAL),
                                      ReleaseToCallback("r1", Outcome.RELEASED_AFTER_GUARD)]


def test_answer_guard_cannot_be_configured_above_five_seconds() -> None:
    with pytest.raises(ValueError, match="answer_guard_s"):
        FlowTimings(answer_guard_s=5.5)
    with pytest.raises(ValueError, match="store_s"):
        FlowTimings(store_s=0)
    assert FlowTimings(answer_guard_s=3.0).answer_guard_s == 3.0


def test_early_media_guard_hangs_up_busy_and_still_releases() -> None:
    state, _ = run([arrive(), Decided(True, "ok"), RequestStored("r1")])
    state, commands = transition(state, Timeout(TimerName.ANNOUNCE))
    assert without_logs(commands) == [Hangup(HangupReason.BUSY),
                                      ReleaseToCallback("r1", Outcome.RELEASED_AFTER_GUARD)]
    assert is_terminal(state)


def test_playback_failure_still_ends_the_call_and_releases() -> None:
    state, _ = run([arrive(), Decided(True, "ok"), RequestStored("r1")])
    state, commands = transition(state, PlaybackFinished(failed=True))
    assert of(Hangup, commands) == [Hangup(HangupReason.BUSY)]
    assert of(ReleaseToCallback, commands) == [ReleaseToCallback("r1", Outcome.RELEASED)]
    assert any(isinstance(c, Log) and c.warning for c in commands)


# --- hang-ups -----------------------------------------------------------------------------

@pytest.mark.parametrize("merchant", [EARLY, ANSWER])
def test_hang_up_mid_announcement_still_releases_without_a_hangup(
        merchant: MerchantSettings) -> None:
    state, _ = run([arrive(merchant=merchant), Decided(True, "ok"), RequestStored("r1")])
    state, commands = transition(state, CallerHungUp(cause=16))
    assert state == Done(Outcome.RELEASED_MID_ANNOUNCEMENT)
    assert without_logs(commands) == [
        ReleaseToCallback("r1", Outcome.RELEASED_MID_ANNOUNCEMENT)]
    assert CancelTimer(TimerName.ANNOUNCE) in commands


def test_hang_up_while_storing_releases_once_stored() -> None:
    state, _ = run([arrive(), Decided(True, "ok"), CallerHungUp()])
    assert isinstance(state, Storing) and state.caller_gone
    state, commands = transition(state, RequestStored("r1"))
    assert state == Done(Outcome.RELEASED_EARLY_HANGUP)
    assert without_logs(commands) == [
        ReleaseToCallback("r1", Outcome.RELEASED_EARLY_HANGUP)]


def test_hang_up_while_storing_then_store_failure_sends_nothing_to_a_dead_channel() -> None:
    state, commands = run([arrive(), Decided(True, "ok"), CallerHungUp(), StoreFailed("db")])
    assert state == Done(Outcome.STORE_FAILED)
    assert not of(Hangup, commands)


def test_hang_up_before_the_decision_queues_nothing() -> None:
    state, commands = run([arrive(), CallerHungUp()])
    assert state == Done(Outcome.ABANDONED)
    assert not of(StoreRequest, commands) and not of(ReleaseToCallback, commands)
    assert of(RecordCall, commands)[0].outcome is Outcome.ABANDONED  # type: ignore[union-attr]


def test_hang_up_before_arrival_is_terminal() -> None:
    assert transition(Idle(), CallerHungUp()) == (Done(Outcome.ABANDONED), [])


# --- caller ID refusals -------------------------------------------------------------------

@pytest.mark.parametrize(("caller", "presentation", "outcome"), [
    ("18409012345678", "allowed_not_screened", Outcome.WITHHELD),   # 184 prefix
    ("anonymous", "allowed_not_screened", Outcome.WITHHELD),        # no PAI
    ("", "allowed", Outcome.WITHHELD),
    (None, None, Outcome.WITHHELD),
    ("09012345678", "prohib_not_screened", Outcome.WITHHELD),       # PAI number, prohibited
    ("unavailable", None, Outcome.WITHHELD),
    ("090-1234-abcd", "allowed", Outcome.MALFORMED),
    ("sip:evil@example.com", "allowed", Outcome.MALFORMED),
    ("'; DROP TABLE x;--", "allowed", Outcome.MALFORMED),
    ("0901234", "allowed", Outcome.INVALID),
])
def test_withheld_or_bad_caller_id_plays_dial_186_as_early_media_then_rejects(
        caller: str | None, presentation: str | None, outcome: Outcome) -> None:
    state, commands = transition(Idle(), arrive(caller, presentation))
    assert isinstance(state, Refusing)
    assert of(Play, commands) == [Play(PROMPT_DIAL_186, early=True)]
    assert not of(Answer, commands) and not of(StoreRequest, commands)
    assert not of(RequestDecision, commands)
    record = of(RecordCall, commands)[0]
    assert isinstance(record, RecordCall) and record.outcome is outcome
    assert record.caller is None
    assert any(isinstance(c, Log) and c.code == outcome for c in commands), "reason-coded log"
    state, end = transition(state, PlaybackFinished())
    assert state == Done(outcome)
    assert end == [CancelTimer(TimerName.REFUSAL), Hangup(HangupReason.BUSY)]


def test_refusal_in_answer_mode_answers_and_hangs_up_normally() -> None:
    state, commands = transition(Idle(), arrive("anonymous", merchant=ANSWER))
    assert of(Answer, commands) == [Answer()]
    assert of(Play, commands) == [Play(PROMPT_DIAL_186, early=False)]
    _, end = transition(state, PlaybackFinished())
    assert of(Hangup, end) == [Hangup(HangupReason.NORMAL)]


def test_refusal_guard_hangs_up_if_the_prompt_never_ends() -> None:
    state, commands = transition(Idle(), arrive("anonymous"))
    assert StartTimer(TimerName.REFUSAL, 15.0) in commands
    state, end = transition(state, Timeout(TimerName.REFUSAL))
    assert of(Hangup, end) == [Hangup(HangupReason.BUSY)] and is_terminal(state)


def test_caller_hanging_up_during_refusal_needs_no_hangup() -> None:
    state, _ = transition(Idle(), arrive("anonymous"))
    state, end = transition(state, CallerHungUp())
    assert end == [CancelTimer(TimerName.REFUSAL)] and is_terminal(state)


def test_asserted_identity_is_used_when_from_is_empty() -> None:
    state, commands = transition(Idle(), arrive("", asserted="+819012345678"))
    assert isinstance(state, Deciding) and state.call.caller == MOBILE_E164


def test_asserted_identity_never_overrides_a_withheld_presentation() -> None:
    state, _ = transition(Idle(), arrive("", "prohib_not_screened", asserted="+819012345678"))
    assert isinstance(state, Refusing)


def test_186_prefix_is_stripped() -> None:
    state, _ = transition(Idle(), arrive("18609012345678"))
    assert isinstance(state, Deciding) and state.call.caller == MOBILE_E164


# --- unknown numbers, destinations --------------------------------------------------------

@pytest.mark.parametrize("dialed", [DIALED, None])
def test_unknown_dialled_number_is_unallocated_at_once(dialed: E164 | None) -> None:
    state, commands = transition(Idle(), arrive(merchant=None, dialed=dialed))
    assert state == Done(Outcome.UNALLOCATED)
    assert without_logs(commands) == [Hangup(HangupReason.UNALLOCATED)]


@pytest.mark.parametrize("caller", ["+14155550123", "0120123456", "0570012345"])
def test_foreign_or_non_callable_callers_are_kept_direct(caller: str) -> None:
    state, commands = transition(Idle(), arrive(caller))
    assert state == Done(Outcome.NOT_ALLOWED)
    assert without_logs(commands)[0] == ContinueDirect("operator")
    assert not of(StoreRequest, commands) and not of(Play, commands)


def test_fixed_line_caller_is_a_permitted_destination() -> None:
    state, _ = transition(Idle(), arrive("0312345678"))
    assert isinstance(state, Deciding)


@pytest.mark.parametrize("caller", ["090-1234-5678", "090 1234 5678", "(090) 1234-5678",
                                    "０９０−１２３４−５６７８", "186-090-1234-5678"])
def test_caller_id_with_separators_is_called_back_not_told_to_dial_186(caller: str) -> None:
    state, commands = run([arrive(caller), Decided(callback=True, reason="mobile: cheaper"),
                           RequestStored("edge-1700000000.1")])
    assert isinstance(state, Announcing)
    assert of(StoreRequest, commands) == [StoreRequest(
        edge_call_id_for("1700000000.1"), "1700000000.1", "acme", MOBILE_E164, DIALED,
        AnnounceMode.EARLY_MEDIA, "mobile: cheaper")]
    assert Play(PROMPT_DIAL_186, early=True) not in commands
    assert of(Play, commands) == [Play(PROMPT_RECEIVED, early=True)]


# --- the decision ---------------------------------------------------------------------------

def test_decision_to_keep_the_call_routes_to_the_operator() -> None:
    merchant = MerchantSettings("acme", operator_extension="acme-desk")
    state, _ = transition(Idle(), arrive(merchant=merchant))
    state, commands = transition(state, Decided(False, "fixed line: direct"))
    assert state == Done(Outcome.KEPT_DIRECT)
    assert without_logs(commands) == [
        ContinueDirect("acme-desk"),
        RecordCall(edge_call_id_for("1700000000.1"), "1700000000.1", "acme", MOBILE_E164,
                   DIALED, Outcome.KEPT_DIRECT, "fixed line: direct")]
    assert CancelTimer(TimerName.DECIDE) in commands


@pytest.mark.parametrize("event", [DecisionUnavailable("no rates loaded"),
                                   Timeout(TimerName.DECIDE)])
def test_no_routing_data_defaults_to_call_back(event: Event) -> None:
    state, commands = run([arrive(), event])
    assert isinstance(state, Storing)
    store = of(StoreRequest, commands)[0]
    assert isinstance(store, StoreRequest) and "merchant default call back" in \
        store.decision_reason


def test_no_routing_data_with_merchant_default_direct_keeps_the_call() -> None:
    merchant = MerchantSettings("acme", callback_when_unrated=False)
    state, commands = run([arrive(merchant=merchant), DecisionUnavailable("no deck")])
    assert state == Done(Outcome.KEPT_DIRECT)
    assert of(ContinueDirect, commands) == [ContinueDirect("operator")]


# --- store failure ------------------------------------------------------------------------

def test_store_failure_rejects_with_congestion_and_never_announces() -> None:
    state, commands = run([arrive(), Decided(True, "ok"), StoreFailed("connection refused")])
    assert state == Done(Outcome.STORE_FAILED)
    assert of(Hangup, commands) == [Hangup(HangupReason.CONGESTION)]
    assert not of(Play, commands) and not of(Answer, commands)
    assert not of(ReleaseToCallback, commands)


def test_store_failure_in_answer_mode_never_answers() -> None:
    _, commands = run([arrive(merchant=ANSWER), Decided(True, "ok"), StoreFailed("db")])
    assert not of(Answer, commands) and of(Hangup, commands) == [
        Hangup(HangupReason.CONGESTION)]


def test_store_guard_keeps_the_call_direct_and_cancels_a_late_commit() -> None:
    """Overload: the caller is not refused after waiting; the call goes on to the operator
    on the toll-free line, and a request that commits later is withdrawn."""
    state, commands = run([arrive(), Decided(True, "ok"), Timeout(TimerName.STORE)])
    assert isinstance(state, StoreOverdue)
    assert of(ContinueDirect, commands) == [ContinueDirect("operator")]
    assert not of(Hangup, commands) and not of(Play, commands)
    assert StartTimer(TimerName.LATE_STORE, 30.0) in commands
    state, late = transition(state, CallerHungUp())
    assert late == []
    state, late = transition(state, RequestStored("r1"))
    assert state == Done(Outcome.STORE_TIMEOUT)
    assert without_logs(late) == [CancelRequest("r1", Outcome.STORE_TIMEOUT)]
    assert not of(ReleaseToCallback, late)


@pytest.mark.parametrize("event", [StoreFailed("db"), Timeout(TimerName.LATE_STORE)])
def test_overdue_store_ends_on_failure_or_its_own_guard(event: Event) -> None:
    state, _ = run([arrive(), Decided(True, "ok"), Timeout(TimerName.STORE)])
    state, commands = transition(state, event)
    assert state == Done(Outcome.STORE_TIMEOUT)
    assert [c.outcome for c in of(RecordCall, commands)] == [Outcome.STORE_TIMEOUT]


def test_store_guard_after_the_caller_left_sends_no_hangup() -> None:
    _, commands = run([arrive(), Decided(True, "ok"), CallerHungUp(), Timeout(TimerName.STORE)])
    assert not of(Hangup, commands) and not of(ContinueDirect, commands)


# --- timers and stray events ---------------------------------------------------------------

def test_every_waiting_state_starts_a_guard_timer() -> None:
    """No channel is ever parked: each non-terminal state is entered with a timer."""
    scenarios: list[list[Event]] = [
        [arrive()],                                            # Deciding
        [arrive(), Decided(True, "ok")],                       # Storing
        [arrive(), Decided(True, "ok"), RequestStored("r")],   # Announcing
        [arrive("anonymous")],                                 # Refusing
        [arrive(), Decided(True, "ok"), Timeout(TimerName.STORE)],  # StoreOverdue
    ]
    for events in scenarios:
        state, commands = run(events[:-1])
        state, last = transition(state, events[-1])
        assert not is_terminal(state)
        assert of(StartTimer, last), f"{type(state).__name__} entered without a guard"


def test_stale_timeouts_and_stray_events_are_ignored_and_logged() -> None:
    state, _ = run([arrive(), Decided(True, "ok"), RequestStored("r1")])
    for stray in (Timeout(TimerName.DECIDE), Decided(True, "late"), RequestStored("r2"),
                  StoreFailed("x")):
        after, commands = transition(state, stray)
        assert after == state
        assert [type(c) for c in commands] == [Log]
    idle, commands = transition(Idle(), PlaybackFinished())
    assert idle == Idle() and [type(c) for c in commands] == [Log]


def test_done_absorbs_everything() -> None:
    for event in (CallerHungUp(), PlaybackFinished(), Timeout(TimerName.ANNOUNCE)):
        assert transition(Done(Outcome.RELEASED), event) == (Done(Outcome.RELEASED), [])


def test_states_are_frozen() -> None:
    state, _ = transition(Idle(), arrive())
    assert isinstance(state, Deciding)
    with pytest.raises(AttributeError):
        state.call = Call("x", EARLY, MOBILE_E164, DIALED, FlowTimings())  # type: ignore[misc]


@pytest.mark.parametrize("caller", ["0990123456", "0570012345", "02012345678", "+447012345678"])
def test_the_edge_applies_the_guard_destination_policy_and_keeps_such_calls_direct(
        caller: str) -> None:
    state, commands = run([arrive(caller=caller)])
    assert of(ContinueDirect, commands), commands
    assert not of(StoreRequest, commands)
    record = of(RecordCall, commands)[0]
    assert record.outcome is Outcome.NOT_ALLOWED and "destination_" in record.detail
