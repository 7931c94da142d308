"""An advisor's call to a presence number at the edge, as a pure state machine.

An advisor goes online or offline by calling the merchant's presence number from
their registered phone: ``presence_online_number`` puts them in standby (they get
calls), ``presence_offline_number`` takes them offline. Two numbers rather than one
that toggles: a change is idempotent, so calling again after "we could not confirm
the change" (the link timed out after the call-back site had applied it) can never
undo it, and a repeated link delivery changes nothing either.

``transition(state, event) -> (state, commands)``, like :mod:`edge_server.flow`,
whose events (``PlaybackFinished``, ``CallerHungUp``, ``Timeout``) and commands
(``Play``, ``Hangup``, timers, ``Log``) it shares. Nothing here does I/O::

    Idle --PresenceCallArrived--> Asking --PresenceAnswered--> Announcing
         --PlaybackFinished--> Done
    commands: AskPresence, Play(presence-<outcome>, early), Hangup(busy)

The call is never answered, whatever the merchant's ``announce_mode``: the answer is
an early-media announcement after a 183, then 486, so the advisor's call bills 0 s.
The caller is identified by caller ID alone (the number, E.164; or, when it is not a
phone number, the SIP user, for an advisor registered by one). A withheld caller ID
is not asked about: the advisor hears ``dial-186``. No answer from the call-back
site within ``ask_s`` (both link routes down, a timeout, a refusal) is announced as
``presence-failed``: the change could not be confirmed, call again.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TypeAlias

from edge_server.flow_messages import (
    PROMPT_DIAL_186,
    CallerHungUp,
    CancelTimer,
    Hangup,
    HangupReason,
    Log,
    Play,
    PlaybackFinished,
    StartTimer,
    Timeout,
    edge_call_id_for,
)
from shared.language import Language
from shared.phone import E164, CallerIdRefusal, classify_caller_id

#: what an advisor's SIP user may be (``advisors.schemas``): a caller ID of that shape
#: that is not a phone number is looked up as one
SIP_USER = re.compile(r"[A-Za-z0-9._~+-]{1,64}")
ASK_TIMER = "presence-ask"
ANNOUNCE_TIMER = "presence-announce"


class Wanted(enum.StrEnum):
    """What the dialled presence number does."""

    ONLINE = "online"
    OFFLINE = "offline"


class PresenceOutcome(enum.StrEnum):
    """How an advisor's presence call ended. Stable codes: the link's answer (all but the
    last three), logs and ``cbgw_edge_presence_calls_total``."""

    ONLINE = "online"                  # now in standby (gets calls)
    OFFLINE = "offline"                # now offline
    NOT_REGISTERED = "not_registered"  # no advisor of the merchant has this phone
    AMBIGUOUS = "ambiguous"            # more than one has it: nothing changed
    IN_CALL = "in_call"                # a consultation is in progress: nothing changed
    UNAVAILABLE = "unavailable"        # no answer from the call-back site in time
    WITHHELD = "caller_id_withheld"    # nothing to identify the advisor by
    ABANDONED = "abandoned"            # hung up before the answer came


#: the answers the call-back site gives (``advisors.phone``)
ANSWERS = frozenset({PresenceOutcome.ONLINE, PresenceOutcome.OFFLINE,
                     PresenceOutcome.NOT_REGISTERED, PresenceOutcome.AMBIGUOUS,
                     PresenceOutcome.IN_CALL})

PROMPTS: dict[PresenceOutcome, str] = {
    PresenceOutcome.ONLINE: "sound:cbgw/presence-online",
    PresenceOutcome.OFFLINE: "sound:cbgw/presence-offline",
    PresenceOutcome.NOT_REGISTERED: "sound:cbgw/presence-not-registered",
    PresenceOutcome.AMBIGUOUS: "sound:cbgw/presence-ambiguous",
    PresenceOutcome.IN_CALL: "sound:cbgw/presence-in-call",
    PresenceOutcome.UNAVAILABLE: "sound:cbgw/presence-failed",
    PresenceOutcome.WITHHELD: PROMPT_DIAL_186,
}


@dataclass(frozen=True, slots=True)
class PresenceLine:
    """A presence number: whose it is, what it does, the language its prompts speak."""

    merchant_id: str
    wanted: Wanted
    language: Language = Language.JAPANESE


@dataclass(frozen=True, slots=True)
class PresenceTimings:
    """Guard timers, seconds: the call-back site's answer, then the announcement."""

    ask_s: float = 4.0
    announce_guard_s: float = 20.0

    def __post_init__(self) -> None:
        if self.ask_s <= 0 or self.announce_guard_s <= 0:
            raise ValueError("presence timings must be positive")


# --- events and commands ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PresenceCallArrived:
    channel_id: str
    line: PresenceLine
    caller_raw: str | None            # channel caller.number as received
    presentation: str | None          # CALLERID(pres)
    asserted_raw: str | None = None   # number from P-Asserted-Identity, if any
    timings: PresenceTimings = field(default_factory=PresenceTimings)


@dataclass(frozen=True, slots=True)
class PresenceAnswered:
    """The call-back site's answer: one of :data:`ANSWERS`."""

    outcome: PresenceOutcome
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PresenceUnavailable:
    """No usable answer: the link is down, timed out or refused the request."""

    reason: str


Event: TypeAlias = (PresenceCallArrived | PresenceAnswered | PresenceUnavailable
                    | PlaybackFinished | CallerHungUp | Timeout)


@dataclass(frozen=True, slots=True)
class AskPresence:
    """Ask the call-back site, over the signed link, to set the caller's presence."""

    edge_call_id: str
    merchant_id: str
    caller: E164 | None       # the caller ID as a number, if it is one
    caller_user: str | None   # the caller ID as it came, if it can be a SIP user
    wanted: Wanted


Command: TypeAlias = AskPresence | Play | Hangup | StartTimer | CancelTimer | Log


# --- states -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Idle:
    """Before ``StasisStart``."""


@dataclass(frozen=True, slots=True)
class Asking:
    line: PresenceLine
    timings: PresenceTimings


@dataclass(frozen=True, slots=True)
class Announcing:
    outcome: PresenceOutcome


@dataclass(frozen=True, slots=True)
class Done:
    outcome: PresenceOutcome


State: TypeAlias = Idle | Asking | Announcing | Done
Result: TypeAlias = tuple[State, list[Command]]


def is_terminal(state: State) -> bool:
    return isinstance(state, Done)


def transition(state: State, event: Event) -> Result:
    """The next state and the commands to run, in order."""
    match state:
        case Idle():
            return _idle(state, event)
        case Asking():
            return _asking(state, event)
        case Announcing():
            return _announcing(state, event)
        case Done():
            return state, []


def _ignored(state: State, event: Event) -> Result:
    return state, [Log("event_ignored", f"{type(event).__name__} in {type(state).__name__}")]


def caller_identity(raw: str | None, presentation: str | None
                    ) -> tuple[E164 | None, str | None] | None:
    """``(number, SIP user)`` to look the caller up by; None when the caller ID is withheld.

    A valid phone number is its E.164 form; a caller ID that is not one but is shaped
    like a SIP user (an extension such as ``1001``, a name) is sent as it came, so an
    advisor registered by SIP user is found by it.
    """
    caller_id = classify_caller_id(raw, presentation)
    if caller_id.number is not None:
        return caller_id.number, None
    text = (raw or "").strip()
    if caller_id.refusal is CallerIdRefusal.WITHHELD or not SIP_USER.fullmatch(text):
        return None
    return None, text


def _idle(state: Idle, event: Event) -> Result:
    if isinstance(event, CallerHungUp):
        return Done(PresenceOutcome.ABANDONED), []
    if not isinstance(event, PresenceCallArrived):
        return _ignored(state, event)
    raw = event.caller_raw
    if not (raw or "").strip() and event.asserted_raw:
        raw = event.asserted_raw  # From carried nothing; the network asserted an identity
    line = event.line
    identity = caller_identity(raw, event.presentation)
    if identity is None:
        return _announce(line, event.timings, PresenceOutcome.WITHHELD,
                         f"caller id {raw!r} ({event.presentation or 'no presentation'})")
    number, user = identity
    return Asking(line, event.timings), [
        StartTimer(ASK_TIMER, event.timings.ask_s),
        AskPresence(edge_call_id_for(event.channel_id), line.merchant_id, number, user,
                    line.wanted)]


def _announce(line: PresenceLine, timings: PresenceTimings, outcome: PresenceOutcome,
              detail: str, *, warning: bool = False) -> Result:
    return Announcing(outcome), [
        Log(f"presence_{outcome.value}", detail, warning=warning),
        StartTimer(ANNOUNCE_TIMER, timings.announce_guard_s),
        Play(PROMPTS[outcome], early=True, language=line.language)]


def _asking(state: Asking, event: Event) -> Result:
    line, timings = state.line, state.timings
    match event:
        case PresenceAnswered(outcome=outcome, detail=detail) if outcome in ANSWERS:
            return _answer_came(_announce(line, timings, outcome, detail))
        case PresenceAnswered(outcome=outcome):
            return _answer_came(_announce(line, timings, PresenceOutcome.UNAVAILABLE,
                                          f"not an answer: {outcome}", warning=True))
        case PresenceUnavailable(reason=reason):
            return _answer_came(_announce(line, timings, PresenceOutcome.UNAVAILABLE,
                                          reason, warning=True))
        case Timeout(name=name) if name == ASK_TIMER:
            return _announce(line, timings, PresenceOutcome.UNAVAILABLE,
                             f"no answer within {timings.ask_s:g} s", warning=True)
        case CallerHungUp():
            return Done(PresenceOutcome.ABANDONED), [
                CancelTimer(ASK_TIMER),
                Log("presence_abandoned", "hung up before the answer; the change asked for "
                    "may still be made")]
    return _ignored(state, event)


def _answer_came(result: Result) -> Result:
    state, commands = result
    return state, [CancelTimer(ASK_TIMER), *commands]


def _announcing(state: Announcing, event: Event) -> Result:
    done = Done(state.outcome)
    match event:
        case PlaybackFinished():
            return done, [CancelTimer(ANNOUNCE_TIMER), Hangup(HangupReason.BUSY)]
        case Timeout(name=name) if name == ANNOUNCE_TIMER:
            return done, [Hangup(HangupReason.BUSY),
                          Log("presence_announce_guard_timeout", warning=True)]
        case CallerHungUp():
            return done, [CancelTimer(ANNOUNCE_TIMER)]
    return _ignored(state, event)
