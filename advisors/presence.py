"""One advisor's state machine: ``transition(presence, event, rules) -> (presence, commands)``.

Pure: no I/O, no clock (events carry their time). The store keeps a :class:`Presence`
per advisor, applies events to it and executes the commands.

The shown :class:`~advisors.model.State` is ``ringing``/``talking`` while a consultation
is in progress, else the *desk* (what the advisor chose, or after-call work)::

    offline --GoOnline--> standby --Offered--> ringing --Answered--> talking
    standby <--GoOnline-- working | break | wrap_up | offline   (by API or phone)
    ringing --RingMissed--> standby (the N-th miss in a row: break, AutoBreak(reason))
    talking --ConsultationEnded--> wrap_up --WrapUpElapsed (timer mode)--> standby
                                   wrap_up stays until the advisor changes it (manual mode)

Only an advisor whose desk is ``standby`` and who has fewer consultations in progress
than their maximum takes an offer; any other offer is refused (``RefuseOffer``). An
advisor who sets working, break or offline during a consultation keeps it and takes no
new one; when it ends they stay where they chose (no after-call work).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import assert_never

from advisors.model import AfterCallMode, Desk, Rules, State, Via

# --- state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """A consultation in progress: offered (ringing) or answered (talking)."""

    consultation_id: str
    answered: bool = False


@dataclass(frozen=True, slots=True)
class Presence:
    desk: Desk = Desk.OFFLINE
    sessions: tuple[Session, ...] = ()
    max_concurrent: int = 1
    #: rings missed in a row (an answer resets it)
    misses: int = 0
    #: why the desk is what it is (an automatic break's reason), "" otherwise
    reason: str = ""
    #: when the advisor last became free or was last offered a call: the longest idle
    #: (oldest) gets the next one; None while never in standby
    idle_since: datetime | None = None
    #: the current after-call work's timer; an elapsed timer of another is stale
    wrap_up_token: int = 0

    @property
    def state(self) -> State:
        if any(s.answered for s in self.sessions):
            return State.TALKING
        if self.sessions:
            return State.RINGING
        return State(self.desk.value)

    @property
    def load(self) -> int:
        return len(self.sessions)

    def takes_offer(self) -> bool:
        """In standby with a free line of their own."""
        return self.desk is Desk.STANDBY and self.load < self.max_concurrent

    def session(self, consultation_id: str) -> Session | None:
        return next((s for s in self.sessions if s.consultation_id == consultation_id), None)

    def without(self, consultation_id: str) -> tuple[Session, ...]:
        return tuple(s for s in self.sessions if s.consultation_id != consultation_id)


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GoOnline:
    at: datetime
    via: Via


@dataclass(frozen=True, slots=True)
class GoOffline:
    at: datetime
    via: Via


@dataclass(frozen=True, slots=True)
class SetWorking:
    at: datetime
    via: Via


@dataclass(frozen=True, slots=True)
class SetBreak:
    at: datetime
    via: Via
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Offered:
    at: datetime
    consultation_id: str


@dataclass(frozen=True, slots=True)
class Answered:
    at: datetime
    consultation_id: str


@dataclass(frozen=True, slots=True)
class RingMissed:
    """The advisor did not answer within the ring timeout (or declined)."""

    at: datetime
    consultation_id: str


@dataclass(frozen=True, slots=True)
class ConsultationEnded:
    """Either side hung up (during the ring: the customer gave up; no miss)."""

    at: datetime
    consultation_id: str


@dataclass(frozen=True, slots=True)
class WrapUpElapsed:
    at: datetime
    token: int


Event = (GoOnline | GoOffline | SetWorking | SetBreak | Offered | Answered | RingMissed
         | ConsultationEnded | WrapUpElapsed)
PresenceEvent = GoOnline | GoOffline | SetWorking | SetBreak

# --- commands ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notify:
    """The shown state or the desk changed: record it and tell subscribers."""

    before: State
    after: State
    desk: Desk
    reason: str


@dataclass(frozen=True, slots=True)
class StartWrapUpTimer:
    """Deliver ``WrapUpElapsed(token)`` after ``seconds``."""

    seconds: int
    token: int


@dataclass(frozen=True, slots=True)
class AutoBreak:
    """Too many rings missed in a row: the advisor was put on break."""

    reason: str
    misses: int


@dataclass(frozen=True, slots=True)
class RefuseOffer:
    """An offer to an advisor who does not take one (not in standby, or no free line)."""

    consultation_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """An event that does not apply (a stale timer, an unknown consultation)."""

    reason: str


Command = Notify | StartWrapUpTimer | AutoBreak | RefuseOffer | Ignored

# --- transition -------------------------------------------------------------------------


def transition(p: Presence, event: Event, rules: Rules) -> tuple[Presence, list[Command]]:
    after, cmds = _step(p, event, rules)
    if (after.state, after.desk) != (p.state, p.desk):
        cmds.insert(0, Notify(p.state, after.state, after.desk, after.reason))
    return after, cmds


def _step(p: Presence, event: Event, rules: Rules) -> tuple[Presence, list[Command]]:
    match event:
        case GoOnline(at=at):
            if p.desk is Desk.STANDBY:
                return p, [Ignored("already in standby")]
            return _to_desk(p, Desk.STANDBY, at, misses=0), []
        case GoOffline(at=at):
            return _to_desk(p, Desk.OFFLINE, at), []
        case SetWorking(at=at):
            return _to_desk(p, Desk.WORKING, at), []
        case SetBreak(at=at, reason=reason):
            return _to_desk(p, Desk.BREAK, at, reason=reason), []
        case Offered(at=at, consultation_id=cid):
            return _offered(p, at, cid)
        case Answered(consultation_id=cid):
            return _answered(p, cid)
        case RingMissed(consultation_id=cid):
            return _missed(p, cid, rules)
        case ConsultationEnded(at=at, consultation_id=cid):
            return _ended(p, at, cid, rules)
        case WrapUpElapsed(at=at, token=token):
            if p.desk is not Desk.WRAP_UP or token != p.wrap_up_token:
                return p, [Ignored("stale after-call work timer")]
            return _to_desk(p, Desk.STANDBY, at), []
        case _:
            assert_never(event)


def _to_desk(p: Presence, desk: Desk, at: datetime, *, reason: str = "",
             misses: int | None = None) -> Presence:
    idle_since = at if desk is Desk.STANDBY and not p.sessions else p.idle_since
    return replace(p, desk=desk, reason=reason, idle_since=idle_since,
                   misses=p.misses if misses is None else misses)


def _offered(p: Presence, at: datetime, cid: str) -> tuple[Presence, list[Command]]:
    if p.session(cid) is not None:
        return p, [Ignored(f"consultation {cid} already offered")]
    if not p.takes_offer():
        why = (f"{p.load} of {p.max_concurrent} consultations in progress"
               if p.desk is Desk.STANDBY else f"advisor is {p.desk}")
        return p, [RefuseOffer(cid, why)]
    return replace(p, sessions=(*p.sessions, Session(cid)), idle_since=at), []


def _answered(p: Presence, cid: str) -> tuple[Presence, list[Command]]:
    found = p.session(cid)
    if found is None or found.answered:
        return p, [Ignored(f"no ringing consultation {cid}")]
    sessions = tuple(Session(cid, True) if s is found else s for s in p.sessions)
    return replace(p, sessions=sessions, misses=0), []


def _missed(p: Presence, cid: str, rules: Rules) -> tuple[Presence, list[Command]]:
    found = p.session(cid)
    if found is None or found.answered:
        return p, [Ignored(f"no ringing consultation {cid}")]
    misses = p.misses + 1
    after = replace(p, sessions=p.without(cid), misses=misses)
    limit = rules.misses_before_break
    if limit and misses >= limit and p.desk is Desk.STANDBY:
        reason = f"missed {misses} calls in a row"
        return replace(after, desk=Desk.BREAK, reason=reason), [AutoBreak(reason, misses)]
    return after, []


def _ended(p: Presence, at: datetime, cid: str, rules: Rules
           ) -> tuple[Presence, list[Command]]:
    found = p.session(cid)
    if found is None:
        return p, [Ignored(f"no consultation {cid} in progress")]
    after = replace(p, sessions=p.without(cid))
    if not found.answered or after.sessions or p.desk is not Desk.STANDBY:
        return after, []
    if rules.after_call is AfterCallMode.TIMER and rules.wrap_up_s == 0:
        return replace(after, idle_since=at), []
    token = p.wrap_up_token + 1
    wrapped = replace(after, desk=Desk.WRAP_UP, wrap_up_token=token)
    match rules.after_call:
        case AfterCallMode.TIMER:
            return wrapped, [StartWrapUpTimer(rules.wrap_up_s, token)]
        case AfterCallMode.MANUAL:
            return wrapped, []
        case _:
            assert_never(rules.after_call)
