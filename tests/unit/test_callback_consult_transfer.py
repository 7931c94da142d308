"""The consult machine's transfer: the customer held while the first advisor talks to a
second party (an advisor through their own assignment, or a number), then connected to
them (complete) or back to the first advisor (cancel); the second party not answering,
and either party of the consultation leaving meanwhile. Pure: the real presence
machines in memory (``MemoryDesk``), no I/O."""

from __future__ import annotations

from advisors.model import State
from advisors.records import EndReason, RingOutcome, Transfer
from callback_server import consult
from callback_server.consult import (
    CancelTransfer,
    CompleteTransfer,
    CustomerGone,
    EndPresence,
    Phase,
    Prompt,
    Rebridge,
    RouteTransfer,
    StartMoh,
    StartTransfer,
    StopMoh,
    TransferRouted,
    Unbridge,
)
from callback_server.dialer_messages import (
    Answered,
    ChannelGone,
    DestroyBridge,
    Hangup,
    Originate,
    OriginateRefused,
    PersistAttempt,
    Route,
    TimerFired,
    capped,
)
from shared.refusals import Refusal
from tests.unit.test_callback_consult import CID, Call, at, make_desk, only

CUSTOMER = "cb-1-01"
BRIDGE = f"{CID}-br"


def talking(advisors: int = 3) -> tuple[Call, str]:
    """A consultation with advisor 1 talking to the customer; their leg."""
    call = Call(make_desk(advisors), members=frozenset({1}))
    call.send(consult.Begin(call.at(0)))
    leg = call.ringing()
    call.send(Answered(leg, call.at(2)))
    assert call.state.phase is Phase.TALKING
    return call, leg


def transferring_to_2(call: Call) -> str:
    """Start a transfer to advisor 2; their leg (ringing)."""
    cmds = call.send(StartTransfer(call.at(10), to_advisor_id=2))
    assert Unbridge(BRIDGE, CUSTOMER) in cmds and StartMoh(CUSTOMER) in cmds
    originate = only(cmds, Originate)
    assert len(originate) == 1 and isinstance(originate[0], Originate)
    assert originate[0].endpoint == "PJSIP/adv2@edge-trunk"
    assert call.desk.seats[2].state is State.RINGING
    return originate[0].channel_id


def test_complete_connects_the_customer_to_the_second_advisor() -> None:
    call, first = talking()
    second = transferring_to_2(call)
    cmds = call.send(Answered(second, call.at(14)))
    assert Rebridge(BRIDGE, second) in cmds        # the advisors talk, the customer waits
    assert call.desk.seats[2].state is State.TALKING
    cmds = call.send(CompleteTransfer(call.at(30)))
    assert Hangup(first) in cmds and EndPresence(1) in cmds
    assert StopMoh(CUSTOMER) in cmds and Rebridge(BRIDGE, CUSTOMER) in cmds
    assert call.desk.seats[1].state is State.WRAP_UP
    call.send(ChannelGone(first, 16, call.at(30.2)))
    assert call.state.phase is Phase.TALKING and call.state.live_leg is not None
    assert call.state.live_leg.channel_id == second
    cmds = call.send(CustomerGone(call.at(90)))       # the customer ends it with advisor 2
    assert Hangup(second) in cmds and EndPresence(2, f"{CID}-t1") in cmds
    assert DestroyBridge(BRIDGE) in cmds
    call.send(ChannelGone(second, 16, call.at(90.1)))
    over = call.over()
    assert over.advisor_id == 2 and over.end_reason is EndReason.CUSTOMER_HANGUP
    assert over.transfers == (Transfer(at(10), 2, None, "completed"),)
    assert [h.started_at for h in over.holds] == [at(10)] and over.holds[0].ended_at == at(30)
    assert [(r.advisor_id, r.outcome) for r in over.rings] == [
        (1, RingOutcome.ANSWERED), (2, RingOutcome.ANSWERED)]
    assert [leg.channel_id for leg in over.legs] == [first, second]
    assert call.desk.seats[2].state is State.WRAP_UP
    assert all(p.session(CID) is None and p.session(f"{CID}-t1") is None
               for p in call.desk.seats.values())


def test_cancel_hangs_up_the_second_party_and_returns_the_customer() -> None:
    call, first = talking()
    second = transferring_to_2(call)
    call.send(Answered(second, call.at(14)))
    cmds = call.send(CancelTransfer(call.at(20)))
    assert Hangup(second) in cmds and EndPresence(2, f"{CID}-t1") in cmds
    assert StopMoh(CUSTOMER) in cmds and Rebridge(BRIDGE, CUSTOMER) in cmds
    assert Hangup(first) not in cmds
    call.send(ChannelGone(second, 16, call.at(20.1)))
    call.send(ChannelGone(first, 16, call.at(60)))     # the first advisor ends the call
    over = call.over()
    assert over.advisor_id == 1 and over.end_reason is EndReason.ADVISOR_HANGUP
    assert over.transfers == (Transfer(at(10), 2, None, "cancelled"),)
    assert call.desk.seats[2].state is State.WRAP_UP


def test_second_party_not_answering_fails_and_the_customer_stays_on_hold() -> None:
    call, first = talking()
    second = transferring_to_2(call)
    cmds = call.send(TimerFired(consult.T_TRANSFER, call.at(30)))
    assert Hangup(second, "no_answer") in cmds
    cmds = call.send(ChannelGone(second, 19, call.at(30.1)))
    assert Prompt(first, consult.TRANSFER_FAILED_PROMPT) in cmds
    assert not only(cmds, Rebridge) and not only(cmds, StopMoh)   # still on hold
    assert call.state.held_since == at(10) and call.state.transferring is None
    assert call.desk.seats[2].misses == 1
    cmds = call.send(CancelTransfer(call.at(35)))     # no transfer left: back from hold
    assert Rebridge(BRIDGE, CUSTOMER) in cmds
    call.send(CustomerGone(call.at(50)))
    call.send(ChannelGone(first, 16, call.at(50.1)))
    over = call.over()
    assert over.transfers == (Transfer(at(10), 2, None, "failed"),)
    assert (2, RingOutcome.MISSED) in [(r.advisor_id, r.outcome) for r in over.rings]
    assert over.advisor_id == 1


def test_customer_hangup_during_the_transfer_ends_every_leg() -> None:
    call, first = talking()
    second = transferring_to_2(call)
    call.send(Answered(second, call.at(14)))
    cmds = call.send(CustomerGone(call.at(20)))
    assert Hangup(first) in cmds and Hangup(second) in cmds
    assert EndPresence(1) in cmds and EndPresence(2, f"{CID}-t1") in cmds
    assert not only(cmds, consult.Over)
    call.send(ChannelGone(second, 16, call.at(20.1)))
    call.send(ChannelGone(first, 16, call.at(20.2)))
    over = call.over()
    assert over.end_reason is EndReason.CUSTOMER_HANGUP and over.advisor_id == 1
    assert over.transfers == (Transfer(at(10), 2, None, "cancelled"),)
    assert {leg.channel_id for leg in over.legs} == {first, second}


def test_first_advisor_hangup_during_the_consult_cancels_the_transfer() -> None:
    call, first = talking()
    second = transferring_to_2(call)                  # still ringing: withdrawn, no miss
    cmds = call.send(ChannelGone(first, 16, call.at(15)))
    assert Hangup(second) in cmds and EndPresence(1) in cmds
    assert StopMoh(CUSTOMER) in cmds and consult.Tell in {type(c) for c in cmds}
    call.send(ChannelGone(second, 16, call.at(15.1)))
    over = call.over()
    assert over.end_reason is EndReason.ADVISOR_HANGUP
    assert over.transfers == (Transfer(at(10), 2, None, "cancelled"),)
    assert call.desk.seats[2].misses == 0 and call.desk.seats[2].state is State.STANDBY


def test_transfer_to_a_number_dials_its_routes_and_completes() -> None:
    call, first = talking()
    cmds = call.send(StartTransfer(call.at(10), to_number="+81311112222"))
    assert RouteTransfer("+81311112222") in cmds
    routes = (Route("carrier-a", "PJSIP/+81311112222@carrier-a"),
              Route("carrier-b", "PJSIP/+81311112222@carrier-b"))
    cmds = call.send(TransferRouted(call.at(10.1), routes))
    leg = only(cmds, Originate)[0]
    assert isinstance(leg, Originate) and leg.endpoint == routes[0].endpoint
    cmds = call.send(ChannelGone(leg.channel_id, 38, call.at(11)))   # carrier fault
    nxt = only(cmds, Originate)[0]
    assert isinstance(nxt, Originate) and nxt.endpoint == routes[1].endpoint
    call.send(Answered(nxt.channel_id, call.at(15)))
    cmds = call.send(CompleteTransfer(call.at(20)))
    assert Hangup(first) in cmds and EndPresence(1) in cmds
    call.send(ChannelGone(first, 16, call.at(20.1)))
    cmds = call.send(CustomerGone(call.at(40)))
    assert Hangup(nxt.channel_id) in cmds and not only(cmds, EndPresence)
    call.send(ChannelGone(nxt.channel_id, 16, call.at(40.1)))
    over = call.over()
    assert over.transfers == (Transfer(at(10), None, "+81311112222", "completed"),)
    assert over.advisor_id == 1          # the last advisor the customer talked with


def test_transfers_that_do_not_apply_change_nothing() -> None:
    call, _ = talking()
    for event in (StartTransfer(call.at(5), to_advisor_id=1),           # to themself
                  StartTransfer(call.at(5)),                            # to nobody
                  CompleteTransfer(call.at(5))):                        # none started
        before = call.state
        assert call.send(event) == [] and call.state == before
    transferring_to_2(call)
    before = call.state
    assert call.send(StartTransfer(call.at(11), to_number="+81311112222")) == []
    assert call.send(CompleteTransfer(call.at(11))) == [], "not answered yet"
    assert call.state == before


def test_a_transfer_leg_carries_its_number_for_the_guard_and_a_refusal_fails_over() -> None:
    """Each carrier leg of a transfer to a number names the number (the guard screens it
    and takes its caps at the originate); the guard refusing it on every carrier fails
    the transfer: nothing dialled, the first advisor told, the customer still held."""
    call, first = talking()
    call.send(StartTransfer(call.at(10), to_number="+81311112222"))
    routes = (Route("carrier-a", "PJSIP/+81311112222@carrier-a"),
              Route("carrier-b", "PJSIP/+81311112222@carrier-b"))
    cmds = call.send(TransferRouted(call.at(10.1), routes))
    persist = only(cmds, PersistAttempt)[0]
    assert isinstance(persist, PersistAttempt)
    assert (persist.leg, persist.carrier_id, persist.number) == \
        ("advisor", "carrier-a", "+81311112222")
    assert capped(persist.leg, persist.carrier_id)
    cmds = call.send(OriginateRefused(persist.channel_id, Refusal.DESTINATION_PREMIUM, 30,
                                      call.at(10.2)))
    again = only(cmds, PersistAttempt)[0]
    assert isinstance(again, PersistAttempt)
    assert (again.carrier_id, again.number) == ("carrier-b", "+81311112222")
    cmds = call.send(OriginateRefused(again.channel_id, Refusal.CAP_TRUNK_CPS, 30,
                                      call.at(10.3)))
    assert Prompt(first, consult.TRANSFER_FAILED_PROMPT) in cmds
    assert call.state.transferring is None and call.state.held_since is not None


def test_an_advisor_reached_over_sip_has_no_number_and_is_not_capped() -> None:
    call, _ = talking()
    cmds = call.send(StartTransfer(call.at(10), to_advisor_id=2))      # edge trunk (SIP)
    persist = only(cmds, PersistAttempt)[0]
    assert isinstance(persist, PersistAttempt) and persist.carrier_id == "edge-trunk"
    assert persist.number is None and not capped(persist.leg, persist.carrier_id)
