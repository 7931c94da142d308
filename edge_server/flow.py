"""The inbound call at the edge, as a pure state machine.

``transition(state, event) -> (state, commands)``. Events come from the ARI
adapter (:mod:`edge_server.stasis`), the store and the timers; commands go
back to it. Nothing here does I/O, reads a clock or imports aiohttp, asyncpg
or ``shared.ari`` (a unit test enforces that), so every branch is tested by
pushing events in and looking at the commands that come out.

The happy path, ``early_media`` mode (the default)::

    Idle --CallArrived--> Deciding --Decided(callback)--> Storing
         --RequestStored--> Announcing --PlaybackFinished--> Done
    commands: RequestDecision, StoreRequest, Play(received, early),
              Hangup(busy), ReleaseToCallback

No ``Answer`` is ever emitted in ``early_media`` mode: the prompt goes out as
early media after a 183 and the call is rejected with 486, so the caller is
billed nothing. In ``answer`` mode the call is answered only *after* the
request is stored, and a guard of at most 5 s bounds the time on the line.

Decisions recorded here (stable reason codes, see :class:`Outcome`):

* Unknown dialled number: ``Hangup(unallocated)`` (404) at once.
* **Outside the number's business hours** (``MerchantSettings.hours`` at
  ``CallArrived.at``): play the closed message, saying when it opens next (early
  media in ``early_media`` mode), then reject, as a refusal does; nothing is stored
  or queued, whoever calls. The call is recorded ``outside_hours`` with why.
* Withheld, malformed or invalid caller ID: play ``dial-186`` (early media in
  ``early_media`` mode), then reject. Nothing is stored for a call-back.
* Caller ID valid but not a permitted call-back destination (foreign,
  premium, toll-free ...): keep the call direct (operator), never call back.
* Routing data missing or too slow: the merchant's ``callback_when_unrated``.
* **Store failure: reject with congestion (503), never announce.** The caller
  has heard nothing yet and is billed nothing; a 503 lets the carrier fail over
  to another edge site or the caller simply retry, exactly as when the Stasis
  app is down (the dialplan also answers 503). Sending the call to an operator
  instead would silently turn a database outage into paid direct traffic.
* **A store that outlives its guard (overload): keep the call.** The database
  is there but slow, and the caller has already waited ``store_s``: the call
  goes on on the toll-free line to the operator, as a call kept direct does
  (``ContinueDirect``), instead of a 503 that would lose or strand them. If the
  request commits later anyway it is cancelled, so nobody is called back after
  being served directly; the call is recorded ``store_timeout`` (class direct).
* The caller hangs up once the store has begun (mid-announcement included):
  the request is still released. They called; they get called back.
* The caller hangs up before the decision: nothing is stored or queued.

Every state that waits on something has a guard timer, so no channel is ever
left parked in Stasis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeAlias

from edge_server.flow_messages import (
    PROMPT_CLOSED,
    PROMPT_DIAL_186,
    PROMPT_RECEIVED,
    AnnounceMode,
    Answer,
    CallArrived,
    CallerHungUp,
    CancelRequest,
    CancelTimer,
    Command,
    ContinueDirect,
    Decided,
    DecisionUnavailable,
    Event,
    FlowTimings,
    Hangup,
    HangupReason,
    Log,
    MerchantSettings,
    Outcome,
    Play,
    PlaybackFinished,
    RecordCall,
    ReleaseToCallback,
    RequestDecision,
    RequestStored,
    StartTimer,
    StoreFailed,
    StoreRequest,
    Timeout,
    TimerName,
    edge_call_id_for,
)
from ivr_platform.hours_speech import closed_announcement
from ivr_platform.speech import reading
from shared.phone import E164, CallerId, classify_caller_id

# --- states -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Call:
    """What is known about a call once it has arrived."""

    channel_id: str
    merchant: MerchantSettings
    caller: E164
    dialed: E164
    timings: FlowTimings

    @property
    def edge_call_id(self) -> str:
        return edge_call_id_for(self.channel_id)


@dataclass(frozen=True, slots=True)
class Idle:
    """Before ``StasisStart``."""


@dataclass(frozen=True, slots=True)
class Refusing:
    """Playing ``dial-186`` to a caller we cannot call back, or the closed message."""

    channel_id: str
    announce_mode: AnnounceMode
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Deciding:
    call: Call


@dataclass(frozen=True, slots=True)
class Storing:
    call: Call
    decision_reason: str
    caller_gone: bool = False


@dataclass(frozen=True, slots=True)
class Announcing:
    call: Call
    request_id: str


@dataclass(frozen=True, slots=True)
class StoreOverdue:
    """The store outlived its guard and the call went on to the operator; cancel the
    request if it commits after all."""

    call: Call


@dataclass(frozen=True, slots=True)
class Done:
    """Terminal: the channel is ours no more and nothing is pending."""

    outcome: Outcome | None = None


State: TypeAlias = Idle | Refusing | Deciding | Storing | Announcing | StoreOverdue | Done
Result: TypeAlias = tuple[State, list[Command]]


def is_terminal(state: State) -> bool:
    return isinstance(state, Done)


def transition(state: State, event: Event) -> Result:
    """The next state and the commands to run, in order."""
    match state:
        case Idle():
            return _idle(state, event)
        case Refusing():
            return _refusing(state, event)
        case Deciding():
            return _deciding(state, event)
        case Storing():
            return _storing(state, event)
        case Announcing():
            return _announcing(state, event)
        case StoreOverdue():
            return _store_overdue(state, event)
        case Done():
            return state, []


def _ignored(state: State, event: Event) -> Result:
    return state, [Log("event_ignored", f"{type(event).__name__} in {type(state).__name__}")]


# --- Idle ---------------------------------------------------------------------------------

def _idle(state: Idle, event: Event) -> Result:
    if isinstance(event, CallerHungUp):
        return Done(Outcome.ABANDONED), []
    if not isinstance(event, CallArrived):
        return _ignored(state, event)
    merchant, dialed = event.merchant, event.dialed
    if merchant is None or dialed is None:
        return Done(Outcome.UNALLOCATED), [
            Hangup(HangupReason.UNALLOCATED),
            Log(Outcome.UNALLOCATED, f"dialled {dialed or 'unparsable number'} is not ours",
                warning=True)]
    raw = event.caller_raw
    if not (raw or "").strip() and event.asserted_raw:
        raw = event.asserted_raw  # From carried nothing; the network asserted an identity
    caller_id = classify_caller_id(raw, event.presentation)
    edge_call_id = edge_call_id_for(event.channel_id)
    closed = _closed(event, merchant, dialed, caller_id)
    if closed is not None:
        return closed
    if caller_id.number is None:
        assert caller_id.refusal is not None
        return _refuse(event, merchant, dialed, Outcome(caller_id.refusal.value),
                       caller_id.detail, Play(PROMPT_DIAL_186, early=_early(merchant),
                                              language=merchant.language))
    caller = caller_id.number
    verdict = merchant.destinations.evaluate(caller)
    if verdict is not None:
        detail = f"{caller}: {verdict}"
        return Done(Outcome.NOT_ALLOWED), [
            ContinueDirect(merchant.operator_extension),
            Log(Outcome.NOT_ALLOWED, detail),
            RecordCall(edge_call_id, event.channel_id, merchant.id, caller, dialed,
                       Outcome.NOT_ALLOWED, detail)]
    call = Call(event.channel_id, merchant, caller, dialed, event.timings)
    return Deciding(call), [
        StartTimer(TimerName.DECIDE, event.timings.decide_s),
        RequestDecision(caller, merchant.id, merchant.announce_mode)]


def _early(merchant: MerchantSettings) -> bool:
    return merchant.announce_mode is AnnounceMode.EARLY_MEDIA


def _closed(event: CallArrived, merchant: MerchantSettings, dialed: E164,
            caller_id: CallerId) -> Result | None:
    """The closed message and a reject if the number is closed at the call's arrival."""
    hours = merchant.hours
    if hours is None:
        return None
    if event.at is None:
        raise ValueError("CallArrived.at is needed to apply business hours")
    status = hours.status(event.at)
    if status.open:
        return None
    opening = hours.next_opening(event.at)
    detail = status.reason + (f"; opens {opening.isoformat()}" if opening else
                              "; never opens again")
    say = closed_announcement(hours, event.at, reading(merchant.language))
    return _refuse(event, merchant, dialed, Outcome.CLOSED, detail,
                   Play(PROMPT_CLOSED, early=_early(merchant), language=merchant.language,
                        say=say),
                   caller=caller_id.number, log_code="closed", closed=status.status.value)


def _refuse(event: CallArrived, merchant: MerchantSettings, dialed: E164, outcome: Outcome,
            detail: str, play: Play, *, caller: E164 | None = None,
            log_code: str | None = None, closed: str | None = None) -> Result:
    mode = merchant.announce_mode
    record = RecordCall(edge_call_id_for(event.channel_id), event.channel_id, merchant.id,
                        caller, dialed, outcome, detail, closed)
    commands: list[Command] = [Log(log_code or outcome, detail), record]
    if mode is AnnounceMode.ANSWER:
        commands.append(Answer())
    commands += [StartTimer(TimerName.REFUSAL, event.timings.refusal_guard_s), play]
    return Refusing(event.channel_id, mode, outcome), commands


# --- Refusing -----------------------------------------------------------------------------

def _refusing(state: Refusing, event: Event) -> Result:
    reason = HangupReason.NORMAL if state.announce_mode is AnnounceMode.ANSWER \
        else HangupReason.BUSY
    match event:
        case PlaybackFinished():
            return Done(state.outcome), [CancelTimer(TimerName.REFUSAL), Hangup(reason)]
        case Timeout(name=TimerName.REFUSAL):
            return Done(state.outcome), [Hangup(reason),
                                         Log("refusal_guard_timeout", warning=True)]
        case CallerHungUp():
            return Done(state.outcome), [CancelTimer(TimerName.REFUSAL)]
    return _ignored(state, event)


# --- Deciding -----------------------------------------------------------------------------

def _deciding(state: Deciding, event: Event) -> Result:
    call = state.call
    match event:
        case Decided(callback=True, reason=reason):
            return _store(call, reason)
        case Decided(callback=False, reason=reason):
            return Done(Outcome.KEPT_DIRECT), [
                CancelTimer(TimerName.DECIDE),
                ContinueDirect(call.merchant.operator_extension),
                Log(Outcome.KEPT_DIRECT, reason),
                _record(call, Outcome.KEPT_DIRECT, reason)]
        case DecisionUnavailable(reason=why):
            return _unrated(call, why)
        case Timeout(name=TimerName.DECIDE):
            return _unrated(call, "decision timed out")
        case CallerHungUp():
            return Done(Outcome.ABANDONED), [
                CancelTimer(TimerName.DECIDE),
                Log(Outcome.ABANDONED, "caller hung up before the request was stored"),
                _record(call, Outcome.ABANDONED, "hung up while deciding")]
    return _ignored(state, event)


def _unrated(call: Call, why: str) -> Result:
    if call.merchant.callback_when_unrated:
        return _store(call, f"unrated ({why}): merchant default call back")
    reason = f"unrated ({why}): merchant default direct"
    return Done(Outcome.KEPT_DIRECT), [
        CancelTimer(TimerName.DECIDE),
        ContinueDirect(call.merchant.operator_extension),
        Log(Outcome.KEPT_DIRECT, reason),
        _record(call, Outcome.KEPT_DIRECT, reason)]


def _store(call: Call, reason: str) -> Result:
    return Storing(call, reason), [
        CancelTimer(TimerName.DECIDE),
        StartTimer(TimerName.STORE, call.timings.store_s),
        StoreRequest(call.edge_call_id, call.channel_id, call.merchant.id, call.caller,
                     call.dialed, call.merchant.announce_mode, reason)]


def _record(call: Call, outcome: Outcome, detail: str) -> RecordCall:
    return RecordCall(call.edge_call_id, call.channel_id, call.merchant.id, call.caller,
                      call.dialed, outcome, detail)


# --- Storing ------------------------------------------------------------------------------

def _storing(state: Storing, event: Event) -> Result:
    call = state.call
    match event:
        case RequestStored(request_id=request_id) if state.caller_gone:
            return Done(Outcome.RELEASED_EARLY_HANGUP), [
                CancelTimer(TimerName.STORE),
                ReleaseToCallback(request_id, Outcome.RELEASED_EARLY_HANGUP),
                Log(Outcome.RELEASED_EARLY_HANGUP, request_id)]
        case RequestStored(request_id=request_id):
            return _announce(call, request_id)
        case StoreFailed(reason=why):
            commands: list[Command] = [CancelTimer(TimerName.STORE)]
            if not state.caller_gone:
                commands.append(Hangup(HangupReason.CONGESTION))
            commands.append(Log(Outcome.STORE_FAILED, why, warning=True))
            return Done(Outcome.STORE_FAILED), commands
        case Timeout(name=TimerName.STORE):
            commands = [] if state.caller_gone else [
                ContinueDirect(call.merchant.operator_extension)]
            commands += [StartTimer(TimerName.LATE_STORE, call.timings.late_store_s),
                         Log(Outcome.STORE_TIMEOUT, "request store exceeded its guard: "
                             "kept on the toll-free line, to the operator", warning=True)]
            return StoreOverdue(call), commands
        case CallerHungUp():
            return replace(state, caller_gone=True), [
                Log("caller_hung_up_while_storing", "will release once stored")]
    return _ignored(state, event)


def _announce(call: Call, request_id: str) -> Result:
    commands: list[Command] = [CancelTimer(TimerName.STORE)]
    if call.merchant.announce_mode is AnnounceMode.ANSWER:
        commands += [Answer(), StartTimer(TimerName.ANNOUNCE, call.timings.answer_guard_s),
                     Play(PROMPT_RECEIVED, early=False, language=call.merchant.language)]
    else:
        commands += [StartTimer(TimerName.ANNOUNCE, call.timings.early_media_guard_s),
                     Play(PROMPT_RECEIVED, early=True, language=call.merchant.language)]
    return Announcing(call, request_id), commands


# --- Announcing ---------------------------------------------------------------------------

def _final_hangup(call: Call) -> Hangup:
    if call.merchant.announce_mode is AnnounceMode.ANSWER:
        return Hangup(HangupReason.NORMAL)
    return Hangup(HangupReason.BUSY)


def _announcing(state: Announcing, event: Event) -> Result:
    call, request_id = state.call, state.request_id
    match event:
        case PlaybackFinished(failed=failed):
            outcome = Outcome.RELEASED
            return Done(outcome), [
                CancelTimer(TimerName.ANNOUNCE), _final_hangup(call),
                ReleaseToCallback(request_id, outcome),
                Log(outcome, "announcement failed to play" if failed else request_id,
                    warning=failed)]
        case Timeout(name=TimerName.ANNOUNCE):
            outcome = Outcome.RELEASED_AFTER_GUARD
            return Done(outcome), [
                _final_hangup(call), ReleaseToCallback(request_id, outcome),
                Log(outcome, request_id, warning=call.merchant.announce_mode
                    is AnnounceMode.EARLY_MEDIA)]
        case CallerHungUp():
            outcome = Outcome.RELEASED_MID_ANNOUNCEMENT
            return Done(outcome), [
                CancelTimer(TimerName.ANNOUNCE), ReleaseToCallback(request_id, outcome),
                Log(outcome, request_id)]
    return _ignored(state, event)


# --- StoreOverdue -------------------------------------------------------------------------

def _store_overdue(state: StoreOverdue, event: Event) -> Result:
    match event:
        case RequestStored(request_id=request_id):
            return Done(Outcome.STORE_TIMEOUT), [
                CancelTimer(TimerName.LATE_STORE),
                CancelRequest(request_id, Outcome.STORE_TIMEOUT),
                Log("late_store_cancelled", request_id, warning=True)]
        case StoreFailed() | Timeout(name=TimerName.LATE_STORE):
            return Done(Outcome.STORE_TIMEOUT), [
                CancelTimer(TimerName.LATE_STORE),
                _record(state.call, Outcome.STORE_TIMEOUT, "kept direct: not stored in time")]
        case CallerHungUp():
            return state, []
    return _ignored(state, event)
