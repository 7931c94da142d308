"""The billing clock of one prepaid consultation (pure): ``transition(meter, event) ->
(meter, commands)``, the ``meter`` sub-machine of the call's session (DESIGN.md).

Before the advisor's leg is connected the meter reserves funds
(:meth:`billing.ledger.Ledger.reserve`); a refusal ends it (the IVR says why). With
``slice_s`` it reserves in slices: first ``warn_before_s + slice_s`` of talk (what the
warning needs and a slice), then, at each check, ``slice_s`` more than it holds (at most:
what the balance less the other live calls' holds pays for), so calls live at once on one
balance each hold a slice at a time and share what is left; without, it reserves all the
balance pays for at once. Once
connected, ``warn_before_s`` before the reserved talk time runs out it first tries to hold
more (:meth:`~billing.ledger.Ledger.extend`: a top-up during the call, or a reservation
made in slices); if that brings nothing it has the warning played and the consultation is
cut off when the reserved time is up (``cutoff_margin_s`` earlier, for the time the
hang-up takes on the wire). While warned it asks again every ``recheck_s``: a top-up
made after the warning moves the cut-off (and, when it buys more than ``warn_before_s``,
the call talks on as before the warning, to be warned again before the new end).
Whenever the call ends, the reservation is settled once with the talk seconds (started
seconds count whole; 0 when the advisor never answered).

Timers are commands: ``SetTimer(due, token)`` asks the adapter for ``TimerFired(token,
at)`` at ``due``; a timer whose token is no longer the meter's is ignored. Once warned
two run at once: the cut-off's (``cutoff_token``) and the recheck's (``timer_token``).

=====================  ==============================================================
event                  commands
=====================  ==============================================================
``Start``              ``Reserve(consultation_id, at_most_s)``
``Reserved``           ``Ready`` (connect the advisor); after a hang-up: ``Settle(id, 0)``
``Refused``            ``Refuse(reason, available_yen, needed_yen)``; the meter is done
``Connected(at)``      ``SetTimer`` for the check, ``warn_before_s`` before the end (of
                       the talk the reservation pays for at the answering advisor's price,
                       when the answer changed it)
``TimerFired`` check   ``Extend(reservation_id, at_most_s)``
``Extended``           grown: ``SetTimer`` for the next check; not: ``Warn(seconds_left)``,
                       ``SetTimer`` for the cut-off and for the recheck
``TimerFired`` recheck ``Extend(reservation_id, at_most_s)`` (warned)
``Extended`` (warned)  grown past ``warn_before_s`` left: as before the warning; grown
                       less: a new cut-off ``SetTimer``; either way no second warning;
                       then the next recheck
``TimerFired`` cut-off ``CutOff``
``HungUp(at)``         ``Settle(reservation_id, talk_s)`` (once); nothing to settle: done
``Settled``            the meter is done
=====================  ==============================================================

Anything else in a phase that does not expect it is ``Ignored``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import assert_never

ONE_SECOND = timedelta(seconds=1)


class Phase(enum.StrEnum):
    NEW = "new"
    RESERVING = "reserving"
    READY = "ready"              # reserved; the advisor's leg may be connected
    TALKING = "talking"
    EXTENDING = "extending"      # asked the ledger for more
    WARNED = "warned"            # the cut-off timer runs
    ENDING = "ending"            # cut off; waiting for the hang-up
    SETTLING = "settling"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Meter:
    consultation_id: str
    warn_before_s: int = 60
    cutoff_margin_s: int = 0
    #: how often a warned meter asks the ledger again (a top-up after the warning)
    recheck_s: int = 5
    #: reserve in slices of this much talk (None: all the balance pays for at once)
    slice_s: int | None = None
    phase: Phase = Phase.NEW
    reservation_id: int | None = None
    allowed_s: int = 0
    connected_at: datetime | None = None
    #: the call ended while the reservation was being made
    hung_up: bool = False
    timer_token: int = 0
    #: the cut-off timer's token once warned (None: not warned)
    cutoff_token: int | None = None

    def elapsed_s(self, at: datetime) -> int:
        """Talk seconds at ``at``, a started second counting whole."""
        if self.connected_at is None:
            return 0
        return max(0, -(-(at - self.connected_at) // ONE_SECOND))

    def first_slice_s(self) -> int | None:
        """The talk the first reservation holds at most: the warning's and a slice."""
        return None if self.slice_s is None else self.warn_before_s + self.slice_s

    def next_slice_s(self) -> int | None:
        """The talk an extension holds at most in all: a slice more than now."""
        return None if self.slice_s is None else self.allowed_s + self.slice_s


# --- events ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Start:
    pass


@dataclass(frozen=True, slots=True)
class Reserved:
    reservation_id: int
    allowed_s: int


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    available_yen: int
    needed_yen: int


@dataclass(frozen=True, slots=True)
class Connected:
    at: datetime
    #: the talk the reservation pays for once the advisor answered, when it changed then
    #: (a group consultation priced at the answering member's lower price; None: as
    #: reserved)
    allowed_s: int | None = None


@dataclass(frozen=True, slots=True)
class TimerFired:
    token: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Extended:
    allowed_s: int
    at: datetime


@dataclass(frozen=True, slots=True)
class HungUp:
    at: datetime


@dataclass(frozen=True, slots=True)
class Settled:
    pass


Event = Start | Reserved | Refused | Connected | TimerFired | Extended | HungUp | Settled


# --- commands --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reserve:
    consultation_id: str
    #: the talk to hold at most (None: all the balance pays for)
    at_most_s: int | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    allowed_s: int


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str
    available_yen: int
    needed_yen: int


@dataclass(frozen=True, slots=True)
class SetTimer:
    due: datetime
    token: int


@dataclass(frozen=True, slots=True)
class Extend:
    reservation_id: int
    #: the talk to hold at most in all (None: all the balance pays for)
    at_most_s: int | None = None


@dataclass(frozen=True, slots=True)
class Warn:
    seconds_left: int


@dataclass(frozen=True, slots=True)
class CutOff:
    talk_s: int


@dataclass(frozen=True, slots=True)
class Settle:
    reservation_id: int
    talk_s: int


@dataclass(frozen=True, slots=True)
class Ignored:
    event: Event
    phase: Phase


Command = Reserve | Ready | Refuse | SetTimer | Extend | Warn | CutOff | Settle | Ignored
Step = tuple[Meter, list[Command]]


#: the one phase each of these events is expected in
_EXPECTED: dict[type, Phase] = {Start: Phase.NEW, Reserved: Phase.RESERVING,
                                Refused: Phase.RESERVING, Connected: Phase.READY,
                                Extended: Phase.EXTENDING, Settled: Phase.SETTLING}


def transition(meter: Meter, event: Event) -> Step:
    expected = _EXPECTED.get(type(event))
    if expected is not None and meter.phase is not expected:
        return _ignored(meter, event)
    match event:
        case Start():
            return replace(meter, phase=Phase.RESERVING), [
                Reserve(meter.consultation_id, meter.first_slice_s())]
        case Reserved(reservation_id=rid, allowed_s=allowed):
            reserved = replace(meter, reservation_id=rid, allowed_s=allowed)
            if meter.hung_up:
                return replace(reserved, phase=Phase.SETTLING), [Settle(rid, 0)]
            return replace(reserved, phase=Phase.READY), [Ready(allowed)]
        case Refused(reason=reason, available_yen=available, needed_yen=needed):
            return replace(meter, phase=Phase.DONE), [Refuse(reason, available, needed)]
        case Connected(at=at, allowed_s=repriced):
            allowed = meter.allowed_s if repriced is None else max(meter.allowed_s, repriced)
            return _check_later(replace(meter, phase=Phase.TALKING, connected_at=at,
                                        allowed_s=allowed))
        case TimerFired(token=token, at=at):
            return _timer(meter, token, at, event)
        case Extended(allowed_s=allowed, at=at):
            return _extended(meter, allowed, at)
        case HungUp(at=at):
            return _hung_up(meter, at, event)
        case Settled():
            return replace(meter, phase=Phase.DONE), []
        case _:
            assert_never(event)


def _ignored(meter: Meter, event: Event) -> Step:
    return meter, [Ignored(event, meter.phase)]


def _due(meter: Meter, seconds: int) -> datetime:
    assert meter.connected_at is not None
    return meter.connected_at + timedelta(seconds=seconds)


def _check_later(meter: Meter) -> Step:
    """A timer for the check, ``warn_before_s`` before the reserved time runs out."""
    token = meter.timer_token + 1
    due = _due(meter, max(0, meter.allowed_s - meter.warn_before_s))
    return replace(meter, timer_token=token), [SetTimer(due, token)]


def _extended(meter: Meter, allowed: int, at: datetime) -> Step:
    grown = replace(meter, allowed_s=max(allowed, meter.allowed_s))
    left = grown.allowed_s - meter.elapsed_s(at)
    if meter.cutoff_token is None:
        if allowed > meter.allowed_s:
            return _check_later(replace(grown, phase=Phase.TALKING))
        meter, warn = _cut_off_later(meter)
        return _recheck(meter, at, [Warn(max(0, left)), *warn])
    if left > meter.warn_before_s:             # a top-up bought more than the warning's
        return _check_later(replace(grown, phase=Phase.TALKING, cutoff_token=None))
    if allowed > meter.allowed_s:              # a little more: the cut-off moves
        grown, later = _cut_off_later(grown)
        return _recheck(grown, at, later)
    return _recheck(replace(meter, phase=Phase.WARNED), at, [])


def _cut_off_later(meter: Meter) -> Step:
    """The cut-off timer, ``cutoff_margin_s`` before the reserved time runs out."""
    token = meter.timer_token + 1
    end = max(0, meter.allowed_s - meter.cutoff_margin_s)
    return (replace(meter, phase=Phase.WARNED, timer_token=token, cutoff_token=token),
            [SetTimer(_due(meter, end), token)])


def _recheck(meter: Meter, at: datetime, commands: list[Command]) -> Step:
    """Warned: the timer for asking the ledger again, unless the cut-off comes first."""
    assert meter.cutoff_token is not None
    token = meter.timer_token + 1
    due = at + timedelta(seconds=meter.recheck_s)
    end = _due(meter, max(0, meter.allowed_s - meter.cutoff_margin_s))
    if meter.recheck_s <= 0 or due >= end:
        return replace(meter, timer_token=token), commands
    return replace(meter, timer_token=token), [*commands, SetTimer(due, token)]


def _timer(meter: Meter, token: int, at: datetime, event: Event) -> Step:
    cutting = meter.phase in (Phase.WARNED, Phase.EXTENDING)
    if cutting and token == meter.cutoff_token:
        return (replace(meter, phase=Phase.ENDING, timer_token=meter.timer_token + 1),
                [CutOff(meter.elapsed_s(at))])
    if token != meter.timer_token or meter.phase not in (Phase.TALKING, Phase.WARNED):
        return _ignored(meter, event)
    assert meter.reservation_id is not None
    return (replace(meter, phase=Phase.EXTENDING),
            [Extend(meter.reservation_id, meter.next_slice_s())])


def _hung_up(meter: Meter, at: datetime, event: Event) -> Step:
    match meter.phase:
        case Phase.NEW:
            return replace(meter, phase=Phase.DONE), []
        case Phase.RESERVING:
            return replace(meter, hung_up=True), []
        case Phase.READY | Phase.TALKING | Phase.EXTENDING | Phase.WARNED | Phase.ENDING:
            assert meter.reservation_id is not None
            return (replace(meter, phase=Phase.SETTLING, timer_token=meter.timer_token + 1),
                    [Settle(meter.reservation_id, meter.elapsed_s(at))])
        case Phase.SETTLING | Phase.DONE:
            return _ignored(meter, event)
        case _:
            assert_never(meter.phase)
