"""The session's routing between the consult machine and the prepaid meter (pure): the
bridge starts the meter's clock at the advisor's answer, the consultation's end settles
the record's talk seconds once, and a meter that is never extended warns, then cuts off
(the advisor's leg at once, the customer after the message) before the reserved end; the
module does no I/O."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from advisors.records import EndReason
from billing import meter
from callback_server import consult, consult_meter
from callback_server.consult import Begin, CustomerGone, Farewell, FarewellDone, Over
from callback_server.consult_runner import talk_seconds
from callback_server.dialer_messages import (
    Answered,
    ChannelGone,
    CreateBridge,
    Hangup,
    Originated,
)
from tests.purity import io_imports
from tests.unit.test_callback_consult import Call, at, make_desk


class Session:
    """One consultation with its meter: every consult command routed as the runner does,
    the ledger answering ``Reserve`` with ``allowed_s`` and never extending."""

    def __init__(self, allowed_s: int) -> None:
        self.call = Call(make_desk())
        self.meter = consult_meter.new_meter("cb-1-c1")
        self.allowed_s = allowed_s
        self.metered: list[meter.Command] = []
        self.feed(meter.Start())

    def feed(self, event: meter.Event) -> None:
        self.meter, cmds = meter.transition(self.meter, event)
        for cmd in cmds:
            self.metered.append(cmd)
            match cmd:
                case meter.Reserve():
                    self.feed(meter.Reserved(7, self.allowed_s))
                case meter.Extend():
                    self.feed(meter.Extended(self.meter.allowed_s, self.call.now))
                case meter.Settle():
                    self.feed(meter.Settled())

    def send(self, event: consult.Event) -> None:
        for cmd in self.call.send(event):
            routed = consult_meter.meter_event(cmd, self.call.state)
            if routed is not None:
                self.feed(routed)

    def timers(self) -> list[meter.SetTimer]:
        return [c for c in self.metered if isinstance(c, meter.SetTimer)]


def test_the_meter_routing_module_imports_no_io() -> None:
    assert io_imports(Path(consult_meter.__file__)) == []


def test_the_bridge_starts_the_clock_at_the_answer_and_the_check_comes_a_minute_early(
        ) -> None:
    s = Session(allowed_s=300)
    assert meter.Ready(300) in s.metered
    s.send(Begin(s.call.at(0)))
    leg = s.call.ringing()
    s.send(Originated(leg, s.call.at(0.1)))
    s.send(Answered(leg, s.call.at(5)))
    assert any(isinstance(c, CreateBridge) for c in s.call.commands)
    assert s.meter.phase is meter.Phase.TALKING and s.meter.connected_at == at(5)
    assert s.timers() == [meter.SetTimer(at(5 + 300 - 60), 1)]
    assert consult_meter.timer_name(1) == "meter:1"
    assert consult_meter.timer_event("meter:1", at(245)) == meter.TimerFired(1, at(245))
    assert consult_meter.timer_event("consult:ring", at(245)) is None


@given(st.integers(0, 900), st.integers(61, 600))
def test_the_cut_off_ends_the_talk_before_the_reserved_end_and_settles_the_records_talk(
        late_ms: int, allowed_s: int) -> None:
    s = Session(allowed_s)
    s.send(Begin(s.call.at(0)))
    leg = s.call.ringing()
    s.send(Answered(leg, s.call.at(2)))
    s.feed(meter.TimerFired(1, s.call.at(2 + allowed_s - 60)))        # check: no more
    assert [c for c in s.metered if isinstance(c, meter.Warn)] == [meter.Warn(60)]
    (cutoff,) = [t for t in s.timers() if t.token == s.meter.cutoff_token]
    cutoff_due = cutoff.due
    assert cutoff_due == at(2 + allowed_s - consult_meter.CUTOFF_MARGIN_S)
    fired = cutoff_due + timedelta(milliseconds=late_ms)               # a late timer
    s.call.now = fired
    s.feed(meter.TimerFired(cutoff.token, fired))
    assert any(isinstance(c, meter.CutOff) for c in s.metered)
    cmds = s.call.send(consult_meter.cut_off(fired))     # the advisor's leg goes at once
    assert Hangup(leg) in cmds
    (farewell,) = [c for c in cmds if isinstance(c, Farewell)]
    assert farewell.media == consult_meter.CUTOFF and farewell.channel_id == "cb-1-01"
    s.send(ChannelGone(leg, 16, fired + timedelta(seconds=1)))
    s.send(FarewellDone(farewell.playback_id))           # then the customer is hung up
    assert Hangup("cb-1-01") in s.call.commands
    (over,) = [c for c in s.call.commands if isinstance(c, Over)]
    assert over.end_reason is EndReason.CUT_OFF and over.ended_at == fired
    (settle,) = [c for c in s.metered if isinstance(c, meter.Settle)]
    assert settle == meter.Settle(7, talk_seconds(over))
    assert settle.talk_s <= allowed_s
    assert s.meter.phase is meter.Phase.DONE


def test_an_unanswered_consultation_settles_nothing_talked() -> None:
    s = Session(allowed_s=300)
    s.send(Begin(s.call.at(0)))
    leg = s.call.ringing()
    s.send(ChannelGone(leg, 17, s.call.at(3)))       # busy: the next member is rung
    second = s.call.ringing()
    s.send(CustomerGone(s.call.at(10)))
    s.send(ChannelGone(second, 16, s.call.at(11)))
    assert [c for c in s.metered if isinstance(c, meter.Settle)] == [meter.Settle(7, 0)]
