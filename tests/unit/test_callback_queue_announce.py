"""A queued customer hears their place: the pure announcement machine, and the place
the assignment reports (first come, first served; the merchant's busy-lines queue)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from advisors import assignment as am
from callback_server import queue_announce
from callback_server.dialer_messages import CancelTimer, StartTimer, TimerFired
from callback_server.queue_announce import (
    T_ANNOUNCE,
    Announce,
    Announcer,
    Left,
    Played,
    Resume,
    Stop,
    Waiting,
    place_media,
    transition,
)
from ivr_platform.prompts import SYSTEM_PROMPTS
from ivr_platform.speech import English, Japanese
from tests.purity import io_imports
from tests.unit.test_advisors_assignment import standby

T0 = datetime(2026, 12, 5, 1, 0, 0, tzinfo=UTC)
CUSTOMER = "cb-1-01"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Run:
    def __init__(self, interval_s: int = 30) -> None:
        self.state = Announcer(CUSTOMER, interval_s)

    def send(self, event: queue_announce.Event) -> list[queue_announce.Command]:
        self.state, cmds = transition(self.state, event)
        return cmds


def said(cmds: list[queue_announce.Command]) -> list[str]:
    return [c.media for c in cmds if isinstance(c, Announce)]


def test_queue_announce_imports_no_io() -> None:
    assert io_imports(Path(queue_announce.__file__)) == []


def test_entering_says_the_place_over_the_music_then_the_music_resumes() -> None:
    run = Run()
    cmds = run.send(Waiting(at(0), 2))
    assert cmds == [Announce(CUSTOMER, "sound:cbgw/queue-place-2", f"{CUSTOMER}-place-1"),
                    StartTimer(T_ANNOUNCE, 30)]
    assert run.send(Waiting(at(2), 2)) == []          # each retry: the same place, nothing
    assert run.send(Played("someone-else")) == []
    assert run.send(Played(f"{CUSTOMER}-place-1")) == [Resume(CUSTOMER)]


def test_a_new_place_is_said_and_after_the_one_playing() -> None:
    run = Run()
    run.send(Waiting(at(0), 3))
    assert run.send(Waiting(at(2), 2)) == []           # saying 3 now: 2 next
    assert said(run.send(Played(f"{CUSTOMER}-place-1"))) == ["sound:cbgw/queue-place-2"]
    assert run.send(Played(f"{CUSTOMER}-place-2")) == [Resume(CUSTOMER)]
    assert said(run.send(Waiting(at(6), 1))) == ["sound:cbgw/queue-place-1"]


def test_the_place_is_said_again_every_interval() -> None:
    run = Run(interval_s=20)
    run.send(Waiting(at(0), 1))
    run.send(Played(f"{CUSTOMER}-place-1"))
    cmds = run.send(TimerFired(T_ANNOUNCE, at(20)))
    assert said(cmds) == ["sound:cbgw/queue-place-1"] and StartTimer(T_ANNOUNCE, 20) in cmds
    # still saying it when the next interval comes: only the timer again
    assert run.send(TimerFired(T_ANNOUNCE, at(40))) == [StartTimer(T_ANNOUNCE, 20)]
    assert run.send(TimerFired("consult:ring", at(41))) == []


def test_no_interval_says_it_on_entering_and_on_changes_only() -> None:
    run = Run(interval_s=0)
    cmds = run.send(Waiting(at(0), 4))
    assert said(cmds) == ["sound:cbgw/queue-place-4"]
    assert not any(isinstance(c, StartTimer) for c in cmds)


def test_leaving_stops_the_announcement_and_the_timer() -> None:
    run = Run()
    run.send(Waiting(at(0), 2))
    assert run.send(Left(at(1))) == [CancelTimer(T_ANNOUNCE), Stop(f"{CUSTOMER}-place-1")]
    assert run.send(Played(f"{CUSTOMER}-place-1")) == []
    assert run.send(TimerFired(T_ANNOUNCE, at(30))) == []
    assert run.send(Left(at(31))) == []


def test_leaving_to_be_rung_through_keeps_the_music() -> None:
    run = Run()
    run.send(Waiting(at(0), 1))
    assert run.send(Left(at(1), music=True)) == [
        CancelTimer(T_ANNOUNCE), Stop(f"{CUSTOMER}-place-1"), Resume(CUSTOMER)]
    # back in the queue (the advisor missed the ring): the place is said again
    assert said(run.send(Waiting(at(25), 1))) == ["sound:cbgw/queue-place-1"]


def test_places_past_nine_are_said_as_many_waiting_and_every_prompt_exists() -> None:
    assert place_media(9) == "sound:cbgw/queue-place-9"
    assert place_media(10) == place_media(57) == "sound:cbgw/queue-place-many"
    for n in (*range(1, 10), 10):
        assert place_media(n).removeprefix("sound:cbgw/") in SYSTEM_PROMPTS
    assert SYSTEM_PROMPTS["queue-place-2"].ja == "ただいま二番目にお待ちいただいております。"
    assert SYSTEM_PROMPTS["queue-place-2"].en == "You are second in line."


def test_places_read_aloud() -> None:
    assert Japanese().queue_place(1) == "ただいま一番目にお待ちいただいております"
    assert Japanese().queue_place(12) == "ただいま十二番目にお待ちいただいております"
    assert English().queue_place(3) == "You are third in line"
    assert English().queue_place(21) == "You are twenty-first in line"
    for reading in (Japanese(), English()):
        try:
            reading.queue_place(0)
        except ValueError:
            continue
        raise AssertionError("place 0 read")


# --- the place, from the assignment ---------------------------------------------------------


def test_a_busy_line_queues_a_new_customer_when_the_merchant_queues_them() -> None:
    busy = am.Board(lines=1, seats={1: standby(0, load=1)})
    a = am.Assignment("c2", frozenset({1}))
    assert am.transition(a, am.Assign(busy))[1] == [am.LinesBusy(1)]
    queued, cmds = am.transition(a, am.Assign(am.Board(1, busy.seats, busy_queue=True)))
    assert queued.phase is am.Phase.QUEUED
    assert cmds == [am.Queue("all 1 lines busy", 1)]


def test_a_customer_waits_behind_those_queued_before_and_is_told_their_place() -> None:
    free = {1: standby(0)}
    a = am.Assignment("c3", frozenset({1}))
    _, cmds = am.transition(a, am.Assign(am.Board(lines=1, seats=free, ahead=(frozenset({1}),))))
    assert cmds == [am.Queue("1 waiting longer", 2)]      # the first one gets the advisor
    offered, cmds = am.transition(a, am.Assign(am.Board(lines=1, seats=free)))
    assert cmds == [am.OfferTo(1, "c3")] and offered.phase is am.Phase.OFFERING
