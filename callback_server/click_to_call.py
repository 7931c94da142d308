"""Web click-to-call with the customer rung first, as a pure state machine.

``transition(state, event) -> (state, commands)``; no I/O (``tests/unit/
test_callback_click_to_call.py`` checks). The customer picked an online advisor on the
web; the callback site dials the customer first, then the advisor, and bridges them.
The advisor side is the consult machine (:mod:`callback_server.consult`) with the one
advisor as its only member and no queue, run inside this one: its commands pass through,
except its outcome for the IVR (``Tell``), which this machine turns into what the customer
hears::

    Begin        dial the customer: the cheapest carrier first, the next one on a
                 carrier fault (like a call-back's customer leg), for ring_timeout_s
    customer answers -> CONNECTING_PROMPT (「鑑定士におつなぎします…」) is played to them
                 and the consult machine begins: the advisor is rung through their
                 contact's routes; answered -> both bridged, the consultation runs (meter,
                 operator controls, record) as any other
    customer does not answer (ring timeout, busy, every route failed) -> nobody else is
                 rung; Over with end reason customer_abandoned, no answer (nothing billed)
    the advisor does not answer (the consult machine's ConsultFailed / ConsultBusy: ring
                 timeout, refused, every route failed; the miss is counted by the
                 assignment) -> the customer hears NO_ANSWER_PROMPT
                 (「お相手が応答しませんでした…」), then is hung up
                 (or after MESSAGE_GUARD_S); the record has no answer (talk 0, nothing
                 billed), end reason no_advisor
    the customer hangs up while the advisor rings -> the ring is withdrawn (no miss),
                 end reason customer_abandoned
    talking: the advisor hangs up (ConsultEnded) -> the customer is hung up; the customer
                 hangs up -> the consult machine hangs up the advisor

``Over`` (the consult machine's, or this machine's when the advisor was never rung) comes
once both the consultation and the customer's leg are over.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import assert_never

from advisors.records import EndReason
from callback_server import consult, dialer, ivr
from callback_server.dialer import Leg
from callback_server.dialer_messages import (
    Answered,
    CancelTimer,
    ChannelGone,
    Hangup,
    Originate,
    Originated,
    OriginateFailed,
    OriginateRefused,
    PersistAttempt,
    RecordLegResult,
    Route,
    StartTimer,
    TimerFired,
)

CONNECTING_PROMPT = "sound:cbgw/connecting-advisor"
NO_ANSWER_PROMPT = "sound:cbgw/party-no-answer"
MESSAGE_GUARD_S = 20.0         # the customer is hung up by then even if no playback ends
T_FIRST_RING = "click:ring"
T_MESSAGE = "click:message"


class Phase(enum.StrEnum):
    DIALLING = "dialling"        # the customer's leg is being dialled
    CONSULTING = "consulting"    # the customer answered; the consult machine runs
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Request:
    """The customer's side; ``consult`` the advisor side (``members`` the one advisor,
    ``queue_s`` 0; its ``customer_channel`` is set to the customer's leg that answered)."""

    consult: consult.Request
    routes: tuple[Route, ...]        # the customer's number through the carriers, cheapest first
    destination: str                 # the customer's number (E.164)
    caller_id: str                   # presented to the customer (the merchant's number)
    advisor_id: int                  # the advisor picked (the record's, if never rung)


@dataclass(frozen=True, slots=True)
class ClickState:
    request: Request
    phase: Phase = Phase.DIALLING
    route_index: int = 0
    leg_seq: int = 0                          # the round's legs so far (channel ids)
    leg: Leg | None = None                    # the customer's leg
    legs: tuple[Leg, ...] = ()                # the customer's legs that ended (carrier faults)
    consultation: consult.ConsultState | None = None
    message: str | None = None                # the no-answer message's playback, not finished
    over: consult.Over | None = None          # the consultation's outcome, held until the
                                              # customer's leg is gone

    @property
    def customer_live(self) -> bool:
        return self.leg is not None and not self.leg.ended


@dataclass(frozen=True, slots=True)
class MessageDone:
    """A playback to the customer finished (its id)."""

    playback_id: str


Event = consult.Event | MessageDone
Command = consult.Command
Step = tuple[ClickState, list[Command]]


def new(request: Request) -> ClickState:
    return ClickState(request)


def transition(state: ClickState, event: Event) -> Step:
    """Advance the click-to-call by one event; the customer leg's events are this
    machine's, the rest go to the consult machine once it runs."""
    if state.phase is Phase.DONE:
        return state, []
    match event:
        case consult.Begin(at=at):
            return _dial(state, at) if state.leg is None else (state, [])
        case MessageDone(playback_id=pid):
            if pid == state.message:
                return _message_over(state)
            return _to_consult(state, consult.FarewellDone(pid))
        case Originated(channel_id=cid) if _customer(state, cid):
            return state, [RecordLegResult(cid, "originated")]
        case (OriginateFailed(channel_id=cid, at=at)
              | OriginateRefused(channel_id=cid, at=at)) if _customer(state, cid):
            cmds: list[Command] = []
            if isinstance(event, OriginateFailed):
                cmds.append(RecordLegResult(cid, "failed"))
            nxt, more = _failover(state, at)     # nothing was dialled: no CDR, no cost
            return nxt, cmds + more
        case Answered(channel_id=cid, at=at) if _customer(state, cid):
            return _answered(state, at)
        case ChannelGone(channel_id=cid) if _customer(state, cid):
            return _gone(state, event)
        case TimerFired(name=name) if name in (T_FIRST_RING, T_MESSAGE):
            return _timer(state, name)
        case _:
            return _to_consult(state, event)


def _customer(state: ClickState, channel_id: str) -> bool:
    return state.leg is not None and state.leg.channel_id == channel_id


# --- the customer's leg --------------------------------------------------------------------


def _dial(state: ClickState, at: datetime) -> Step:
    req = state.request
    creq = req.consult
    route = req.routes[state.route_index]
    seq = state.leg_seq + 1
    channel_id = f"{creq.callback_id}-{seq:02d}"
    leg = Leg(channel_id, "customer", route.carrier_id, req.destination, at)
    state = replace(state, leg_seq=seq, leg=leg)
    return state, [
        PersistAttempt(creq.callback_id, creq.attempt_no, seq, channel_id, "customer",
                       route.carrier_id, route.endpoint),
        Originate(channel_id, route.endpoint, req.caller_id,
                  creq.ring_timeout_s + int(dialer.RING_GUARD_S),
                  ("callback", creq.callback_id, "customer"), creq.variables),
        StartTimer(T_FIRST_RING, creq.ring_timeout_s),
    ]


def _failover(state: ClickState, at: datetime) -> Step:
    """The customer's leg failed on a carrier: the next route, else nobody is rung."""
    if state.route_index + 1 < len(state.request.routes):
        return _dial(replace(state, route_index=state.route_index + 1, leg=None), at)
    return _unreached(state, at)


def _unreached(state: ClickState, at: datetime) -> Step:
    """The customer never answered: the advisor is not rung, nothing is billed."""
    req = state.request
    over = consult.Over(req.consult.consultation_id, req.advisor_id, (), None, at,
                        EndReason.CUSTOMER_ABANDONED, ())
    return replace(state, phase=Phase.DONE), [CancelTimer(T_FIRST_RING), over]


def _answered(state: ClickState, at: datetime) -> Step:
    leg = state.leg
    assert leg is not None
    if leg.answered_at is not None or leg.ended:
        return state, []
    cid = leg.channel_id
    request = replace(state.request.consult, customer_channel=cid)
    state = replace(state, leg=replace(leg, answered_at=at), phase=Phase.CONSULTING,
                    consultation=consult.ConsultState.new(request, state.leg_seq))
    cmds: list[Command] = [
        CancelTimer(T_FIRST_RING), RecordLegResult(cid, "answered"),
        consult.Farewell(cid, CONNECTING_PROMPT, f"{state.request.consult.consultation_id}"
                                                 "-connecting")]
    nxt, more = _to_consult(state, consult.Begin(at))
    return nxt, cmds + more


def _gone(state: ClickState, ev: ChannelGone) -> Step:
    leg = state.leg
    assert leg is not None
    if leg.ended:
        return state, []
    ended = replace(leg, ended=True)
    state = replace(state, leg=ended, legs=(*state.legs, ended))
    cmds: list[Command] = [RecordLegResult(ev.channel_id, "ended", ev.cause),
                           dialer.leg_cdr(state.request.consult.callback_id, ended, ev.at,
                                          ev.cause)]
    if state.phase is Phase.DIALLING:
        if dialer.classify(ev.cause) is dialer.CauseClass.FAILOVER:
            nxt, more = _failover(state, ev.at)
        else:
            nxt, more = _unreached(state, ev.at)
        return nxt, cmds + more
    if state.message is not None:
        state = replace(state, message=None)
        cmds.append(CancelTimer(T_MESSAGE))
    nxt, more = _to_consult(state, consult.CustomerGone(ev.at))
    return nxt, cmds + more


def _timer(state: ClickState, name: str) -> Step:
    leg = state.leg
    if name == T_FIRST_RING and state.phase is Phase.DIALLING and leg is not None \
            and not leg.ended:
        return state, [Hangup(leg.channel_id, "no_answer")]
    if name == T_MESSAGE and state.message is not None:
        return _message_over(state)
    return state, []


def _message_over(state: ClickState) -> Step:
    state = replace(state, message=None)
    cmds: list[Command] = [CancelTimer(T_MESSAGE)]
    if state.customer_live:
        assert state.leg is not None
        cmds.append(Hangup(state.leg.channel_id))
    return state, cmds


# --- the consultation ----------------------------------------------------------------------


def _to_consult(state: ClickState, event: consult.Event) -> Step:
    if state.consultation is None:
        return state, []
    consultation, cmds = consult.transition(state.consultation, event)
    state = replace(state, consultation=consultation)
    out: list[Command] = []
    for cmd in cmds:
        state, more = _from_consult(state, cmd)
        out += more
    nxt, more = _settle(state)
    return nxt, out + more


def _from_consult(state: ClickState, cmd: Command) -> Step:
    match cmd:
        case consult.Tell(outcome=outcome):
            return _told(state, outcome)
        case consult.Over():
            return replace(state, over=cmd), []
        case _:
            return state, [cmd]


def _told(state: ClickState, outcome: ivr.ConsultBusy | ivr.ConsultFailed | ivr.ConsultEnded
          ) -> Step:
    leg = state.leg
    if leg is None or leg.ended:
        return state, []
    match outcome:
        case ivr.ConsultEnded():            # the advisor hung up: the call is over
            return state, [Hangup(leg.channel_id)]
        case ivr.ConsultBusy() | ivr.ConsultFailed():
            playback = f"{state.request.consult.consultation_id}-no-answer"
            return replace(state, message=playback), [
                consult.Farewell(leg.channel_id, NO_ANSWER_PROMPT, playback),
                StartTimer(T_MESSAGE, MESSAGE_GUARD_S)]
        case _:
            assert_never(outcome)


def _settle(state: ClickState) -> Step:
    """``Over`` once the consultation is over and the customer's leg gone."""
    if state.over is None or state.customer_live:
        return state, []
    return replace(state, phase=Phase.DONE), [CancelTimer(T_MESSAGE), state.over]
