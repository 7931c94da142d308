"""An operator's controls of a consultation (forced end, hold), in the pure consult machine."""

from __future__ import annotations

from advisors.model import State
from advisors.records import EndReason, Hold
from callback_server import consult
from callback_server.consult import (
    EndPresence,
    Farewell,
    FarewellDone,
    ForceEnd,
    HoldCustomer,
    Over,
    Phase,
    Rebridge,
    ResumeCustomer,
    StartMoh,
    StopMoh,
    Tell,
    Unbridge,
)
from callback_server.dialer_messages import (
    Answered,
    CancelTimer,
    ChannelGone,
    DestroyBridge,
    Hangup,
    StartTimer,
    TimerFired,
)
from tests.unit.test_callback_consult import CID, Call, at, make_desk, only


def talking(call: Call) -> str:
    call.send(consult.Begin(call.at(0)))
    leg = call.ringing()
    call.send(Answered(leg, call.at(4)))
    assert call.state.phase is Phase.TALKING
    return leg


def test_forced_end_hangs_up_the_advisor_plays_the_farewell_then_hangs_up_the_customer(
        ) -> None:
    call = Call(make_desk())
    leg = talking(call)
    cmds = call.send(ForceEnd(call.at(40)))
    farewell = f"{CID}-farewell"
    assert Hangup(leg) in cmds and EndPresence(1) in cmds
    assert DestroyBridge(f"{CID}-br") in cmds
    assert Farewell("cb-1-01", consult.FAREWELL_PROMPT, farewell) in cmds
    assert StartTimer(consult.T_FAREWELL, consult.FAREWELL_GUARD_S) in cmds
    assert Hangup("cb-1-01") not in cmds, "the customer hears the message first"
    assert not only(cmds, Tell), "the IVR does not go on: the call is over"
    assert call.desk.seats[1].state is not State.TALKING
    cmds = call.send(ChannelGone(leg, 16, call.at(40.2)))
    assert not only(cmds, Over), "the farewell is still playing"
    cmds = call.send(FarewellDone(farewell))
    assert Hangup("cb-1-01") in cmds and CancelTimer(consult.T_FAREWELL) in cmds
    over = call.over()
    assert over.end_reason is EndReason.FORCED_END
    assert over.answered_at == at(4) and over.ended_at == at(40) and over.advisor_id == 1


def test_the_customer_leaves_the_bridge_before_its_teardown_and_the_farewell() -> None:
    """A play sent while the customer's bridge is destroyed is queued to that bridge and
    lost with it (the cut-off message never started; the guard hung the customer up 20 s
    later): the customer is taken out of the bridge first, then the advisor hung up, the
    bridge destroyed and the message played, for a cut-off as for an operator's end."""
    for end in (ForceEnd(at(40)), ForceEnd(at(40), EndReason.CUT_OFF, "sound:cbgw/x")):
        call = Call(make_desk())
        leg = talking(call)
        cmds = call.send(end)
        out = cmds.index(Unbridge(BRIDGE, "cb-1-01"))
        assert out < cmds.index(Hangup(leg)) < cmds.index(DestroyBridge(BRIDGE)) < cmds.index(
            Farewell("cb-1-01", end.farewell, f"{CID}-farewell")), cmds


def test_a_customer_on_hold_is_out_of_the_bridge_already_at_a_forced_end() -> None:
    call = Call(make_desk())
    leg = talking(call)
    call.send(HoldCustomer(call.at(10)))
    cmds = call.send(ForceEnd(call.at(20)))
    assert not only(cmds, Unbridge)
    assert cmds.index(StopMoh("cb-1-01")) < cmds.index(Hangup(leg)) < cmds.index(
        Farewell("cb-1-01", consult.FAREWELL_PROMPT, f"{CID}-farewell"))


def test_the_farewell_guard_hangs_up_the_customer_when_no_playback_ends() -> None:
    call = Call(make_desk())
    leg = talking(call)
    call.send(ForceEnd(call.at(10)))
    call.send(ChannelGone(leg, 16, call.at(10.1)))
    assert call.send(FarewellDone("someone-else")) == []
    cmds = call.send(TimerFired(consult.T_FAREWELL, call.at(30)))
    assert Hangup("cb-1-01") in cmds
    assert call.over().end_reason is EndReason.FORCED_END


def test_forced_end_while_ringing_withdraws_the_offer_then_says_goodbye() -> None:
    call = Call(make_desk())
    call.send(consult.Begin(call.at(0)))
    leg = call.ringing()
    cmds = call.send(ForceEnd(call.at(3)))
    farewell = f"{CID}-farewell"
    assert Hangup(leg) in cmds and Farewell("cb-1-01", consult.FAREWELL_PROMPT, farewell) in cmds
    assert not only(cmds, Tell)
    call.send(ChannelGone(leg, 16, call.at(3.1)))
    assert call.desk.seats[1].misses == 0 and call.desk.seats[1].state is State.STANDBY
    assert len(only(call.commands, consult.Originate)) == 1, "nobody else is rung"
    cmds = call.send(FarewellDone(farewell))
    assert Hangup("cb-1-01") in cmds
    over = call.over()
    assert over.end_reason is EndReason.FORCED_END and over.answered_at is None
    assert [r.outcome for r in over.rings] == [consult.RingOutcome.WITHDRAWN]


def test_forced_end_while_queued_stops_the_music_first() -> None:
    desk = make_desk(advisors=1)
    busy = Call(desk, members=frozenset({1}))
    talking(busy)                                  # the only advisor talks
    call = Call(desk, members=frozenset({1}), queue_s=60)
    call.send(consult.Begin(call.at(5)))
    assert call.state.phase is Phase.QUEUED
    cmds = call.send(ForceEnd(call.at(8)))
    assert cmds.index(StopMoh("cb-1-01")) < cmds.index(
        Farewell("cb-1-01", consult.FAREWELL_PROMPT, f"{CID}-farewell"))
    call.send(TimerFired(consult.T_FAREWELL, call.at(28)))
    assert call.over().end_reason is EndReason.FORCED_END


def test_a_cut_off_outside_a_talk_and_any_end_when_done_change_nothing() -> None:
    call = Call(make_desk())
    call.send(consult.Begin(call.at(0)))
    ringing = call.state
    assert call.send(ForceEnd(call.at(1), EndReason.CUT_OFF, "sound:x")) == []
    assert call.state == ringing
    done = Call(make_desk())
    leg = talking(done)
    done.send(consult.CustomerGone(done.at(20)))
    done.send(ChannelGone(leg, 16, done.at(20.1)))
    assert done.state.phase is Phase.DONE
    assert done.send(ForceEnd(done.at(21))) == []


def test_a_second_forced_end_is_ignored() -> None:
    call = Call(make_desk())
    talking(call)
    call.send(ForceEnd(call.at(10)))
    assert call.send(ForceEnd(call.at(11))) == []


BRIDGE = f"{CID}-br"


def test_hold_takes_the_customer_out_to_music_and_unhold_puts_them_back() -> None:
    call = Call(make_desk())
    talking(call)
    cmds = call.send(HoldCustomer(call.at(10)))
    assert cmds == [Unbridge(BRIDGE, "cb-1-01"), StartMoh("cb-1-01")]
    assert call.send(HoldCustomer(call.at(11))) == [], "already on hold"
    cmds = call.send(ResumeCustomer(call.at(25)))
    assert cmds == [StopMoh("cb-1-01"), Rebridge(BRIDGE, "cb-1-01")]
    assert call.send(ResumeCustomer(call.at(26))) == [], "not on hold"
    call.send(HoldCustomer(call.at(30)))
    call.send(ResumeCustomer(call.at(31)))
    assert call.state.holds == (Hold(at(10), at(25)), Hold(at(30), at(31)))
    leg = call.state.live_leg
    assert leg is not None
    call.send(ChannelGone(leg.channel_id, 16, call.at(60)))
    over = call.over()
    assert over.holds == (Hold(at(10), at(25)), Hold(at(30), at(31)))
    assert over.end_reason is EndReason.ADVISOR_HANGUP


def test_hold_outside_a_talk_changes_nothing() -> None:
    call = Call(make_desk())
    call.send(consult.Begin(call.at(0)))
    ringing = call.state
    assert call.send(HoldCustomer(call.at(1))) == [] and call.state == ringing


def test_an_end_while_on_hold_closes_the_hold() -> None:
    # the advisor hangs up: the music stops, the customer goes back to the IVR
    call = Call(make_desk())
    leg = talking(call)
    call.send(HoldCustomer(call.at(10)))
    cmds = call.send(ChannelGone(leg, 16, call.at(20)))
    assert StopMoh("cb-1-01") in cmds and Tell(consult.ivr.ConsultEnded()) in cmds
    assert not only(cmds, Unbridge), "on hold: out of the bridge already"
    assert call.over().holds == (Hold(at(10), at(20)),)
    # the customer hangs up: nothing to stop on their side
    call = Call(make_desk())
    leg = talking(call)
    call.send(HoldCustomer(call.at(10)))
    cmds = call.send(consult.CustomerGone(call.at(15)))
    assert not only(cmds, StopMoh) and Hangup(leg) in cmds
    call.send(ChannelGone(leg, 16, call.at(15.1)))
    assert call.over().holds == (Hold(at(10), at(15)),)
    # a forced end: the music stops before the farewell
    call = Call(make_desk())
    leg = talking(call)
    call.send(HoldCustomer(call.at(10)))
    cmds = call.send(ForceEnd(call.at(12)))
    assert cmds.index(StopMoh("cb-1-01")) < cmds.index(
        Farewell("cb-1-01", consult.FAREWELL_PROMPT, f"{CID}-farewell"))
    call.send(ChannelGone(leg, 16, call.at(12.1)))
    call.send(FarewellDone(f"{CID}-farewell"))
    assert call.over().holds == (Hold(at(10), at(12)),)
