"""Web click-to-call (pure), both orders: the customer's leg and the advisor's through the
consult machine, the assignment run on the real presence machines in memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from advisors.model import FirstParty, State
from advisors.records import EndReason, RingOutcome
from callback_server import click_to_call as ctc
from callback_server import consult
from callback_server.click_to_call import MessageDone, Request
from callback_server.consult import Begin, Farewell, Over, RunAssignment
from callback_server.dialer_messages import (
    Answered,
    ChannelGone,
    CreateBridge,
    DestroyBridge,
    Hangup,
    Originate,
    OriginateFailed,
    PersistAttempt,
    RecordCdr,
    Route,
    StartTimer,
    TimerFired,
)
from callback_server.ivr import StopPlayback
from callback_server.testing import MemoryDesk
from tests.purity import io_imports

C = TypeVar("C")
T0 = datetime(2026, 12, 5, 1, 0, 0, tzinfo=UTC)
CID = "cb-7-c1"
ADVISOR = 2
CUSTOMER_ROUTES = (Route("carrier-a", "PJSIP/+819012345678@carrier-a"),
                   Route("carrier-b", "PJSIP/+819012345678@carrier-b"))
ADVISOR_ROUTES = (Route("carrier-a", "PJSIP/+819011110002@carrier-a"),)


class Call:
    """Drives one click-to-call: runs the consult machine's assignments on the desk at
    once (as the adapter does) and collects every command."""

    def __init__(self, first: FirstParty = FirstParty.CUSTOMER) -> None:
        self.desk = MemoryDesk(3)
        creq = consult.Request(CID, "cb-7", 1, "", frozenset({ADVISOR}), 20, 0,
                               "+81120123456", "+819012345678")
        self.state = ctc.new(Request(creq, first, CUSTOMER_ROUTES, "+819012345678",
                                     "+81120123456", ADVISOR))
        self.commands: list[consult.Command] = []

    def send(self, event: ctc.Event) -> list[consult.Command]:
        todo: list[ctc.Event] = [event]
        out: list[consult.Command] = []
        while todo:
            self.state, cmds = ctc.transition(self.state, todo.pop(0))
            out += cmds
            todo += self.desk.results(cmds, T0, CID, {ADVISOR: ADVISOR_ROUTES})
        self.commands += out
        return out

    def over(self) -> Over:
        overs = [c for c in self.commands if isinstance(c, Over)]
        assert len(overs) == 1, overs
        return overs[0]

    def advisor_leg(self) -> str:
        leg = self.state.advisor_leg
        assert leg is not None
        return leg


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def of(cmds: list[consult.Command], kind: type[C]) -> list[C]:
    return [c for c in cmds if isinstance(c, kind)]


def answered_customer(call: Call) -> list[consult.Command]:
    call.send(Begin(at(0)))
    return call.send(Answered("cb-7-01", at(3)))


def test_click_to_call_module_imports_no_io() -> None:
    assert io_imports(Path(ctc.__file__)) == []


def test_the_customer_is_rung_first_then_hears_connecting_while_the_advisor_rings() -> None:
    call = Call()
    cmds = call.send(Begin(at(0)))
    originates = of(cmds, Originate)
    assert [(o.channel_id, o.endpoint, o.caller_id) for o in originates] == [
        ("cb-7-01", "PJSIP/+819012345678@carrier-a", "+81120123456")]
    assert of(cmds, PersistAttempt)[0].leg == "customer"
    assert StartTimer(ctc.T_RING, 20) in cmds
    assert call.desk.seats[ADVISOR].state is State.STANDBY     # nobody else rung yet
    cmds = call.send(Answered("cb-7-01", at(3)))
    assert Farewell("cb-7-01", ctc.CONNECTING_ADVISOR, f"{CID}-connecting") in cmds
    advisor = of(cmds, Originate)
    assert [(o.channel_id, o.endpoint) for o in advisor] == [
        ("cb-7-02", "PJSIP/+819011110002@carrier-a")]
    assert call.desk.seats[ADVISOR].state is State.RINGING
    cmds = call.send(Answered("cb-7-02", at(8)))
    assert CreateBridge(f"{CID}-br", ("cb-7-01", "cb-7-02")) in cmds
    assert call.desk.seats[ADVISOR].state is State.TALKING
    # the advisor hangs up: the customer is hung up, then the record
    cmds = call.send(ChannelGone("cb-7-02", 16, at(68)))
    assert Hangup("cb-7-01") in cmds and not of(cmds, Over)
    call.send(ChannelGone("cb-7-01", 16, at(69)))
    over = call.over()
    assert over.answered_at == at(8) and over.end_reason is EndReason.ADVISOR_HANGUP
    assert over.advisor_id == ADVISOR and call.state.done
    assert len(of(call.commands, RecordCdr)) == 2           # both legs' costs


def test_the_advisor_not_answering_the_customer_hears_the_message_then_bye() -> None:
    call = Call()
    answered_customer(call)
    leg = call.advisor_leg()
    cmds = call.send(TimerFired(consult.T_RING, at(23)))
    assert Hangup(leg, "no_answer") in cmds
    cmds = call.send(ChannelGone(leg, 16, at(23)))
    message = Farewell("cb-7-01", ctc.NO_ANSWER_PROMPT, f"{CID}-no-answer")
    assert message in cmds and StartTimer(ctc.T_MESSAGE, ctc.MESSAGE_GUARD_S) in cmds
    assert not of(cmds, Hangup) and not of(cmds, Over)        # the customer hears it first
    assert call.desk.seats[ADVISOR].misses == 1               # the miss counts
    cmds = call.send(MessageDone(f"{CID}-no-answer"))
    assert Hangup("cb-7-01") in cmds
    call.send(ChannelGone("cb-7-01", 16, at(30)))
    over = call.over()
    assert over.answered_at is None and over.end_reason is EndReason.NO_ADVISOR
    assert [r.outcome for r in over.rings] == [RingOutcome.MISSED]


def test_the_message_guard_hangs_the_customer_up_when_no_playback_ends() -> None:
    call = Call()
    answered_customer(call)
    leg = call.advisor_leg()
    call.send(ChannelGone(leg, 17, at(5)))                     # the advisor is busy
    cmds = call.send(TimerFired(ctc.T_MESSAGE, at(25)))
    assert Hangup("cb-7-01") in cmds
    call.send(ChannelGone("cb-7-01", 16, at(25)))
    over = call.over()
    assert over.end_reason is EndReason.NO_ADVISOR and over.answered_at is None
    assert [r.outcome for r in over.rings] == [RingOutcome.FAILED]


def test_the_customer_hanging_up_while_the_advisor_rings_withdraws_the_ring() -> None:
    call = Call()
    answered_customer(call)
    leg = call.advisor_leg()
    cmds = call.send(ChannelGone("cb-7-01", 16, at(6)))
    assert Hangup(leg) in cmds and not of(cmds, Over)
    call.send(ChannelGone(leg, 16, at(6)))
    over = call.over()
    assert over.end_reason is EndReason.CUSTOMER_ABANDONED and over.answered_at is None
    assert [r.outcome for r in over.rings] == [RingOutcome.WITHDRAWN]
    assert call.desk.seats[ADVISOR].state is State.STANDBY
    assert call.desk.seats[ADVISOR].misses == 0


def test_the_customer_not_answering_rings_nobody_else() -> None:
    call = Call()
    call.send(Begin(at(0)))
    assert Hangup("cb-7-01", "no_answer") in call.send(TimerFired(ctc.T_RING, at(20)))
    call.send(ChannelGone("cb-7-01", 16, at(20)))
    over = call.over()
    assert over.end_reason is EndReason.CUSTOMER_ABANDONED and over.answered_at is None
    assert over.rings == () and over.advisor_id == ADVISOR
    assert not [c for c in call.commands if isinstance(c, RunAssignment)]
    assert call.desk.seats[ADVISOR].state is State.STANDBY


def test_a_carrier_fault_on_the_customer_leg_fails_over_to_the_next_carrier() -> None:
    call = Call()
    call.send(Begin(at(0)))
    cmds = call.send(ChannelGone("cb-7-01", 34, at(1)))       # no circuit: a carrier fault
    assert [o.endpoint for o in of(cmds, Originate)] == [
        "PJSIP/+819012345678@carrier-b"]
    call.send(OriginateFailed("cb-7-02", "Allocation failed", at(1)))   # no route left
    assert call.over().end_reason is EndReason.CUSTOMER_ABANDONED
    assert call.state.done
    # the advisor is dialled after the customer's legs when the second carrier answers
    call = Call()
    call.send(Begin(at(0)))
    call.send(ChannelGone("cb-7-01", 34, at(1)))
    cmds = call.send(Answered("cb-7-02", at(4)))
    assert [o.channel_id for o in of(cmds, Originate)] == ["cb-7-03"]


# --- the advisor first ---------------------------------------------------------------------


def answered_advisor(call: Call) -> list[consult.Command]:
    cmds = call.send(Begin(at(0)))
    assert [o.channel_id for o in of(cmds, Originate)] == ["cb-7-01"]
    assert of(cmds, PersistAttempt)[0].leg == "advisor"
    return call.send(Answered("cb-7-01", at(4)))


def test_the_advisor_first_hears_connecting_while_the_customer_is_dialled() -> None:
    call = Call(FirstParty.ADVISOR)
    cmds = answered_advisor(call)
    assert Farewell("cb-7-01", ctc.CONNECTING_CUSTOMER, f"{CID}-connecting") in cmds
    assert not of(cmds, CreateBridge)                    # not before the customer answers
    assert [(o.channel_id, o.endpoint) for o in of(cmds, Originate)] == [
        ("cb-7-02", "PJSIP/+819012345678@carrier-a")]
    assert of(cmds, PersistAttempt)[0].leg == "customer"
    assert call.desk.seats[ADVISOR].state is State.TALKING
    cmds = call.send(Answered("cb-7-02", at(9)))
    assert CreateBridge(f"{CID}-br", ("cb-7-02", "cb-7-01")) in cmds
    consultation = call.state.consultation
    assert consultation is not None and consultation.answered_at == at(9)
    cmds = call.send(ChannelGone("cb-7-02", 16, at(70)))    # the customer hangs up
    assert Hangup("cb-7-01") in cmds
    call.send(ChannelGone("cb-7-01", 16, at(70)))
    over = call.over()
    assert over.answered_at == at(9) and over.end_reason is EndReason.CUSTOMER_HANGUP


def test_the_advisor_first_hears_the_message_when_the_customer_does_not_answer() -> None:
    call = Call(FirstParty.ADVISOR)
    answered_advisor(call)
    assert Hangup("cb-7-02", "no_answer") in call.send(TimerFired(ctc.T_RING, at(24)))
    cmds = call.send(ChannelGone("cb-7-02", 16, at(24)))
    assert Farewell("cb-7-01", ctc.NO_ANSWER_PROMPT, f"{CID}-no-answer") in cmds
    assert not of(cmds, Hangup) and not of(cmds, Over)
    cmds = call.send(MessageDone(f"{CID}-no-answer"))
    assert Hangup("cb-7-01") in cmds
    cmds = call.send(ChannelGone("cb-7-01", 16, at(29)))
    assert not of(cmds, DestroyBridge)                   # it was never created
    over = call.over()
    assert over.answered_at is None and over.end_reason is EndReason.CUSTOMER_ABANDONED
    assert call.state.done and not of(call.commands, CreateBridge)


def test_the_advisor_first_not_answering_rings_nobody_else() -> None:
    call = Call(FirstParty.ADVISOR)
    call.send(Begin(at(0)))
    assert Hangup("cb-7-01", "no_answer") in call.send(TimerFired(consult.T_RING, at(20)))
    call.send(ChannelGone("cb-7-01", 16, at(20)))
    over = call.over()
    assert over.end_reason is EndReason.NO_ADVISOR and over.answered_at is None
    assert [r.outcome for r in over.rings] == [RingOutcome.MISSED]
    assert [o.channel_id for o in of(call.commands, Originate)] == ["cb-7-01"]
    assert not of(call.commands, Farewell)               # nobody on the line to tell


def test_the_advisor_first_hanging_up_while_the_customer_rings() -> None:
    call = Call(FirstParty.ADVISOR)
    answered_advisor(call)
    cmds = call.send(ChannelGone("cb-7-01", 16, at(8)))
    assert Hangup("cb-7-02") in cmds and not of(cmds, Over)
    call.send(ChannelGone("cb-7-02", 16, at(8)))
    over = call.over()
    assert over.answered_at is None and over.end_reason is EndReason.NO_ADVISOR
    assert not of(call.commands, CreateBridge) and not of(call.commands, Farewell)[1:]


def test_the_connecting_prompt_still_playing_stops_when_the_two_are_bridged() -> None:
    """A channel joins a bridge only once its playback is over: the advisor answering
    during the customer's connecting prompt stops it, so they talk at once."""
    call = Call()
    answered_customer(call)
    cmds = call.send(Answered(call.advisor_leg(), at(5)))
    stop = StopPlayback(f"{CID}-connecting")
    assert stop in cmds and cmds.index(stop) < cmds.index(
        CreateBridge(f"{CID}-br", ("cb-7-01", "cb-7-02")))
    # the prompt over before the answer: nothing to stop
    call = Call()
    answered_customer(call)
    call.send(MessageDone(f"{CID}-connecting"))
    assert not of(call.send(Answered(call.advisor_leg(), at(9))), StopPlayback)


def test_the_advisor_first_hearing_connecting_is_stopped_at_the_customers_answer() -> None:
    call = Call(FirstParty.ADVISOR)
    call.send(Begin(at(0)))
    call.send(Answered(call.advisor_leg(), at(4)))
    cmds = call.send(Answered("cb-7-02", at(9)))
    assert cmds.index(StopPlayback(f"{CID}-connecting")) < cmds.index(
        CreateBridge(f"{CID}-br", ("cb-7-02", call.advisor_leg())))


# --- what consult_live keeps (for a restart after the server's death) ----------------------


def test_the_advisor_first_is_kept_from_their_answer_with_no_talk_until_the_customers() -> None:
    """The advisor answered and waits while the customer is dialled: kept (their leg,
    the customer's ringing leg, the bridge to be, their presence) with no answer in the
    record, so a restart ends it with no talk; the customer's answer begins the talk."""
    call = Call(FirstParty.ADVISOR)
    assert ctc.kept(call.state) is None
    answered_advisor(call)
    waiting = ctc.kept(call.state)
    assert waiting is not None
    assert (waiting.customer_channel, waiting.advisor_channel, waiting.bridge_id,
            waiting.advisor_id, waiting.presence_id) == ("cb-7-02", "cb-7-01", f"{CID}-br",
                                                         ADVISOR, CID)
    assert waiting.over.answered_at is None and waiting.over.ended_at == at(4)
    assert [r.outcome for r in waiting.over.rings] == [RingOutcome.ANSWERED]
    call.send(Answered("cb-7-02", at(9)))
    talking = ctc.kept(call.state)
    assert talking is not None and talking.over.answered_at == at(9)
    assert talking.customer_channel == "cb-7-02"


def test_the_advisor_first_hearing_the_customer_was_not_reached_is_still_kept() -> None:
    call = Call(FirstParty.ADVISOR)
    answered_advisor(call)
    call.send(TimerFired(ctc.T_RING, at(24)))
    call.send(ChannelGone("cb-7-02", 19, at(24)))       # the customer's phone rang out
    told = ctc.kept(call.state)
    assert told is not None and told.over.answered_at is None
    call.send(MessageDone(f"{CID}-no-answer"))
    call.send(ChannelGone("cb-7-01", 16, at(29)))
    assert ctc.kept(call.state) is None                 # over: the runner drops its row


def test_the_customer_first_is_kept_while_the_advisor_rings_then_talking() -> None:
    call = Call()
    answered_customer(call)
    ringing = ctc.kept(call.state)                       # the advisor rings
    assert ringing is not None and ringing.offering
    assert (ringing.customer_channel, ringing.advisor_channel) == ("cb-7-01", "cb-7-02")
    assert ringing.over.answered_at is None
    call.send(Answered(call.advisor_leg(), at(5)))
    kept = ctc.kept(call.state)
    assert kept is not None and kept.over.answered_at == at(5)
    assert (kept.customer_channel, kept.advisor_channel) == ("cb-7-01", "cb-7-02")
