"""Web click-to-call: both parties dialled by the callback site, then bridged (pure).

``transition(state, event) -> (state, commands)``; no I/O (``tests/unit/
test_callback_click_to_call.py`` checks). The customer picked an online advisor on the
web; which party is rung first is the merchant's ``advisor_settings.click_to_call_first``.
The advisor side is the consult machine (:mod:`callback_server.consult`) with the one
advisor as its only member and no queue, run inside this one: its commands pass through
(so the advisor is rung, bridged, metered, recorded and controlled as in any
consultation), except its outcome for the IVR (``Tell``), which this machine turns into
what the party on the line hears, and, the advisor first, its bridge, held until the
customer answers. The customer's leg is this machine's: the cheapest carrier first, the
next one on a carrier fault (like a call-back's customer leg), for ring_timeout_s.

The customer first::

    customer answers -> CONNECTING_ADVISOR (「鑑定士におつなぎします…」) is played to them
                 and the consult machine rings the advisor; answered -> bridged
    customer does not answer (ring timeout, busy, every route failed) -> nobody else is
                 rung; Over with end reason customer_abandoned, no answer (nothing billed)
    the advisor does not answer (ConsultFailed / ConsultBusy: ring timeout, refused, every
                 route failed; the miss is counted by the assignment) -> the customer hears
                 NO_ANSWER_PROMPT (「お相手が応答しませんでした…」), then is hung up (or
                 after MESSAGE_GUARD_S); no answer in Over, end reason no_advisor
    the customer hangs up while the advisor rings -> the ring is withdrawn (no miss),
                 end reason customer_abandoned

The advisor first::

    the advisor does not answer -> nobody else is rung; the consult machine's Over (a miss)
    advisor answers  -> they hear CONNECTING_CUSTOMER (「お客様におつなぎします…」) while
                 the customer is dialled; the customer answers -> the consult machine's
                 bridge, the talk (and the meter) from the customer's answer
    customer does not answer -> the advisor hears NO_ANSWER_PROMPT, then is hung up; the
                 consult machine ends their presence (after-call work); Over has no
                 answer and end reason customer_abandoned (nothing billed)
    the advisor hangs up while the customer rings -> the customer's leg is hung up; no
                 answer, end reason no_advisor

What ``consult_live`` keeps of it (:func:`kept`, for a restart after the server's death):
the consultation from its advisor's first offer (while the advisor rings:
:func:`callback_server.consult_recovery.offer`), then once the two talk, and the advisor
first from their answer on, while the customer is dialled (and while the advisor hears
why the customer was not reached), with no answer in its record: a restart then ends it
with no talk, nothing billed (:func:`callback_server.consult_recovery.recovered`), the
ring withdrawn.

The connecting prompt, if still playing when the two are bridged, is stopped
(``StopPlayback``): a channel joins a bridge only once its playback is over.

Then either way: the advisor hangs up (ConsultEnded) -> the customer is hung up; the
customer hangs up -> the consult machine hangs up the advisor. ``Over`` comes once both
the consultation and the customer's leg are over.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import assert_never

from advisors.model import FirstParty
from advisors.records import ONLY_ANSWERED, EndReason
from callback_server import consult, consult_recovery, dialer, ivr
from callback_server.dialer import Leg
from callback_server.dialer_messages import (
    Answered,
    CancelTimer,
    ChannelGone,
    CreateBridge,
    DestroyBridge,
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
from callback_server.ivr import StopPlayback

CONNECTING_ADVISOR = "sound:cbgw/connecting-advisor"     # to the customer
CONNECTING_CUSTOMER = "sound:cbgw/connecting-customer"   # to the advisor
NO_ANSWER_PROMPT = "sound:cbgw/party-no-answer"
MESSAGE_GUARD_S = 20.0         # the first party is hung up by then even if no playback ends
T_RING = "click:ring"
T_MESSAGE = "click:message"


@dataclass(frozen=True, slots=True)
class Request:
    """The customer's side; ``consult`` the advisor side (``members`` the one advisor,
    ``queue_s`` 0; its ``customer_channel`` is set to the customer's leg when dialled)."""

    consult: consult.Request
    first: FirstParty
    routes: tuple[Route, ...]        # the customer's number through the carriers, cheapest first
    destination: str                 # the customer's number (E.164)
    caller_id: str                   # presented to the customer (the merchant's number)
    advisor_id: int                  # the advisor picked (the record's, if never rung)


@dataclass(frozen=True, slots=True)
class ClickState:
    request: Request
    route_index: int = 0
    leg_seq: int = 0                          # the round's legs so far (channel ids)
    leg: Leg | None = None                    # the customer's leg
    consultation: consult.ConsultState | None = None
    bridge: str | None = None                 # the advisor first: the bridge held until the
                                              # customer answers
    unreached: bool = False                   # the advisor first: the customer never answered
    message: str | None = None                # the no-answer message's playback, not finished
    connecting: str | None = None             # the connecting prompt's playback, not finished
    over: consult.Over | None = None          # the outcome, held until the customer's leg
                                              # is gone
    done: bool = False

    @property
    def customer_live(self) -> bool:
        return self.leg is not None and not self.leg.ended

    @property
    def customer_answered(self) -> bool:
        return self.leg is not None and self.leg.answered_at is not None

    @property
    def advisor_leg(self) -> str | None:
        leg = None if self.consultation is None else self.consultation.live_leg
        return None if leg is None else leg.channel_id

    @property
    def first_channel(self) -> str | None:
        """The first party's channel while it is up."""
        if self.request.first is FirstParty.ADVISOR:
            return self.advisor_leg
        return self.leg.channel_id if self.customer_live and self.leg is not None else None


def kept(state: ClickState) -> consult_recovery.Live | None:
    """What ``consult_live`` keeps of the click-to-call now (None: nothing): the
    consultation while its advisor rings and once the customer and the advisor talk; the
    advisor first and answered while the customer is not (yet) on the line, the same
    with no answer (no talk)."""
    consultation = state.consultation
    live = None if consultation is None else consult_recovery.live(consultation)
    if live is None or state.customer_answered:
        return live
    return replace(live, over=replace(live.over, answered_at=None))


@dataclass(frozen=True, slots=True)
class MessageDone:
    """A playback finished (its id)."""

    playback_id: str


Event = consult.Event | MessageDone
Command = consult.Command | StopPlayback
Step = tuple[ClickState, list[Command]]


def new(request: Request) -> ClickState:
    return ClickState(request)


def transition(state: ClickState, event: Event) -> Step:
    """Advance the click-to-call by one event; the customer leg's events are this
    machine's, the rest go to the consult machine once it runs."""
    if state.done:
        return state, []
    match event:
        case consult.Begin(at=at):
            return _begin(state, at)
        case MessageDone(playback_id=pid):
            if pid == state.message:
                return _message_over(state)
            if pid == state.connecting:
                return replace(state, connecting=None), []
            return _to_consult(state, consult.FarewellDone(pid))
        case Originated(channel_id=cid) if _customer(state, cid):
            return state, [RecordLegResult(cid, "originated")]
        case (OriginateFailed(channel_id=cid, at=at)
              | OriginateRefused(channel_id=cid, at=at)) if _customer(state, cid):
            cmds: list[Command] = []
            if isinstance(event, OriginateFailed):
                cmds.append(RecordLegResult(cid, "failed"))
            leg = state.leg
            assert leg is not None                # nothing was dialled: no CDR, no cost
            nxt, more = _failover(replace(state, leg=replace(leg, ended=True)), at)
            return nxt, cmds + more
        case Answered(channel_id=cid, at=at) if _customer(state, cid):
            return _answered(state, at)
        case ChannelGone(channel_id=cid) if _customer(state, cid):
            return _gone(state, event)
        case TimerFired(name=name) if name in (T_RING, T_MESSAGE):
            return _timer(state, name)
        case _:
            return _to_consult(state, event)


def _begin(state: ClickState, at: datetime) -> Step:
    """The first party is rung: the customer's leg, or the consult machine's advisor leg."""
    if state.leg is not None or state.consultation is not None:
        return state, []
    if state.request.first is FirstParty.CUSTOMER:
        return _dial(state, at)
    return _to_consult(_consulting(state, state.request.consult), consult.Begin(at))


def _customer(state: ClickState, channel_id: str) -> bool:
    return state.leg is not None and state.leg.channel_id == channel_id


def _consulting(state: ClickState, request: consult.Request) -> ClickState:
    return replace(state, consultation=consult.ConsultState.new(request, state.leg_seq))


# --- the customer's leg --------------------------------------------------------------------


def _dial(state: ClickState, at: datetime) -> Step:
    req = state.request
    creq = req.consult
    route = req.routes[state.route_index]
    consultation = state.consultation
    seq = max(state.leg_seq, 0 if consultation is None else consultation.leg_seq) + 1
    channel_id = f"{creq.callback_id}-{seq:02d}"
    if consultation is not None:       # the advisor is on the line: their legs come after
        consultation = replace(consultation, leg_seq=seq, request=replace(
            consultation.request, customer_channel=channel_id))
    leg = Leg(channel_id, "customer", route.carrier_id, req.destination, at)
    state = replace(state, leg_seq=seq, leg=leg, consultation=consultation)
    return state, [
        PersistAttempt(creq.callback_id, creq.attempt_no, seq, channel_id, "customer",
                       route.carrier_id, route.endpoint),
        Originate(channel_id, route.endpoint, req.caller_id,
                  creq.ring_timeout_s + int(dialer.RING_GUARD_S),
                  ("callback", creq.callback_id, "customer"), creq.variables),
        StartTimer(T_RING, creq.ring_timeout_s),
    ]


def _failover(state: ClickState, at: datetime) -> Step:
    """The customer's leg failed on a carrier: the next route while the advisor (when
    first) is still there, else the customer is unreached."""
    waiting = state.request.first is FirstParty.CUSTOMER or state.advisor_leg is not None
    if waiting and state.route_index + 1 < len(state.request.routes):
        return _dial(replace(state, route_index=state.route_index + 1), at)
    return _unreached(state, at)


def _unreached(state: ClickState, at: datetime) -> Step:
    """The customer never answered: nothing is billed. The customer first: the advisor is
    not rung; the advisor first: they hear why, then are hung up."""
    cmds: list[Command] = [CancelTimer(T_RING)]
    if state.request.first is FirstParty.ADVISOR:
        nxt, more = _no_answer(replace(state, unreached=True))
        return nxt, cmds + more
    req = state.request
    over = consult.Over(req.consult.consultation_id, req.advisor_id, (), None, at,
                        EndReason.CUSTOMER_ABANDONED, ())
    nxt, more = _settle(replace(state, over=over))
    return nxt, cmds + more


def _answered(state: ClickState, at: datetime) -> Step:
    leg = state.leg
    assert leg is not None
    if leg.answered_at is not None or leg.ended:
        return state, []
    cid = leg.channel_id
    state = replace(state, leg=replace(leg, answered_at=at))
    cmds: list[Command] = [CancelTimer(T_RING), RecordLegResult(cid, "answered")]
    consultation_id = state.request.consult.consultation_id
    if state.request.first is FirstParty.CUSTOMER:
        playback = f"{consultation_id}-connecting"
        cmds.append(consult.Farewell(cid, CONNECTING_ADVISOR, playback))
        state = _consulting(replace(state, connecting=playback),
                            replace(state.request.consult, customer_channel=cid))
        nxt, more = _to_consult(state, consult.Begin(at))
        return nxt, cmds + more
    advisor, consultation, bridge = state.advisor_leg, state.consultation, state.bridge
    if bridge is None or advisor is None or consultation is None:
        return state, [*cmds, Hangup(cid)]          # the advisor left meanwhile
    # the talk (the record's answer, the meter's start) begins now
    state = replace(state, bridge=None, consultation=replace(consultation, answered_at=at))
    state, stop = _stop_connecting(state)
    return state, [*cmds, *stop, CreateBridge(bridge, (cid, advisor))]


def _gone(state: ClickState, ev: ChannelGone) -> Step:
    leg = state.leg
    assert leg is not None
    if leg.ended:
        return state, []
    state = replace(state, leg=replace(leg, ended=True))
    cmds: list[Command] = [RecordLegResult(ev.channel_id, "ended", ev.cause),
                           dialer.leg_cdr(state.request.consult.callback_id, leg, ev.at,
                                          ev.cause)]
    if leg.answered_at is None:
        if dialer.classify(ev.cause) is dialer.CauseClass.FAILOVER:
            nxt, more = _failover(state, ev.at)
        else:
            nxt, more = _unreached(state, ev.at)
        return nxt, cmds + more
    if state.message is not None:              # the customer was hearing the message
        state = replace(state, message=None)
        cmds.append(CancelTimer(T_MESSAGE))
    nxt, more = _to_consult(state, consult.CustomerGone(ev.at))
    return nxt, cmds + more


def _timer(state: ClickState, name: str) -> Step:
    leg = state.leg
    if name == T_RING and leg is not None and not leg.ended and leg.answered_at is None:
        return state, [Hangup(leg.channel_id, "no_answer")]
    if name == T_MESSAGE and state.message is not None:
        return _message_over(state)
    return state, []


def _no_answer(state: ClickState) -> Step:
    """The second party did not answer: the first hears why (then ``_message_over``)."""
    channel = state.first_channel
    if channel is None:
        return _settle(state)
    playback = f"{state.request.consult.consultation_id}-no-answer"
    return replace(state, message=playback), [
        consult.Farewell(channel, NO_ANSWER_PROMPT, playback),
        StartTimer(T_MESSAGE, MESSAGE_GUARD_S)]


def _message_over(state: ClickState) -> Step:
    channel = state.first_channel
    state = replace(state, message=None)
    cmds: list[Command] = [CancelTimer(T_MESSAGE)]
    if channel is not None:
        cmds.append(Hangup(channel))
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
            return replace(state, over=_outcome(state, cmd)), []
        case CreateBridge(bridge_id=bridge) if not state.customer_answered:
            return _advisor_answered(replace(state, bridge=bridge))
        case DestroyBridge(bridge_id=bridge) if bridge == state.bridge:
            return replace(state, bridge=None), []       # never created
        case CreateBridge():
            state, stop = _stop_connecting(state)
            return state, [*stop, cmd]
        case _:
            return state, [cmd]


def _advisor_answered(state: ClickState) -> Step:
    """The advisor first answered: they hear that the customer is being connected while
    the customer is dialled."""
    consultation, advisor = state.consultation, state.advisor_leg
    assert consultation is not None and advisor is not None
    at = consultation.answered_at
    assert at is not None
    playback = f"{state.request.consult.consultation_id}-connecting"
    nxt, more = _dial(replace(state, connecting=playback), at)
    return nxt, [consult.Farewell(advisor, CONNECTING_CUSTOMER, playback), *more]


def _stop_connecting(state: ClickState) -> Step:
    """The two are bridged: the connecting prompt, if still playing, stops (a channel
    joins the bridge only once its playback is over)."""
    if state.connecting is None:
        return state, []
    return replace(state, connecting=None), [StopPlayback(state.connecting)]


def _told(state: ClickState, outcome: ivr.ConsultBusy | ivr.ConsultFailed | ivr.ConsultEnded
          ) -> Step:
    match outcome:
        case ivr.ConsultEnded():         # the advisor hung up: the customer's leg goes
            leg = state.leg
            return state, [Hangup(leg.channel_id)] if state.customer_live and leg else []
        case ivr.ConsultBusy() | ivr.ConsultFailed():
            return _no_answer(state)
        case _:
            assert_never(outcome)


def _outcome(state: ClickState, over: consult.Over) -> consult.Over:
    """The consult machine's ``Over``; the advisor first and the customer never answered:
    no answer (nothing billed), customer_abandoned (or no_advisor when the advisor left
    first)."""
    if state.request.first is FirstParty.CUSTOMER or state.customer_answered:
        return over
    reason = over.end_reason
    if state.unreached:
        reason = EndReason.CUSTOMER_ABANDONED
    elif reason in ONLY_ANSWERED:
        reason = EndReason.NO_ADVISOR
    return replace(over, answered_at=None, end_reason=reason)


def _settle(state: ClickState) -> Step:
    """``Over`` once the consultation is over and the customer's leg gone."""
    if state.over is None or state.customer_live:
        return state, []
    return replace(state, done=True), [CancelTimer(T_MESSAGE), CancelTimer(T_RING),
                                       state.over]
