"""The call-back dialer as a pure state machine: events in, commands out."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from callback_server import dialer
from callback_server.dialer import DialerState, LastLeg, Phase, RescueAction, rescue_action
from callback_server.dialer_messages import (
    EDGE_TRUNK,
    Answered,
    Begin,
    CancelTimer,
    ChannelGone,
    Command,
    CreateBridge,
    DestroyBridge,
    EndCall,
    Finish,
    Hangup,
    Job,
    OperatorRequested,
    Originate,
    Originated,
    OriginateFailed,
    PersistAttempt,
    Reason,
    RecordCdr,
    RecordLegResult,
    RetryPolicy,
    Route,
    Shutdown,
    StartIvr,
    StartTimer,
    TimerFired,
    capped,
    edge_routes,
)
from shared.phone import E164
from tests.purity import io_imports

T0 = datetime(2026, 11, 22, 1, 2, 3, tzinfo=UTC)
ROUTES = (Route("carrier-a", "PJSIP/09012345678@carrier-a"),
          Route("carrier-b", "PJSIP/09012345678@carrier-b"),
          Route("carrier-c", "PJSIP/09012345678@carrier-c"))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def job(attempt_no: int = 1, max_attempts: int = 3, leg_seq: int = 0) -> Job:
    return Job(callback_id="cb-1", merchant_id="acme", destination=E164("819012345678"),
               caller_id=E164("81120123456"), ring_timeout_s=30,
               policy=RetryPolicy(max_attempts, (30, 120, 600)), attempt_no=attempt_no,
               leg_seq=leg_seq)


def run(state: DialerState, *events: dialer.Event) -> tuple[DialerState, list[Command]]:
    out: list[Command] = []
    for ev in events:
        state, cmds = dialer.transition(state, ev)
        out += cmds
    return state, out


def of(cmds: list[Command], kind: type) -> list:  # type: ignore[type-arg]
    return [c for c in cmds if isinstance(c, kind)]


def begin(j: Job | None = None, routes: tuple[Route, ...] = ROUTES
          ) -> tuple[DialerState, list[Command]]:
    return dialer.transition(DialerState.new(j or job()), Begin(routes, T0))


# --- import rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["dialer.py", "dialer_messages.py", "ivr.py", "ivr_flow.py"])
def test_pure_modules_import_no_io(module: str) -> None:
    banned = io_imports(Path(dialer.__file__).parent / module)
    assert banned == [], f"{module} imports I/O modules: {banned}"


# --- origination ---------------------------------------------------------------------------

def test_begin_persists_channel_id_before_originate_with_merchant_caller_id() -> None:
    state, cmds = begin()
    assert isinstance(cmds[0], PersistAttempt) and isinstance(cmds[1], Originate)
    persist, orig = cmds[0], cmds[1]
    assert persist.channel_id == orig.channel_id == "cb-1-01"
    assert persist.carrier_id == "carrier-a" and persist.leg == "customer"
    assert orig.endpoint == "PJSIP/09012345678@carrier-a"
    assert orig.caller_id == "+81120123456"
    assert orig.timeout_s == 30
    assert StartTimer(dialer.T_RING, 35.0) in cmds
    assert state.phase is Phase.DIALING


def test_channel_ids_continue_after_persisted_legs() -> None:
    _, cmds = begin(job(attempt_no=2, leg_seq=3))
    assert of(cmds, Originate)[0].channel_id == "cb-1-04"


def test_no_routes_retries_later() -> None:
    state, cmds = begin(routes=())
    assert cmds == [Finish("retry", Reason.NO_ROUTE, 1, 30)]
    assert state.phase is Phase.DONE


# --- failover ------------------------------------------------------------------------------

@pytest.mark.parametrize("cause", [34, 38, 41, 42, 27, 18, 3, 102])
def test_carrier_fault_fails_over_at_once(cause: int) -> None:
    state, _ = begin()
    state, cmds = run(state, Originated("cb-1-01", at(0.01)),
                      ChannelGone("cb-1-01", cause, at(0.02)))
    orig = of(cmds, Originate)
    assert [o.endpoint for o in orig] == ["PJSIP/09012345678@carrier-b"]
    assert orig[0].channel_id == "cb-1-02"
    assert of(cmds, PersistAttempt)[0].carrier_id == "carrier-b"
    assert cmds.index(of(cmds, PersistAttempt)[0]) < cmds.index(orig[0])
    assert not of(cmds, Finish)
    cdr = of(cmds, RecordCdr)[0]
    assert cdr.call_id == "cb-1-01" and cdr.disposition == "failed" and cdr.hangup_cause == cause
    assert state.failures == (("carrier-a", f"cause {cause}"),)


def test_allocation_failed_fails_over_without_cdr() -> None:
    state, _ = begin()
    state, cmds = run(state, OriginateFailed("cb-1-01", "Allocation failed", at(0.001)))
    assert [o.endpoint for o in of(cmds, Originate)] == ["PJSIP/09012345678@carrier-b"]
    assert RecordLegResult("cb-1-01", "failed") in cmds
    assert not of(cmds, RecordCdr)


def test_all_carriers_exhausted_retries_later_with_backoff() -> None:
    state, _ = begin()
    state, cmds = run(state,
                      OriginateFailed("cb-1-01", "Allocation failed", at(0)),
                      ChannelGone("cb-1-02", 34, at(1)),
                      ChannelGone("cb-1-03", 18, at(33)))
    assert cmds[-1] == Finish("retry", Reason.CARRIERS_EXHAUSTED, 1, 30)
    assert state.phase is Phase.DONE
    assert len(of(cmds, Originate)) == 2


def test_exhausted_on_last_attempt_is_final() -> None:
    state, _ = begin(job(attempt_no=3), routes=ROUTES[:1])
    _, cmds = run(state, ChannelGone("cb-1-01", 34, at(1)))
    assert cmds[-1] == Finish("failed", Reason.CARRIERS_EXHAUSTED, 3)


# --- customer-side outcomes: no failover -----------------------------------------------------

@pytest.mark.parametrize(("cause", "reason", "disposition"), [
    (17, Reason.CUSTOMER_BUSY, "busy"), (19, Reason.NO_ANSWER, "no_answer"),
    (20, Reason.UNREACHABLE, "no_answer"), (16, Reason.OTHER, "no_answer")])
def test_busy_or_no_answer_retries_later_without_failover(cause: int, reason: Reason,
                                                         disposition: str) -> None:
    state, _ = begin()
    state, cmds = run(state, Originated("cb-1-01", at(0)), ChannelGone("cb-1-01", cause, at(9)))
    assert not of(cmds, Originate)                       # never a second ring now
    assert cmds[-1] == Finish("retry", reason, 1, 30)
    assert of(cmds, RecordCdr)[0].disposition == disposition


@pytest.mark.parametrize(("attempt", "delay"), [(1, 30), (2, 120)])
def test_backoff_follows_the_merchant_schedule(attempt: int, delay: int) -> None:
    state, _ = begin(job(attempt_no=attempt, max_attempts=5))
    _, cmds = run(state, ChannelGone("cb-1-01", 17, at(3)))
    assert cmds[-1] == Finish("retry", Reason.CUSTOMER_BUSY, attempt, delay)


def test_backoff_repeats_its_last_step() -> None:
    assert RetryPolicy(9, (30, 120, 600)).delay_after(7) == 600


def test_attempts_limit_makes_busy_final() -> None:
    state, _ = begin(job(attempt_no=3, max_attempts=3))
    _, cmds = run(state, ChannelGone("cb-1-01", 17, at(3)))
    assert cmds[-1] == Finish("failed", Reason.CUSTOMER_BUSY, 3)


@pytest.mark.parametrize(("cause", "reason"), [
    (21, Reason.DECLINED), (1, Reason.INVALID_NUMBER), (28, Reason.INVALID_NUMBER)])
def test_declined_or_invalid_number_is_final_at_once(cause: int, reason: Reason) -> None:
    state, _ = begin(job(attempt_no=1, max_attempts=3))
    _, cmds = run(state, ChannelGone("cb-1-01", cause, at(3)))
    assert cmds[-1] == Finish("failed", reason, 1)
    assert not of(cmds, Originate)


def test_cause_classes() -> None:
    assert dialer.classify(34) is dialer.CauseClass.FAILOVER
    assert dialer.classify(17) is dialer.CauseClass.RETRY
    assert dialer.classify(21) is dialer.CauseClass.DECLINED
    assert dialer.classify(1) is dialer.CauseClass.INVALID
    assert dialer.classify(999) is dialer.CauseClass.RETRY   # unknown: never a second ring now


# --- answer, IVR, CDR, cleanup -------------------------------------------------------------

def answered(j: Job | None = None) -> DialerState:
    state, _ = begin(j)
    state, cmds = run(state, Originated("cb-1-01", at(0)), Answered("cb-1-01", at(4)))
    assert StartIvr("cb-1-01") in cmds and CancelTimer(dialer.T_RING) in cmds
    return state


def test_customer_hangs_up_during_ivr_writes_cdr_and_completes() -> None:
    state = answered()
    state, cmds = run(state, ChannelGone("cb-1-01", 16, at(16.48)))
    cdr = of(cmds, RecordCdr)[0]
    assert cdr.answered_at == at(4) and cdr.ended_at == at(16.48)
    assert cdr.duration_s == Decimal("12.480") and cdr.carrier_id == "carrier-a"
    assert cdr.disposition == "answered" and cdr.hangup_cause == 16
    assert cmds[-1] == Finish("completed", Reason.ANSWERED, 1)
    assert state.phase is Phase.DONE


def test_ivr_end_hangs_up_then_waits_for_the_leg_to_go() -> None:
    state = answered()
    state, cmds = run(state, EndCall(at(20)))
    assert Hangup("cb-1-01") in cmds and not of(cmds, Finish)
    assert state.phase is Phase.TEARDOWN
    state, cmds = run(state, ChannelGone("cb-1-01", 16, at(20.05)))
    assert of(cmds, RecordCdr)[0].duration_s == Decimal("16.050")
    assert cmds[-1] == Finish("completed", Reason.ANSWERED, 1)


def test_teardown_guard_finishes_when_asterisk_never_reports_the_end() -> None:
    state = answered()
    state, _ = run(state, EndCall(at(20)))
    state, cmds = run(state, TimerFired(dialer.T_TEARDOWN, at(25)))
    assert of(cmds, RecordCdr)[0].ended_at == at(25)
    assert cmds[-1] == Finish("completed", Reason.ANSWERED, 1)
    assert state.phase is Phase.DONE


def test_ring_guard_hangs_up_a_leg_asterisk_forgot() -> None:
    state, _ = begin()
    state, cmds = run(state, TimerFired(dialer.T_RING, at(35)))
    assert Hangup("cb-1-01") in cmds
    state, cmds = run(state, ChannelGone("cb-1-01", 16, at(35.1)))
    assert cmds[-1] == Finish("retry", Reason.NO_ANSWER, 1, 30)
    assert not of(cmds, Originate)


def test_shutdown_while_ringing_hangs_up_and_counts_the_round() -> None:
    state, _ = begin()
    state, cmds = run(state, Shutdown(at(2)))
    assert Hangup("cb-1-01") in cmds
    _, cmds = run(state, ChannelGone("cb-1-01", 16, at(2.1)))
    assert cmds[-1] == Finish("retry", Reason.SHUTDOWN, 1, 30)


def test_shutdown_in_call_tears_down_both_legs_and_bridge() -> None:
    state = answered()
    state, _ = run(state, OperatorRequested(at(10)), Answered("cb-1-02", at(12)))
    state, cmds = run(state, Shutdown(at(30)))
    assert Hangup("cb-1-01") in cmds and Hangup("cb-1-02") in cmds
    assert DestroyBridge("cb-1-br02") in cmds


def test_shutdown_before_begin_requeues_without_counting() -> None:
    _, cmds = dialer.transition(DialerState.new(job(attempt_no=2)), Shutdown(T0))
    assert cmds == [Finish("retry", Reason.SHUTDOWN, 1, 0)]


def test_events_after_done_are_ignored() -> None:
    state = answered()
    state, _ = run(state, ChannelGone("cb-1-01", 16, at(9)))
    assert dialer.transition(state, ChannelGone("cb-1-01", 16, at(9))) == (state, [])


def test_events_for_foreign_channels_are_ignored() -> None:
    state, _ = begin()
    assert dialer.transition(state, ChannelGone("other", 34, at(1))) == (state, [])


# --- operator leg ----------------------------------------------------------------------------

def test_operator_leg_is_persisted_dialled_and_bridged_with_dtmf_events() -> None:
    state = answered()
    state, cmds = run(state, OperatorRequested(at(10)))
    persist, orig = of(cmds, PersistAttempt)[0], of(cmds, Originate)[0]
    assert persist.leg == "operator" and orig.channel_id == "cb-1-02"
    assert orig.endpoint == "PJSIP/operator@edge-trunk"
    state, cmds = run(state, Answered("cb-1-02", at(12)))
    assert CreateBridge("cb-1-br02", ("cb-1-01", "cb-1-02"), "mixing,dtmf_events") in cmds


def test_a_flows_transfer_leg_names_its_number_for_the_guard_the_operators_does_not() -> None:
    """The guard screens the number a flow's transfer dials (and takes its carrier's caps)
    at the originate; the operator's leg goes through the edge trunk: no number, no caps."""
    number = E164.parse("+81312345678")
    route = Route("carrier-b", "PJSIP/+81312345678@carrier-b")
    _, cmds = run(answered(), OperatorRequested(at(10), number, (route,), 30))
    persist = of(cmds, PersistAttempt)[0]
    assert (persist.leg, persist.carrier_id, persist.number) == \
        ("transfer", "carrier-b", "+81312345678")
    assert capped(persist.leg, persist.carrier_id)
    _, cmds = run(answered(), OperatorRequested(at(10)))
    persist = of(cmds, PersistAttempt)[0]
    assert persist.number is None and not capped(persist.leg, persist.carrier_id)


EDGES = edge_routes("PJSIP/operator@{trunk}", ("edge-trunk", "edge-trunk2"))


def two_edges() -> Job:
    return replace(job(), operator_routes=EDGES)


@pytest.mark.parametrize("cause", [34, 18, 38])      # SIP 503, 408 (or no answer), down
def test_an_edge_fault_rings_the_operator_through_the_other_edge(cause: int) -> None:
    state, cmds = run(answered(two_edges()), OperatorRequested(at(10)))
    assert [o.endpoint for o in of(cmds, Originate)] == ["PJSIP/operator@edge-trunk"]
    state, cmds = run(state, Originated("cb-1-02", at(10.1)),
                      ChannelGone("cb-1-02", cause, at(10.2)))
    assert [(p.channel_id, p.carrier_id, p.endpoint) for p in of(cmds, PersistAttempt)] == [
        ("cb-1-03", EDGE_TRUNK, "PJSIP/operator@edge-trunk2")]
    assert [o.endpoint for o in of(cmds, Originate)] == ["PJSIP/operator@edge-trunk2"]
    state, cmds = run(state, Answered("cb-1-03", at(11)))
    assert CreateBridge("cb-1-br03", ("cb-1-01", "cb-1-03"), "mixing,dtmf_events") in cmds


def test_an_edge_asterisk_unqualified_fails_the_originate_and_the_other_edge_is_rung() -> None:
    state, _ = run(answered(two_edges()), OperatorRequested(at(10)))
    state, cmds = run(state, OriginateFailed("cb-1-02", "Allocation failed", at(10.1)))
    assert RecordLegResult("cb-1-02", "failed") in cmds
    assert [o.endpoint for o in of(cmds, Originate)] == ["PJSIP/operator@edge-trunk2"]
    state, cmds = run(state, OriginateFailed("cb-1-03", "Allocation failed", at(10.2)))
    assert not of(cmds, Originate) and state.phase is Phase.IN_CALL   # back to the IVR


@pytest.mark.parametrize("cause", [19, 17, 1, 21])     # 480, 486, 404, 603: the answer
def test_a_living_edge_s_refusal_is_the_operator_s_answer_and_rings_no_other_edge(
        cause: int) -> None:
    state, _ = run(answered(two_edges()), OperatorRequested(at(10)))
    state, cmds = run(state, Originated("cb-1-02", at(10.1)),
                      ChannelGone("cb-1-02", cause, at(11)))
    assert not of(cmds, Originate) and not of(cmds, PersistAttempt)
    assert state.phase is Phase.IN_CALL


def test_operator_hangup_ends_the_call_with_two_cdrs() -> None:
    state = answered()
    state, _ = run(state, OperatorRequested(at(10)), Answered("cb-1-02", at(12)))
    state, cmds = run(state, ChannelGone("cb-1-02", 16, at(72)))
    assert DestroyBridge("cb-1-br02") in cmds and Hangup("cb-1-01") in cmds
    state, more = run(state, ChannelGone("cb-1-01", 16, at(72.02)))
    cdrs = of(cmds + more, RecordCdr)
    assert [c.leg for c in cdrs] == ["operator", "customer"]
    assert cdrs[0].duration_s == Decimal("60.000")
    assert more[-1] == Finish("completed", Reason.ANSWERED, 1)


def test_customer_hangup_while_bridged_releases_operator() -> None:
    state = answered()
    state, _ = run(state, OperatorRequested(at(10)), Answered("cb-1-02", at(12)))
    state, cmds = run(state, ChannelGone("cb-1-01", 16, at(40)))
    assert Hangup("cb-1-02") in cmds and DestroyBridge("cb-1-br02") in cmds
    assert not of(cmds, Finish) and state.phase is Phase.TEARDOWN   # waits for the operator
    state, cmds = run(state, ChannelGone("cb-1-02", 16, at(40.02)))
    assert [c.leg for c in of(cmds, RecordCdr)] == ["operator"]
    assert cmds[-1] == Finish("completed", Reason.ANSWERED, 1) and state.phase is Phase.DONE


def test_teardown_guard_writes_cdrs_for_legs_that_never_reported() -> None:
    state = answered()
    state, _ = run(state, OperatorRequested(at(10)), Answered("cb-1-02", at(12)))
    state, _ = run(state, ChannelGone("cb-1-01", 16, at(40)))
    state, cmds = run(state, TimerFired(dialer.T_TEARDOWN, at(45)))
    assert [c.call_id for c in of(cmds, RecordCdr)] == ["cb-1-02"]
    assert cmds[-1] == Finish("completed", Reason.ANSWERED, 1)


def test_unanswered_operator_leg_is_hung_up_and_customer_stays() -> None:
    state = answered()
    state, _ = run(state, OperatorRequested(at(10)))
    state, cmds = run(state, TimerFired(dialer.T_OPERATOR, at(45)))
    assert cmds == [Hangup("cb-1-02", "no_answer")]
    state, cmds = run(state, ChannelGone("cb-1-02", 19, at(45.1)))
    assert not of(cmds, Finish) and state.phase is Phase.IN_CALL


# --- rescue --------------------------------------------------------------------------------

@pytest.mark.parametrize(("leg", "channel", "action"), [
    (None, None, RescueAction.REDIAL),
    (LastLeg("dialing", False, None), None, RescueAction.REDIAL),
    (LastLeg("failed", False, None), None, RescueAction.REDIAL),
    (LastLeg("ended", False, 34), None, RescueAction.REDIAL),
    (LastLeg("originated", False, None), None, RescueAction.COUNT_AND_RETRY),
    (LastLeg("ended", False, 17), None, RescueAction.COUNT_AND_RETRY),
    (LastLeg("ended", False, 21), None, RescueAction.FAIL),
    (LastLeg("answered", True, None), None, RescueAction.COMPLETE),
    (LastLeg("ended", True, 16), None, RescueAction.COMPLETE),
    (LastLeg("originated", False, None), "Ringing", RescueAction.HANGUP_AND_RETRY),
    (LastLeg("dialing", False, None), "Up", RescueAction.HANGUP_AND_FAIL),
])
def test_rescue_redials_only_calls_that_never_happened(
        leg: LastLeg | None, channel: str | None, action: RescueAction) -> None:
    assert rescue_action(leg, channel) is action
