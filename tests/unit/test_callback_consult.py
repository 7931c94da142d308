"""The consultation machine (advisor legs, ring timeout, queue, bridge) as a pure machine.

The assignment runs in memory the way ``advisors.live.Presences`` runs it in the
database: the real pure presence and assignment machines over one board (``Desk``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisors import assignment as am
from advisors import presence as pm
from advisors.model import Desk as DeskState
from advisors.model import Rules, State, Via
from advisors.records import EndReason, RingOutcome
from callback_server import consult, ivr
from callback_server.advisor_desk import sip_routes
from callback_server.consult import (
    Begin,
    ConsultState,
    CustomerGone,
    EndPresence,
    Op,
    Over,
    Phase,
    Request,
    RunAssignment,
    StartMoh,
    StopMoh,
    Tell,
    Unbridge,
)
from callback_server.dialer_messages import (
    Answered,
    CancelTimer,
    ChannelGone,
    CreateBridge,
    DestroyBridge,
    Hangup,
    Originate,
    Originated,
    OriginateFailed,
    PersistAttempt,
    RecordCdr,
    Route,
    StartTimer,
    TimerFired,
)
from callback_server.testing import MemoryDesk
from tests.purity import io_imports

T0 = datetime(2026, 12, 5, 1, 0, 0, tzinfo=UTC)
CID = "cb-1-c1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_desk(advisors: int = 3, rules: Rules | None = None, lines: int | None = None
              ) -> MemoryDesk:
    """The merchant's advisors in memory (the real machines), all in standby."""
    rules = rules or Rules()
    return MemoryDesk(advisors, rules if lines is None else replace(rules, lines=lines))


ROUTES = {1: (Route("carrier-a", "PJSIP/+819011110001@carrier-a"),
              Route("carrier-b", "PJSIP/+819011110001@carrier-b")),
          2: (Route("edge-trunk", "PJSIP/adv2@edge-trunk"),),
          3: (Route("carrier-a", "PJSIP/+819011110003@carrier-a"),)}


class Call:
    """Drives one consultation: runs its assignments on the desk at once (as the adapter
    does) and collects every command."""

    def __init__(self, desk: MemoryDesk, *, members: frozenset[int] = frozenset({1, 2, 3}),
                 queue_s: int = 0, ring_timeout_s: int = 20,
                 routes: Mapping[int, tuple[Route, ...]] = ROUTES) -> None:
        self.desk = desk
        self.routes = routes
        request = Request(CID, "cb-1", 1, "cb-1-01", members, ring_timeout_s, queue_s,
                          "+81120123456", "+819012345678")
        self.state = ConsultState.new(request, leg_seq=1)
        self.commands: list[consult.Command] = []
        self.now = T0

    def send(self, event: consult.Event) -> list[consult.Command]:
        todo: list[consult.Event] = [event]
        out: list[consult.Command] = []
        while todo:
            self.state, cmds = consult.transition(self.state, todo.pop(0))
            out += cmds
            todo += self.desk.results(cmds, self.now, CID, self.routes)
        self.commands += out
        return out

    def at(self, seconds: float) -> datetime:
        self.now = at(seconds)
        return self.now

    def ringing(self) -> str:
        leg = self.state.live_leg
        assert leg is not None and self.state.phase is Phase.RINGING, self.state
        return leg.channel_id

    def over(self) -> Over:
        overs = [c for c in self.commands if isinstance(c, Over)]
        assert len(overs) == 1, overs
        return overs[0]


def only(cmds: list[consult.Command], kind: type) -> list[consult.Command]:
    return [c for c in cmds if isinstance(c, kind)]


def test_consult_module_imports_no_io() -> None:
    assert io_imports(Path(consult.__file__)) == []


def test_offer_goes_to_the_longest_idle_advisor_via_the_cheapest_carrier() -> None:
    call = Call(make_desk())
    cmds = call.send(Begin(call.at(0)))
    persist, originate = only(cmds, PersistAttempt)[0], only(cmds, Originate)[0]
    assert isinstance(persist, PersistAttempt) and isinstance(originate, Originate)
    assert persist.leg == "advisor" and persist.channel_id == "cb-1-02" == originate.channel_id
    assert originate.endpoint == "PJSIP/+819011110001@carrier-a"
    assert originate.caller_id == "+81120123456"      # a PSTN advisor sees the merchant
    assert StartTimer(consult.T_RING, 20) in cmds
    assert call.desk.seats[1].state is State.RINGING


def test_answer_bridges_customer_and_advisor_and_advisor_hangup_returns_to_the_ivr() -> None:
    call = Call(make_desk())
    call.send(Begin(call.at(0)))
    leg = call.ringing()
    call.send(Originated(leg, call.at(0.1)))
    cmds = call.send(Answered(leg, call.at(5)))
    assert CreateBridge(f"{CID}-br", ("cb-1-01", leg)) in cmds
    assert call.desk.seats[1].state is State.TALKING
    assert call.state.phase is Phase.TALKING
    cmds = call.send(ChannelGone(leg, 16, call.at(65)))
    assert EndPresence(1) in cmds
    # the customer is out of the bridge before it goes and the IVR plays to them again
    assert cmds.index(Unbridge(f"{CID}-br", "cb-1-01")) < cmds.index(
        DestroyBridge(f"{CID}-br")) < cmds.index(Tell(ivr.ConsultEnded()))
    cdr = only(cmds, RecordCdr)[0]
    assert isinstance(cdr, RecordCdr) and cdr.leg == "advisor" and cdr.duration_s == 60
    over = call.over()
    assert over.end_reason is EndReason.ADVISOR_HANGUP and over.advisor_id == 1
    assert over.answered_at == at(5) and over.ended_at == at(65)
    assert [(r.advisor_id, r.outcome) for r in over.rings] == [(1, RingOutcome.ANSWERED)]


def test_customer_hangup_while_talking_hangs_up_the_advisor_then_records() -> None:
    call = Call(make_desk())
    call.send(Begin(call.at(0)))
    leg = call.ringing()
    call.send(Answered(leg, call.at(3)))
    cmds = call.send(CustomerGone(call.at(30)))
    assert Hangup(leg) in cmds and EndPresence(1) in cmds
    assert not only(cmds, Over), "the advisor leg has not gone yet"
    call.send(ChannelGone(leg, 16, call.at(30.2)))
    over = call.over()
    assert over.end_reason is EndReason.CUSTOMER_HANGUP and over.ended_at == at(30)
    assert [leg_.channel_id for leg_ in over.legs] == [leg]


def test_ring_timeout_counts_a_miss_and_rings_the_next_member() -> None:
    call = Call(make_desk())
    call.send(Begin(call.at(0)))
    first = call.ringing()
    cmds = call.send(TimerFired(consult.T_RING, call.at(20)))
    assert cmds == [Hangup(first, "no_answer")]
    cmds = call.send(ChannelGone(first, 19, call.at(20.1)))
    assert call.desk.seats[1].misses == 1 and call.desk.seats[1].state is State.STANDBY
    second = call.ringing()
    assert second != first and call.state.advisor == 2
    originate = only(cmds, Originate)[0]
    assert isinstance(originate, Originate)
    assert originate.endpoint == "PJSIP/adv2@edge-trunk"
    assert originate.caller_id == "+819012345678"     # a SIP advisor sees the customer
    assert [(r.advisor_id, r.outcome) for r in call.state.rings] == [(1, RingOutcome.MISSED)]


def test_misses_in_a_row_put_the_advisor_on_break() -> None:
    desk = make_desk(advisors=1, rules=Rules(misses_before_break=2))
    for n in range(2):
        call = Call(desk, members=frozenset({1}))
        call.send(Begin(call.at(100 * n)))
        leg = call.ringing()
        call.send(TimerFired(consult.T_RING, call.at(100 * n + 20)))
        cmds = call.send(ChannelGone(leg, 16, call.at(100 * n + 20.1)))
        assert Tell(ivr.ConsultFailed()) in cmds      # no one else, no queue
        assert call.over().end_reason is EndReason.NO_ADVISOR
    assert desk.seats[1].desk is DeskState.BREAK and "missed 2" in desk.seats[1].reason


def test_carrier_fault_fails_over_to_the_next_route_for_the_same_advisor() -> None:
    call = Call(make_desk())
    call.send(Begin(call.at(0)))
    first = call.ringing()
    cmds = call.send(ChannelGone(first, 34, call.at(1)))       # no circuit: carrier fault
    second = call.ringing()
    originate = only(cmds, Originate)[0]
    assert isinstance(originate, Originate)
    assert originate.endpoint == "PJSIP/+819011110001@carrier-b"
    assert call.desk.seats[1].misses == 0 and not call.state.rings
    call.send(OriginateFailed(second, "allocation failed", call.at(1.5)))
    # every route of advisor 1 failed: a failed ring, counted, and advisor 2 is rung
    rings = [(r.advisor_id, r.outcome) for r in call.state.rings]
    assert rings == [(1, RingOutcome.FAILED)]
    assert call.state.advisor == 2


TWO_EDGES = {**ROUTES, 2: sip_routes("acme", "adv2", None, ("edge-trunk", "edge-trunk2"))}


@pytest.mark.parametrize("cause", [34, 18, 38])     # SIP 503, 408 (or silence), edge down
def test_a_sip_advisor_is_rung_through_the_other_edge_when_the_first_fails(
        cause: int) -> None:
    call = Call(make_desk(), members=frozenset({2}), routes=TWO_EDGES)
    cmds = call.send(Begin(call.at(0)))
    assert [o.endpoint for o in only(cmds, Originate)] == ["PJSIP/acme.adv2@edge-trunk"]
    cmds = call.send(ChannelGone(call.ringing(), cause, call.at(0.5)))
    assert [(p.carrier_id, p.endpoint) for p in only(cmds, PersistAttempt)] == [
        ("edge-trunk", "PJSIP/acme.adv2@edge-trunk2")]
    assert call.desk.seats[2].misses == 0 and not call.state.rings
    cmds = call.send(Answered(call.ringing(), call.at(3)))
    assert only(cmds, CreateBridge) and call.desk.seats[2].state is State.TALKING


def test_an_unqualified_edge_fails_the_originate_and_the_other_edge_rings_the_advisor(
        ) -> None:
    call = Call(make_desk(), members=frozenset({2}), routes=TWO_EDGES)
    call.send(Begin(call.at(0)))
    cmds = call.send(OriginateFailed(call.ringing(), "Allocation failed", call.at(0.1)))
    assert [o.endpoint for o in only(cmds, Originate)] == ["PJSIP/acme.adv2@edge-trunk2"]


@pytest.mark.parametrize("cause", [19, 17, 1])     # 480 not registered, 486 busy, 404
def test_a_living_edge_s_answer_is_the_advisor_s_and_the_other_edge_is_not_tried(
        cause: int) -> None:
    call = Call(make_desk(), members=frozenset({2}), routes=TWO_EDGES)
    call.send(Begin(call.at(0)))
    cmds = call.send(ChannelGone(call.ringing(), cause, call.at(0.5)))
    assert not only(cmds, Originate)
    assert [(r.advisor_id, r.outcome) for r in call.state.rings] in (
        [(2, RingOutcome.MISSED)], [(2, RingOutcome.FAILED)])


def test_customer_hangup_while_ringing_withdraws_without_a_miss() -> None:
    call = Call(make_desk())
    call.send(Begin(call.at(0)))
    leg = call.ringing()
    cmds = call.send(CustomerGone(call.at(4)))
    assert Hangup(leg) in cmds
    assert call.desk.seats[1].state is State.STANDBY and call.desk.seats[1].misses == 0
    call.send(ChannelGone(leg, 16, call.at(4.1)))
    over = call.over()
    assert over.end_reason is EndReason.CUSTOMER_ABANDONED and over.answered_at is None
    assert [(r.advisor_id, r.outcome) for r in over.rings] == [(1, RingOutcome.WITHDRAWN)]
    assert only(call.commands, RunAssignment)[-1] == RunAssignment(
        Op.CANCELLED, replace(call.state.assignment, phase=am.Phase.OFFERING, offered_to=1))


def test_lines_busy_tells_the_ivr_and_rings_nobody() -> None:
    desk = make_desk(lines=1)
    desk.apply(3, pm.Offered(at(-1), "other"))        # the merchant's one line is in use
    call = Call(desk)
    cmds = call.send(Begin(call.at(0)))
    assert Tell(ivr.ConsultBusy()) in cmds and not only(cmds, Originate)
    assert call.over().end_reason is EndReason.LINES_BUSY


def test_queue_plays_music_retries_and_connects_when_an_advisor_frees() -> None:
    desk = make_desk(advisors=1)
    desk.apply(1, pm.Offered(at(-1), "other"))        # advisor 1 is on another call
    call = Call(desk, members=frozenset({1}), queue_s=60)
    cmds = call.send(Begin(call.at(0)))
    assert StartMoh("cb-1-01") in cmds and StartTimer(consult.T_QUEUE, 60) in cmds
    assert call.state.phase is Phase.QUEUED
    call.send(TimerFired(consult.T_RETRY, call.at(2)))
    assert call.state.phase is Phase.QUEUED           # still busy: queued again
    desk.apply(1, pm.ConsultationEnded(at(3), "other"))
    call.send(TimerFired(consult.T_RETRY, call.at(4)))
    leg = call.ringing()
    cmds = call.send(Answered(leg, call.at(6)))
    assert StopMoh("cb-1-01") in cmds and only(cmds, CreateBridge)


def test_queue_gives_up_after_its_maximum() -> None:
    desk = make_desk(advisors=1)
    desk.apply(1, pm.SetBreak(at(-1), Via.API, "lunch"))
    call = Call(desk, members=frozenset({1}), queue_s=30)
    call.send(Begin(call.at(0)))
    cmds = call.send(TimerFired(consult.T_QUEUE, call.at(30)))
    assert StopMoh("cb-1-01") in cmds and Tell(ivr.ConsultFailed()) in cmds
    assert call.over().end_reason is EndReason.NO_ADVISOR


def test_stale_timers_change_nothing() -> None:
    call = Call(make_desk())
    call.send(Begin(call.at(0)))
    leg = call.ringing()
    call.send(Answered(leg, call.at(2)))
    before = call.state
    for name in consult.TIMERS:
        assert call.send(TimerFired(name, call.at(25))) == []
    assert call.state == before


# --- a simulation: any advisor behaviour, any customer hang-up --------------------------

BEHAVIOUR = st.sampled_from(["answer", "no_answer", "busy", "carrier_fault", "decline"])


def world(call: Call, behaviour: str, talk_ends_by: str, t: int) -> consult.Event:
    """What happens next: the queue's timers, the advisor's behaviour, a hang-up."""
    now = call.at(t)
    leg = call.state.live_leg
    if call.state.phase is Phase.QUEUED:
        return TimerFired(consult.T_RETRY if t % 4 else consult.T_QUEUE, now)
    if leg is None:
        return TimerFired(consult.T_TEARDOWN, now)
    if call.state.phase is Phase.TALKING:
        return ChannelGone(leg.channel_id, 16, now) if talk_ends_by == "advisor" \
            else CustomerGone(now)
    if call.state.phase is Phase.ENDING or call.state.ring_outcome is not None:
        return ChannelGone(leg.channel_id, 16, now)          # our hang-up is done
    if behaviour == "answer":
        return Answered(leg.channel_id, now)
    if behaviour == "no_answer":
        return TimerFired(consult.T_RING, now)
    cause = {"busy": 17, "carrier_fault": 34, "decline": 21}[behaviour]
    return ChannelGone(leg.channel_id, cause, now)


@settings(max_examples=300, deadline=None)
@given(behaviours=st.lists(BEHAVIOUR, min_size=1, max_size=8),
       customer_leaves_at=st.one_of(st.none(), st.integers(0, 12)),
       talk_ends_by=st.sampled_from(["advisor", "customer"]),
       queue_s=st.sampled_from([0, 10]),
       misses_before_break=st.integers(0, 3))
def test_simulated_consultations_end_once_with_every_leg_down_and_no_session_left(
        behaviours: list[str], customer_leaves_at: int | None, talk_ends_by: str,
        queue_s: int, misses_before_break: int) -> None:
    desk = make_desk(rules=Rules(misses_before_break=misses_before_break))
    call = Call(desk, queue_s=queue_s)
    call.send(Begin(call.at(0)))
    t = 0
    while call.state.phase is not Phase.DONE and t < 60:
        t += 1
        if customer_leaves_at is not None and t == customer_leaves_at:
            call.send(CustomerGone(call.at(t)))
        else:
            call.send(world(call, behaviours[t % len(behaviours)], talk_ends_by, t))
    if call.state.phase is not Phase.DONE:    # the customer never left and nobody ended
        call.send(CustomerGone(call.at(t + 1)))
        if call.state.live_leg is not None:
            call.send(ChannelGone(call.state.live_leg.channel_id, 16, call.at(t + 2)))
        call.send(TimerFired(consult.T_TEARDOWN, call.at(t + 10)))
    assert call.state.phase is Phase.DONE
    over = call.over()
    # nothing of this consultation is left on any advisor
    assert all(p.session(CID) is None for p in desk.seats.values()), desk.seats
    # every ring but an answered one ended before the consultation did
    assert all(r.ended_at is not None and r.ended_at <= over.ended_at for r in over.rings)
    assert (over.answered_at is None) == (over.end_reason in (
        EndReason.NO_ADVISOR, EndReason.LINES_BUSY, EndReason.CUSTOMER_ABANDONED))
    # the bridge, if any, is destroyed; music on hold stopped unless the customer left
    bridges = {c.bridge_id for c in call.commands if isinstance(c, CreateBridge)}
    destroyed = {c.bridge_id for c in call.commands if isinstance(c, DestroyBridge)}
    assert bridges <= destroyed
    # a miss streak of the break size put the advisor on break
    for advisor, p in desk.seats.items():
        if p.desk is DeskState.BREAK:
            assert misses_before_break and p.misses >= misses_before_break, (advisor, p)
    cancels = {c.name for c in call.commands[-len(consult.TIMERS) - 1:]
               if isinstance(c, CancelTimer)}
    assert set(consult.TIMERS) <= cancels
