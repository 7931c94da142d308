"""A queued customer hears their place in the queue: a pure state machine.

``transition(state, event) -> (state, commands)``; no I/O. The consultation runner
(:mod:`callback_server.consult_runner`) feeds it the place each try of the assignment
reports while the customer waits (``Waiting``, from ``advisors.assignment.Queue``), and
the end of the wait (``Left``: an advisor is rung, or the wait is over); it plays what
this machine says over the music on hold::

    Waiting(place)  first: Announce(place) (the music stops, the place is said, the
                    music resumes: Resume); the interval timer starts (the merchant's
                    queue_announce_s; 0: none)
                    a place other than the last said: Announce(place) (after the one
                    playing, if any)
    TimerFired      the place again, the timer again
    Played(id)      the announcement finished: the next place if it changed meanwhile,
                    else Resume (the music)
    Left            the timer cancelled; an announcement playing is stopped (Stop), and
                    the music resumed if the customer still hears it (being rung through)

Places past :data:`MOST_SAID` are all said as "many are waiting" (``queue-place-many``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import assert_never

from callback_server.consult import ConsultState, Phase
from callback_server.dialer_messages import CancelTimer, StartTimer, TimerFired

T_ANNOUNCE = "consult:queue-announce"
MOST_SAID = 9                       # queue-place-1 .. queue-place-9 are rendered


def place_media(position: int) -> str:
    """The prompt that says ``position`` (past :data:`MOST_SAID`: many are waiting)."""
    name = f"queue-place-{position}" if position <= MOST_SAID else "queue-place-many"
    return f"sound:cbgw/{name}"


@dataclass(frozen=True, slots=True)
class Announcer:
    """``channel_id``: the customer's; ``interval_s``: the merchant's queue_announce_s."""

    channel_id: str
    interval_s: int
    waiting: bool = False
    position: int | None = None     # the place last reported
    said: int | None = None         # the place last announced (or being announced)
    playing: str | None = None      # the announcement playing (its playback id)
    count: int = 0                  # announcements so far (playback ids)


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Waiting:
    """The customer waits in the queue, at ``position`` (1: next)."""

    at: datetime
    position: int


@dataclass(frozen=True, slots=True)
class Left:
    """The customer is out of the queue (rung through, gave up, hung up, ended);
    ``music``: they still hear the music on hold (an advisor is being rung)."""

    at: datetime
    music: bool = False


@dataclass(frozen=True, slots=True)
class Played:
    """A playback on the customer's channel finished."""

    playback_id: str


Event = Waiting | Left | Played | TimerFired

# --- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Announce:
    """Stop the music on ``channel_id`` and play ``media`` as ``playback_id``."""

    channel_id: str
    media: str
    playback_id: str


@dataclass(frozen=True, slots=True)
class Resume:
    """The music on hold again on ``channel_id``."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the announcement ``playback_id`` (the customer left the queue)."""

    playback_id: str


Command = Announce | Resume | Stop | StartTimer | CancelTimer
Step = tuple[Announcer, list[Command]]


def transition(state: Announcer, event: Event) -> Step:
    match event:
        case Waiting(position=position):
            return _waiting(state, position)
        case Left(music=music):
            return _left(state, music=music)
        case Played(playback_id=pid):
            if pid != state.playing:
                return state, []
            state = replace(state, playing=None)
            if not state.waiting:
                return state, []
            if state.position is not None and state.position != state.said:
                return _announce(state, state.position)
            return state, [Resume(state.channel_id)]
        case TimerFired(name=name):
            if name != T_ANNOUNCE or not state.waiting or state.position is None:
                return state, []
            cmds: list[Command] = [StartTimer(T_ANNOUNCE, state.interval_s)]
            if state.playing is not None:      # saying it now: the next interval
                return state, cmds
            nxt, more = _announce(state, state.position)
            return nxt, more + cmds
        case _:
            assert_never(event)


def _waiting(state: Announcer, position: int) -> Step:
    if position < 1:
        return state, []
    first = not state.waiting
    state = replace(state, waiting=True, position=position)
    cmds: list[Command] = []
    if first and state.interval_s > 0:
        cmds.append(StartTimer(T_ANNOUNCE, state.interval_s))
    if position == state.said or state.playing is not None:
        return state, cmds            # said already, or said once the one playing ends
    nxt, more = _announce(state, position)
    return nxt, more + cmds


def _announce(state: Announcer, position: int) -> Step:
    pid = f"{state.channel_id}-place-{state.count + 1}"
    state = replace(state, said=position, playing=pid, count=state.count + 1)
    return state, [Announce(state.channel_id, place_media(position), pid)]


def _left(state: Announcer, *, music: bool) -> Step:
    if not state.waiting:
        return state, []
    cmds: list[Command] = [CancelTimer(T_ANNOUNCE)]
    if state.playing is not None:
        cmds.append(Stop(state.playing))
        if music:
            cmds.append(Resume(state.channel_id))
    return replace(state, waiting=False, playing=None, position=None, said=None), cmds


def in_queue(state: ConsultState) -> bool:
    """The consultation's customer waits in the queue (queued, not rung through yet)."""
    return state.queued and state.end_reason is None \
        and state.phase in (Phase.QUEUED, Phase.ASSIGNING)
