"""The billing clock of a prepaid consultation (billing.meter): examples, then a simulated
call (hypothesis) with reservations, extensions granted or not, and the customer hanging
up at any time or not at all: the call is settled once with its talk time, never talks
past what was reserved, and is warned before it is cut off."""

from __future__ import annotations

import heapq
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import billing
from billing.meter import (
    Command,
    Connected,
    CutOff,
    Event,
    Extend,
    Extended,
    HungUp,
    Ignored,
    Meter,
    Phase,
    Ready,
    Refuse,
    Refused,
    Reserve,
    Reserved,
    SetTimer,
    Settle,
    Settled,
    Start,
    TimerFired,
    Warn,
    transition,
)
from tests.purity import io_imports

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(meter: Meter, *events: Event) -> tuple[Meter, list[Command]]:
    out: list[Command] = []
    for event in events:
        meter, commands = transition(meter, event)
        out += commands
    return meter, out


def test_reserve_connect_warn_and_cut_off() -> None:
    meter, out = run(Meter("c-1", warn_before_s=60, cutoff_margin_s=2), Start(),
                     Reserved(7, 300), Connected(at(0)))
    assert out == [Reserve("c-1"), Ready(300), SetTimer(at(240), 1)]
    meter, out = run(meter, TimerFired(1, at(240)))
    assert (meter.phase, out) == (Phase.EXTENDING, [Extend(7)])
    meter, out = run(meter, Extended(300, at(240.3)))
    assert out == [Warn(59), SetTimer(at(298), 2),     # 241 s started of 300
                   SetTimer(at(245.3), 3)]             # the recheck
    meter, out = run(meter, TimerFired(2, at(298)))
    assert out == [CutOff(298)]
    meter, out = run(meter, HungUp(at(298.4)), Settled())
    assert (meter.phase, out) == (Phase.DONE, [Settle(7, 299)])


def test_an_answer_at_a_lower_price_moves_the_check_and_the_cut_off_later() -> None:
    """A group consultation reserved at 300 yen a minute for 120 s (600 yen held),
    answered by a member at 200 yen: the hold pays 180 s at their price, so the check
    comes a minute before 180 s, and with nothing more to hold the cut-off at 180 s."""
    meter, out = run(Meter("c-1", warn_before_s=60, cutoff_margin_s=1, slice_s=60), Start(),
                     Reserved(7, 120), Connected(at(0), allowed_s=180))
    assert out == [Reserve("c-1", 120), Ready(120), SetTimer(at(120), 1)]
    assert meter.allowed_s == 180
    meter, out = run(meter, TimerFired(1, at(120)), Extended(180, at(120)))
    assert out == [Extend(7, 240), Warn(60), SetTimer(at(179), 2), SetTimer(at(125), 3)]
    meter, out = run(meter, Connected(at(5), allowed_s=600))          # once only
    assert isinstance(out[0], Ignored) and meter.allowed_s == 180


def test_an_extension_moves_the_check_and_the_customer_hangs_up_first() -> None:
    meter, _ = run(Meter("c-1", warn_before_s=30), Start(), Reserved(7, 120),
                   Connected(at(0)), TimerFired(1, at(90)))
    meter, out = run(meter, Extended(300, at(90)))
    assert (meter.phase, out) == (Phase.TALKING, [SetTimer(at(270), 2)])
    meter, out = run(meter, TimerFired(1, at(100)))          # the old timer: stale
    assert out == [Ignored(TimerFired(1, at(100)), Phase.TALKING)]
    meter, out = run(meter, HungUp(at(155.2)), TimerFired(2, at(270)))
    assert out[0] == Settle(7, 156) and isinstance(out[1], Ignored)


def test_a_top_up_after_the_warning_moves_the_cut_off() -> None:
    """Warned with 60 s left, the ledger is asked again every 5 s: nothing, then a top-up
    of 10 s (the cut-off moves, no second warning), then one of 300 s (talks on as before
    the warning: the next check a minute before the new end, the old cut-off stale)."""
    meter, out = run(Meter("c-1", warn_before_s=60, cutoff_margin_s=1), Start(),
                     Reserved(7, 90), Connected(at(0)), TimerFired(1, at(30)),
                     Extended(90, at(30)))
    assert out[-3:] == [Warn(60), SetTimer(at(89), 2), SetTimer(at(35), 3)]
    meter, out = run(meter, TimerFired(3, at(35)), Extended(90, at(35)))
    assert (meter.phase, out) == (Phase.WARNED, [Extend(7), SetTimer(at(40), 4)])
    meter, out = run(meter, TimerFired(4, at(40)), Extended(100, at(40)))
    assert out == [Extend(7), SetTimer(at(99), 5), SetTimer(at(45), 6)]
    assert (meter.phase, meter.cutoff_token, meter.allowed_s) == (Phase.WARNED, 5, 100)
    meter, out = run(meter, TimerFired(2, at(89)))            # the old cut-off: stale
    assert isinstance(out[0], Ignored)
    meter, out = run(meter, TimerFired(6, at(45)), Extended(420, at(45)))
    assert out == [Extend(7), SetTimer(at(360), 7)]
    assert (meter.phase, meter.cutoff_token) == (Phase.TALKING, None)
    meter, out = run(meter, TimerFired(5, at(99)), TimerFired(7, at(360)),
                     Extended(420, at(360)))
    assert isinstance(out[0], Ignored)
    assert out[1:] == [Extend(7), Warn(60), SetTimer(at(419), 8), SetTimer(at(365), 9)]


def test_the_cut_off_fires_while_a_recheck_asks_the_ledger() -> None:
    meter, _ = run(Meter("c-1", warn_before_s=10, recheck_s=2), Start(), Reserved(7, 12),
                   Connected(at(0)), TimerFired(1, at(2)), Extended(12, at(2)),
                   TimerFired(3, at(4)))
    assert meter.phase is Phase.EXTENDING
    meter, out = run(meter, TimerFired(2, at(12)), Extended(600, at(12.1)))
    assert out[0] == CutOff(12) and isinstance(out[1], Ignored)
    assert meter.phase is Phase.ENDING


def test_refused_hung_up_while_reserving_and_never_answered() -> None:
    meter, out = run(Meter("c-1"), Start(), Refused("balance-too-low", 120, 300))
    assert (meter.phase, out[-1]) == (Phase.DONE, Refuse("balance-too-low", 120, 300))
    meter, out = run(Meter("c-2"), Start(), HungUp(at(1)), Reserved(8, 300), Settled())
    assert (meter.phase, out) == (Phase.DONE, [Reserve("c-2"), Settle(8, 0)])
    meter, out = run(Meter("c-3"), Start(), Reserved(9, 300), HungUp(at(20)))
    assert out[-1] == Settle(9, 0)                            # the advisor never answered
    meter, out = run(meter, HungUp(at(21)), Connected(at(22)))
    assert all(isinstance(c, Ignored) for c in out)
    assert run(Meter("c-4"), HungUp(at(0)))[0].phase is Phase.DONE


def test_the_meter_is_pure() -> None:
    assert io_imports(Path(billing.__file__).parent / "meter.py") == []


class Adapter:
    """The adapter's part played by a scheduler: timers fire when due (``late``), the
    ledger grants the next extension, a cut-off hangs up at once."""

    def __init__(self, allowed: int, grants: list[int], answer_after: int,
                 late: timedelta) -> None:
        self.queue: list[tuple[datetime, int, Event]] = []
        self.order = itertools.count()
        self.reserved, self.grants, self.late = allowed, iter(grants), late
        self.answer_at = at(answer_after)
        self.connected: datetime | None = None
        self.settles: list[int] = []
        self.warned: list[datetime] = []
        self.cut: list[datetime] = []

    def later(self, when: datetime, event: Event) -> None:
        heapq.heappush(self.queue, (when, next(self.order), event))

    def run(self, meter: Meter) -> Meter:
        while self.queue:
            now, _, event = heapq.heappop(self.queue)
            meter, commands = transition(meter, event)
            for command in commands:
                self.execute(now, command)
        return meter

    def execute(self, now: datetime, command: Command) -> None:
        match command:
            case Reserve():
                self.later(now, Reserved(1, self.reserved))
            case Ready():
                self.connected = self.answer_at
                self.later(self.answer_at, Connected(self.answer_at))
            case SetTimer(due=due, token=token):
                fires = max(due, now) + self.late
                self.later(fires, TimerFired(token, fires))
            case Extend():
                self.reserved += next(self.grants, 0)
                self.later(now, Extended(self.reserved, now))
            case Warn():
                self.warned.append(now)
            case CutOff():
                self.cut.append(now)
                self.later(now, HungUp(now))
            case Settle(talk_s=talk):
                self.settles.append(talk)
                self.later(now, Settled())


@settings(max_examples=1500, deadline=None)
@given(allowed=st.integers(0, 900), warn=st.integers(0, 120), margin=st.integers(0, 5),
       grants=st.lists(st.integers(0, 300), max_size=6),
       hang_up=st.none() | st.integers(0, 3000), answer_after=st.integers(0, 30),
       late_ms=st.integers(0, 900))
def test_a_simulated_call_is_settled_once_within_what_was_reserved(
        allowed: int, warn: int, margin: int, grants: list[int], hang_up: int | None,
        answer_after: int, late_ms: int) -> None:
    late = timedelta(milliseconds=late_ms)
    adapter = Adapter(allowed, grants, answer_after, late)
    adapter.later(T0, Start())
    if hang_up is not None:
        adapter.later(at(answer_after + hang_up), HungUp(at(answer_after + hang_up)))
    meter = adapter.run(Meter("c-1", warn_before_s=warn, cutoff_margin_s=margin))
    assert meter.phase is Phase.DONE and meter.allowed_s == adapter.reserved
    [talk] = adapter.settles
    # never talks past what was reserved but for the adapter's lateness: at most two timers
    # late (the check's and the cut-off's, when the reserved time is shorter than warn)
    assert talk <= meter.allowed_s + -(-2 * late // timedelta(seconds=1))
    if adapter.cut:
        assert adapter.warned and adapter.warned[-1] <= adapter.cut[0]
        end = at(answer_after + max(0, adapter.reserved - margin))
        assert adapter.cut[0] == max(end, adapter.warned[-1]) + late
    elif hang_up is not None:
        assert talk == hang_up
