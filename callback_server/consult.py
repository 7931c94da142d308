"""A consultation: the advisor leg(s) of one customer, as a pure state machine.

``transition(state, event) -> (state, commands)``; no I/O here (no aiohttp, asyncpg or
``shared.ari`` imports; ``tests/unit/test_callback_consult.py`` checks). The ARI
adapter (:mod:`callback_server.consult_runner`) runs the assignment in the database
(``advisors.live.Presences``), dials, bridges, and feeds the results back.

One consultation, from the IVR's ``ConnectAdvisor`` to its end::

    Begin --RunAssignment(assign)--> Assigned
      OfferTo(advisor)  ring the advisor: their contact's routes (a PSTN number through
                        the cheapest carrier first, failing over on a carrier fault like
                        the customer leg; a SIP user through the edge trunk), for the
                        merchant's ring_timeout_s
      Queue             no member can take the call: music on hold, the assignment
                        tried again every RETRY_S, up to the node's queue_s (0: at
                        once), then the IVR's on_fail
      LinesBusy         all the merchant's lines are in use: the IVR's on_busy
    ringing:  answered  -> RunAssignment(answered) -> Connect: bridge customer and advisor
              no answer in ring_timeout_s, refused, or every route failed
                        -> RunAssignment(ring_missed): the miss is counted on the
                           advisor (N in a row: a break), the next member is offered
              customer hangs up -> the ring is withdrawn (RunAssignment(cancelled): no miss)
    talking:  either side hangs up -> the other leg is hung up (the advisor) or handed
              back to the IVR's next node (the customer); ConsultationEnded is applied
              to the advisor (EndPresence)
              HoldCustomer / ResumeCustomer (the API): the customer leaves the bridge
              for music on hold (the advisor stays in it, hearing nothing), then is put
              back; each hold is kept (Hold(started_at, ended_at)) for the record
              ForceEnd (an operator, through the API) -> the advisor leg is hung up, the
              customer hears FAREWELL_PROMPT (Farewell) and is hung up when it finished
              (FarewellDone) or after FAREWELL_GUARD_S; the end reason is forced_end
              (ForceEnd with reason cut_off and its own message: the prepaid meter's
              cut-off, :mod:`callback_server.consult_meter`)
              StartTransfer (the API): a consult transfer to another advisor (their own
              one-member assignment ``<consultation>-t<n>``: offered, ringing, talking,
              through their contact's routes) or to a number (``RouteTransfer``: the
              adapter's cheapest routes); the customer is held (music), the second
              party, once answered, joins the bridge with the first advisor.
              CompleteTransfer: the first advisor's leg is hung up (their presence
              ends), the customer back in the bridge, now with the second party (an
              advisor: the consultation's advisor from then on). CancelTransfer: the
              second party is hung up, the customer back with the first advisor. The
              second party not answering (ring timeout, refused, every route failed):
              the first advisor hears TRANSFER_FAILED_PROMPT, the customer stays on
              hold. Either party of the consultation leaving ends the transfer
              (cancelled); each transfer is kept (Transfer(at, to, outcome)).

When nothing is left to wait for, ``Over`` carries what the consultation record needs
(rings, answer, end, reason, the advisor legs for their costs). Every leg is torn down
on every path; a teardown guard timer ends the wait for a leg that never reports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import assert_never

from advisors import assignment as am
from advisors.records import EndReason, Hold, Ring, RingOutcome, Transfer
from callback_server import dialer, ivr
from callback_server.dialer import Leg
from callback_server.dialer_messages import (
    EDGE_TRUNK,
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
    RecordCdr,
    RecordLegResult,
    Route,
    StartTimer,
    TimerFired,
)

RETRY_S = 2.0                  # a queued customer's assignment is tried again this often
TEARDOWN_GUARD_S = 5.0
FAREWELL_GUARD_S = 20.0        # the customer is hung up by then even if no playback ends
FAREWELL_PROMPT = "sound:cbgw/forced-end"
TRANSFER_FAILED_PROMPT = "sound:cbgw/advisor-away"   # to the first advisor
T_RING = "consult:ring"
T_QUEUE = "consult:queue"
T_RETRY = "consult:retry"
T_TEARDOWN = "consult:teardown"
T_FAREWELL = "consult:farewell"
T_TRANSFER = "consult:transfer-ring"
TIMERS = (T_RING, T_QUEUE, T_RETRY, T_TEARDOWN, T_FAREWELL, T_TRANSFER)
LEG_FAILED_CAUSES = frozenset({17, 20})   # busy, unreachable: the leg failed, not missed


class Phase(enum.StrEnum):
    ASSIGNING = "assigning"      # an assignment is being run in the database
    RINGING = "ringing"          # an advisor leg is being dialled
    QUEUED = "queued"            # waiting for a member to be free (music on hold)
    TALKING = "talking"          # customer and advisor bridged
    ENDING = "ending"            # the outcome is decided; waiting for legs to go
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Request:
    """What the consultation is for: set by the adapter from the round and the IVR node."""

    consultation_id: str
    callback_id: str
    attempt_no: int
    customer_channel: str
    members: frozenset[int]
    ring_timeout_s: int          # the merchant's advisor_settings.ring_timeout_s
    queue_s: int                 # longest wait in the queue; 0: no queue
    caller_id: str               # presented to a PSTN advisor (the merchant's number)
    sip_caller_id: str           # presented to a SIP advisor (the customer's number)
    variables: tuple[tuple[str, str], ...] = ()   # every leg's channel variables


class Outcome(enum.StrEnum):
    """How a transfer ended (``Transfer.outcome``)."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Transferring:
    """A consult transfer in progress: to ``to_advisor_id`` (through ``assignment``) or
    to ``to_number``; ``leg`` the second party's (role ``advisor``)."""

    at: datetime
    to_advisor_id: int | None
    to_number: str | None
    assignment: am.Assignment | None
    routes: tuple[Route, ...] = ()
    route_index: int = 0
    leg: Leg | None = None

    @property
    def answered(self) -> bool:
        return self.leg is not None and self.leg.answered_at is not None


@dataclass(frozen=True, slots=True)
class ConsultState:
    request: Request
    assignment: am.Assignment
    leg_seq: int                                  # the round's legs so far (channel ids)
    phase: Phase = Phase.ASSIGNING
    routes: tuple[Route, ...] = ()
    route_index: int = 0
    destination: str = ""                         # the contact of the advisor rung
    ring_started: datetime | None = None
    advisor: int | None = None                    # the advisor being rung or talking
    leg: Leg | None = None                        # their leg (role "advisor")
    legs: tuple[Leg, ...] = ()                    # every advisor leg that has ended
    rings: tuple[Ring, ...] = ()
    ring_outcome: RingOutcome | None = None              # decided for the ringing leg, not logged
    queued: bool = False
    queued_at: datetime | None = None             # when the customer was first queued
    sought_at: datetime | None = None             # when an advisor was first sought
    bridge_id: str | None = None
    connected_advisor: int | None = None
    answered_at: datetime | None = None
    end_reason: EndReason | None = None
    ended_at: datetime | None = None
    assigning: bool = False                       # a RunAssignment is in flight
    farewell: str | None = None                   # the forced end's playback, not finished
    held_since: datetime | None = None            # the customer is on hold since
    holds: tuple[Hold, ...] = ()                  # the holds that ended
    transferring: Transferring | None = None
    transfers: tuple[Transfer, ...] = ()          # the transfers that ended
    parting: tuple[Leg, ...] = ()                 # legs hung up, their end not yet seen
    presence_id: str | None = None                # the talking advisor's presence is under
    presence_ended: bool = False                  # (a transfer's id; None: this one's)

    @classmethod
    def new(cls, request: Request, leg_seq: int) -> ConsultState:
        return cls(request, am.Assignment(request.consultation_id, request.members),
                   leg_seq)

    @property
    def live_leg(self) -> Leg | None:
        return self.leg if self.leg is not None and not self.leg.ended else None

    @property
    def live_legs(self) -> tuple[Leg, ...]:
        """Every leg of the consultation not known to have ended: the advisor's, a
        transfer's second party, the legs a transfer hung up."""
        second = None if self.transferring is None else self.transferring.leg
        return tuple(leg for leg in (self.leg, second, *self.parting)
                     if leg is not None and not leg.ended)


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    at: datetime


@dataclass(frozen=True, slots=True)
class Assigned:
    """The result of a ``RunAssignment``. ``routes``: the ways to the advisor of an
    ``OfferTo`` among ``commands`` (empty: their contact cannot be dialled), and
    ``destination`` their contact (an E.164 number, or the SIP user)."""

    assignment: am.Assignment
    commands: tuple[am.Command, ...]
    at: datetime
    routes: tuple[Route, ...] = ()
    destination: str = ""


@dataclass(frozen=True, slots=True)
class CustomerGone:
    at: datetime


@dataclass(frozen=True, slots=True)
class ForceEnd:
    """An operator ends the consultation now (talking; or, ``forced_end`` only, while an
    advisor is sought: the ring withdrawn, no miss), or billing cuts it off (``reason``
    cut_off, with its own message ``farewell``; only while talking)."""

    at: datetime
    reason: EndReason = EndReason.FORCED_END
    farewell: str = FAREWELL_PROMPT


@dataclass(frozen=True, slots=True)
class HoldCustomer:
    """Put the talking customer on hold (music); the advisor stays on the line."""

    at: datetime


@dataclass(frozen=True, slots=True)
class ResumeCustomer:
    """Take the customer off hold, back to the advisor."""

    at: datetime


@dataclass(frozen=True, slots=True)
class StartTransfer:
    """Start a consult transfer to an advisor or to a number (exactly one)."""

    at: datetime
    to_advisor_id: int | None = None
    to_number: str | None = None


@dataclass(frozen=True, slots=True)
class CompleteTransfer:
    """Connect the customer to the second party; the first advisor leaves."""

    at: datetime


@dataclass(frozen=True, slots=True)
class CancelTransfer:
    """Hang up the second party (if any); the customer back to the first advisor."""

    at: datetime


@dataclass(frozen=True, slots=True)
class TransferRouted:
    """The result of a ``RouteTransfer``: the ways to the number (cheapest first)."""

    at: datetime
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class FarewellDone:
    """The forced end's message to the customer finished (its playback id)."""

    playback_id: str


OPERATOR_EVENTS = (ForceEnd, FarewellDone, HoldCustomer, ResumeCustomer, StartTransfer,
                   CompleteTransfer, CancelTransfer)
Operator = (ForceEnd | FarewellDone | HoldCustomer | ResumeCustomer | StartTransfer
            | CompleteTransfer | CancelTransfer)
Event = (Begin | Assigned | CustomerGone | Operator | TransferRouted | Originated
         | OriginateFailed
         | OriginateRefused | Answered | ChannelGone | TimerFired)

# --- commands -----------------------------------------------------------------------------


class Op(enum.StrEnum):
    ASSIGN = "assign"
    RING_MISSED = "ring_missed"
    ANSWERED = "answered"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class RunAssignment:
    """Run ``Presences.<op>`` on the assignment; the result comes back as ``Assigned``."""

    op: Op
    assignment: am.Assignment


@dataclass(frozen=True, slots=True)
class RouteTransfer:
    """Find the routes to a transfer's number; the result comes back as ``TransferRouted``."""

    number: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """Play ``media`` to ``channel_id`` (no end awaited)."""

    channel_id: str
    media: str


@dataclass(frozen=True, slots=True)
class StartMoh:
    channel_id: str


@dataclass(frozen=True, slots=True)
class StopMoh:
    channel_id: str


@dataclass(frozen=True, slots=True)
class Farewell:
    """Play ``media`` to the customer (in the merchant's language) as ``playback_id``."""

    channel_id: str
    media: str
    playback_id: str


@dataclass(frozen=True, slots=True)
class Unbridge:
    """Take ``channel_id`` out of the bridge (it stays up, in the application)."""

    bridge_id: str
    channel_id: str


@dataclass(frozen=True, slots=True)
class Rebridge:
    """Put ``channel_id`` back into the bridge."""

    bridge_id: str
    channel_id: str


@dataclass(frozen=True, slots=True)
class EndPresence:
    """Apply ``ConsultationEnded`` to the advisor who talked (after-call work), under
    ``consultation_id`` (None: this consultation's; a transfer's assignment id)."""

    advisor_id: int
    consultation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Tell:
    """The consultation's outcome for the IVR."""

    outcome: ivr.ConsultBusy | ivr.ConsultFailed | ivr.ConsultEnded


@dataclass(frozen=True, slots=True)
class Over:
    """Nothing is left to wait for: what the consultation record is made of."""

    consultation_id: str
    advisor_id: int | None            # who talked, else the last advisor rung
    rings: tuple[Ring, ...]
    answered_at: datetime | None
    ended_at: datetime
    end_reason: EndReason
    legs: tuple[Leg, ...]
    holds: tuple[Hold, ...] = ()
    transfers: tuple[Transfer, ...] = ()


Command = (RunAssignment | RouteTransfer | Prompt | PersistAttempt | Originate | Hangup
           | StartTimer | CancelTimer | RecordLegResult | RecordCdr | CreateBridge
           | DestroyBridge | StartMoh | StopMoh
           | Farewell | Unbridge | Rebridge | EndPresence | Tell | Over)

Step = tuple[ConsultState, list[Command]]


def transition(state: ConsultState, event: Event) -> Step:  # noqa: C901 - one branch per event
    """Advance the consultation by one event. Events it does not own change nothing."""
    if state.phase is Phase.DONE:
        return state, []
    match event:
        case Begin(at=at):
            return _run(replace(state, sought_at=at), Op.ASSIGN)
        case Assigned() if event.assignment.consultation_id != state.assignment.consultation_id:
            return _xfer_assigned(state, event)
        case Assigned():
            return _assigned(state, event)
        case CustomerGone(at=at):
            return _customer_gone(state, at)
        case ForceEnd() | FarewellDone() | HoldCustomer() | ResumeCustomer() \
                | StartTransfer() | CompleteTransfer() | CancelTransfer():
            return _operator(state, event)
        case TransferRouted(at=at, routes=routes):
            return _xfer_offer(state, routes, at) if _xfer_seeking(state) else (state, [])
        case Originated(channel_id=cid):
            mine = _ours(state, cid) or _xfer_leg(state, cid) is not None
            return state, ([RecordLegResult(cid, "originated")] if mine else [])
        case OriginateFailed(channel_id=cid, at=at) | OriginateRefused(channel_id=cid, at=at) \
                if _xfer_leg(state, cid) is not None:
            return _xfer_leg_failed(state, at, failed=isinstance(event, OriginateFailed))
        case OriginateFailed(channel_id=cid, at=at) | OriginateRefused(channel_id=cid, at=at):
            if not _ours(state, cid) or state.phase is not Phase.RINGING:
                return state, []
            state, cmds = _leg_ended(state, at, None)
            if isinstance(event, OriginateFailed):
                cmds.append(RecordLegResult(cid, "failed"))
            nxt, more = _failover(state, at)
            return nxt, cmds + more
        case Answered(channel_id=cid, at=at) if _xfer_leg(state, cid) is not None:
            return _xfer_answered(state, at)
        case Answered(channel_id=cid, at=at):
            return _answered(state, cid, at)
        case ChannelGone(channel_id=cid) if _xfer_leg(state, cid) is not None:
            return _xfer_gone(state, event)
        case ChannelGone(channel_id=cid) if any(p.channel_id == cid for p in state.parting):
            return _parted(state, event)
        case ChannelGone(channel_id=cid):
            return _gone(state, event) if _ours(state, cid) else (state, [])
        case TimerFired(name=name, at=at):
            return _timer(state, name, at)
        case _:
            assert_never(event)


# --- assignment ---------------------------------------------------------------------------


def _run(state: ConsultState, op: Op) -> Step:
    return replace(state, assigning=True), [RunAssignment(op, state.assignment)]


def _assigned(state: ConsultState, ev: Assigned) -> Step:
    state = replace(state, assignment=ev.assignment, assigning=False)
    cmds: list[Command] = []
    for cmd in ev.commands:
        state, more = _assignment_command(state, cmd, ev)
        cmds += more
    nxt, more = _settle(state, ev.at)
    return nxt, cmds + more


def _assignment_command(state: ConsultState, cmd: am.Command, ev: Assigned) -> Step:
    match cmd:
        case am.OfferTo(advisor_id=advisor):
            if state.end_reason is not None:      # the customer left meanwhile
                return _run(state, Op.CANCELLED)
            return _offer(replace(state, destination=ev.destination), advisor, ev.routes,
                          ev.at)
        case am.Queue():
            return _queue(state, ev.at)
        case am.LinesBusy():
            return _end(state, EndReason.LINES_BUSY, ev.at, Tell(ivr.ConsultBusy()))
        case am.Connect(advisor_id=advisor):
            return _connect(state, advisor, ev.at)
        case am.Withdraw() | am.NotApplicable():
            return state, []
        case _:
            assert_never(cmd)


def _offer(state: ConsultState, advisor: int, routes: tuple[Route, ...], at: datetime
           ) -> Step:
    state = replace(state, phase=Phase.RINGING, routes=routes, route_index=0,
                    ring_started=at, ring_outcome=None)
    cmds: list[Command] = [CancelTimer(T_RETRY)]
    if not routes:     # their contact cannot be dialled: nothing rang, the next member
        nxt, more = _run(replace(state, phase=Phase.ASSIGNING), Op.RING_MISSED)
        return nxt, cmds + more
    nxt, more = _dial(state, advisor, at)
    return nxt, cmds + more


def _dial(state: ConsultState, advisor: int, at: datetime) -> Step:
    leg, cmds = _originate(state, state.routes[state.route_index], state.destination, at,
                           T_RING)
    return replace(state, leg_seq=state.leg_seq + 1, leg=leg, advisor=advisor), cmds


def _originate(state: ConsultState, route: Route, destination: str, at: datetime,
               timer: str) -> tuple[Leg, list[Command]]:
    """The round's next leg (role ``advisor``) to ``destination`` through ``route``, rung
    for the merchant's ring timeout (``timer``)."""
    req = state.request
    seq = state.leg_seq + 1
    channel_id = f"{req.callback_id}-{seq:02d}"
    leg = Leg(channel_id, "advisor", route.carrier_id, destination, at)
    caller_id = req.sip_caller_id if route.carrier_id == EDGE_TRUNK else req.caller_id
    return leg, [
        PersistAttempt(req.callback_id, req.attempt_no, seq, channel_id, "advisor",
                       route.carrier_id, route.endpoint,
                       None if route.carrier_id == EDGE_TRUNK else destination),
        Originate(channel_id, route.endpoint, caller_id,
                  req.ring_timeout_s + int(dialer.RING_GUARD_S),
                  ("callback", req.callback_id, "advisor"), req.variables),
        StartTimer(timer, req.ring_timeout_s),
    ]


def _failover(state: ConsultState, at: datetime) -> Step:
    """The leg failed before ringing the advisor (carrier fault): the next route."""
    assert state.advisor is not None
    if state.end_reason is None and state.route_index + 1 < len(state.routes):
        return _dial(replace(state, route_index=state.route_index + 1), state.advisor, at)
    state = replace(state, ring_outcome=state.ring_outcome or RingOutcome.FAILED)
    return _ring_over(state, at)


def _ring_over(state: ConsultState, at: datetime) -> Step:
    """The offer to the advisor ended unanswered: log it, then the next member (a miss)
    or, when the customer left, the withdrawal."""
    assert state.leg is not None and state.advisor is not None
    outcome = state.ring_outcome or RingOutcome.MISSED
    ended = at if state.ended_at is None else min(at, state.ended_at)   # withdrawn then
    ring = Ring(state.advisor, state.leg.channel_id, state.ring_started or ended, ended, outcome)
    state = replace(state, rings=(*state.rings, ring), ring_outcome=None, ring_started=None,
                    leg=None, routes=())
    cmds: list[Command] = [CancelTimer(T_RING)]
    if outcome == RingOutcome.WITHDRAWN:
        return state, cmds       # RunAssignment(cancelled) was issued with the hang-up
    nxt, more = _run(replace(state, phase=Phase.ASSIGNING), Op.RING_MISSED)
    return nxt, cmds + more


def _queue(state: ConsultState, at: datetime) -> Step:
    req = state.request
    if state.end_reason is not None:
        return state, []
    if req.queue_s == 0:
        return _end(state, EndReason.NO_ADVISOR, at, Tell(ivr.ConsultFailed()))
    cmds: list[Command] = [StartTimer(T_RETRY, RETRY_S)]
    if not state.queued:
        cmds += [StartMoh(req.customer_channel), StartTimer(T_QUEUE, req.queue_s)]
    return replace(state, phase=Phase.QUEUED, queued=True,
                   queued_at=state.queued_at or at), cmds


def _connect(state: ConsultState, advisor: int, at: datetime) -> Step:
    leg = state.live_leg
    if leg is None or state.end_reason is not None:
        return state, []
    bridge_id = f"{state.request.consultation_id}-br"
    state = replace(state, phase=Phase.TALKING, bridge_id=bridge_id, connected_advisor=advisor,
                    answered_at=leg.answered_at or at)
    cmds: list[Command] = [CancelTimer(T_QUEUE), CancelTimer(T_RETRY)]
    if state.queued:
        cmds.append(StopMoh(state.request.customer_channel))
    return state, [*cmds, CreateBridge(bridge_id, (state.request.customer_channel,
                                                   leg.channel_id))]


# --- legs ---------------------------------------------------------------------------------


def _ours(state: ConsultState, channel_id: str) -> bool:
    return state.leg is not None and state.leg.channel_id == channel_id


def _answered(state: ConsultState, cid: str, at: datetime) -> Step:
    leg = state.live_leg
    if leg is None or leg.channel_id != cid or leg.answered_at is not None:
        return state, []
    state = replace(state, leg=replace(leg, answered_at=at))
    cmds: list[Command] = [CancelTimer(T_RING), RecordLegResult(cid, "answered")]
    if state.end_reason is not None or state.phase is not Phase.RINGING:
        return state, [*cmds, Hangup(cid)]     # answered after the customer left
    assert state.advisor is not None
    state = replace(state, ring_outcome=RingOutcome.ANSWERED,
                    rings=(*state.rings, Ring(state.advisor, cid,
                                                 state.ring_started or leg.started_at, at,
                                                 RingOutcome.ANSWERED)))
    nxt, more = _run(state, Op.ANSWERED)
    return nxt, cmds + more


def _leg_ended(state: ConsultState, at: datetime, cause: int | None) -> Step:
    """Mark the current leg ended; ``cause`` None: nothing was dialled (no CDR, no cost)."""
    assert state.leg is not None
    leg = replace(state.leg, ended=True)
    if cause is None:
        return replace(state, leg=leg), []
    state = replace(state, leg=leg, legs=(*state.legs, leg))
    return state, [dialer.leg_cdr(state.request.callback_id, leg, at, cause)]


def _gone(state: ConsultState, ev: ChannelGone) -> Step:
    leg = state.leg
    assert leg is not None
    if leg.ended:
        return state, []
    state, cmds = _leg_ended(state, ev.at, ev.cause)
    cmds.insert(0, RecordLegResult(ev.channel_id, "ended", ev.cause))
    if state.phase is Phase.TALKING:
        nxt, more = _advisor_hung_up(state, ev.at)
    elif state.connected_advisor is None and state.ring_outcome != RingOutcome.ANSWERED:
        nxt, more = _unanswered_gone(state, ev)
    else:
        nxt, more = state, []
    nxt, settle = _settle(nxt, ev.at)
    return nxt, cmds + more + settle


def _unanswered_gone(state: ConsultState, ev: ChannelGone) -> Step:
    if state.ring_outcome is None:
        if dialer.classify(ev.cause) is dialer.CauseClass.FAILOVER:
            return _failover(state, ev.at)
        if ev.cause in LEG_FAILED_CAUSES:
            state = replace(state, ring_outcome=RingOutcome.FAILED)
    return _ring_over(state, ev.at)


def _customer_out(state: ConsultState) -> list[Command]:
    """Take the customer out of the bridge (a request Asterisk answers once they are out)
    before the bridge is destroyed and anything is played to them: a play sent while the
    bridge is torn down is queued to that bridge and lost with it (no playback starts) or
    cut at once. On hold, and so during a transfer, the customer is out of it already."""
    bridge = state.bridge_id
    if bridge is None or state.held_since is not None:
        return []
    return [Unbridge(bridge, state.request.customer_channel)]


def _advisor_hung_up(state: ConsultState, at: datetime) -> Step:
    advisor = state.connected_advisor
    assert advisor is not None
    cmds = _customer_out(state)
    state, more = _xfer_drop(state, at, Outcome.CANCELLED)
    cmds += more
    state, more = _hold_over(state, at, customer_here=True)
    cmds += [*more, *_end_presence(state, advisor)]
    if state.bridge_id is not None:
        cmds.append(DestroyBridge(state.bridge_id))
    state = replace(state, bridge_id=None)
    nxt, more = _end(state, EndReason.ADVISOR_HANGUP, at, Tell(ivr.ConsultEnded()))
    return nxt, cmds + more


def _customer_gone(state: ConsultState, at: datetime) -> Step:
    if state.end_reason is not None:
        return state, []
    cmds: list[Command] = [CancelTimer(T_QUEUE), CancelTimer(T_RETRY)]
    leg = state.live_leg
    if state.phase is Phase.TALKING and leg is not None:
        advisor = state.connected_advisor
        assert advisor is not None
        state, more = _xfer_drop(state, at, Outcome.CANCELLED)
        state, _ = _hold_over(state, at, customer_here=False)
        cmds += [*more, Hangup(leg.channel_id), *_end_presence(state, advisor)]
        if state.bridge_id is not None:
            cmds.append(DestroyBridge(state.bridge_id))
        state = replace(state, bridge_id=None)
        nxt, more = _end(state, EndReason.CUSTOMER_HANGUP, at)
        return nxt, cmds + more
    state, more = _withdraw(state)
    nxt, ending = _end(state, EndReason.CUSTOMER_ABANDONED, at)
    return nxt, cmds + more + ending


def _withdraw(state: ConsultState) -> Step:
    """Stop seeking an advisor: the ringing leg is hung up (withdrawn: no miss) and the
    assignment cancelled."""
    cmds: list[Command] = []
    leg = state.live_leg
    if state.phase is Phase.RINGING and leg is not None:
        state = replace(state, ring_outcome=RingOutcome.WITHDRAWN)
        cmds.append(Hangup(leg.channel_id))
    state, more = _run(state, Op.CANCELLED)
    return state, cmds + more


def _operator(state: ConsultState, event: Operator) -> Step:
    """An operator's control of the consultation, and what follows from it."""
    match event:
        case HoldCustomer(at=at):
            return _hold(state, at)
        case ResumeCustomer(at=at):
            return _resume(state, at)
        case ForceEnd(at=at, reason=reason, farewell=media):
            return _force_end(state, at, reason, media)
        case StartTransfer():
            return _start_transfer(state, event)
        case CompleteTransfer(at=at):
            return _complete_transfer(state, at)
        case CancelTransfer(at=at):
            if state.transferring is None:
                return _resume(state, at)
            state, cmds = _xfer_drop(state, at, Outcome.CANCELLED)
            nxt, more = _resume(state, at)
            return nxt, cmds + more
        case FarewellDone(playback_id=pid):
            return _farewell_over(state) if pid == state.farewell else (state, [])
        case _:
            assert_never(event)


def _hold(state: ConsultState, at: datetime) -> Step:
    if state.phase is not Phase.TALKING or state.held_since is not None \
            or state.bridge_id is None:
        return state, []
    customer = state.request.customer_channel
    return replace(state, held_since=at), [Unbridge(state.bridge_id, customer),
                                           StartMoh(customer)]


def _resume(state: ConsultState, at: datetime) -> Step:
    bridge = state.bridge_id
    if state.phase is not Phase.TALKING or state.held_since is None or bridge is None:
        return state, []
    customer = state.request.customer_channel
    state, cmds = _hold_over(state, at, customer_here=True)
    return state, [*cmds, Rebridge(bridge, customer)]


def _hold_over(state: ConsultState, at: datetime, *, customer_here: bool) -> Step:
    """A hold in progress ends (kept for the record); the music stops if the customer
    is still there."""
    if state.held_since is None:
        return state, []
    state = replace(state, holds=(*state.holds, Hold(state.held_since, max(at, state.held_since))),
                    held_since=None)
    return state, [StopMoh(state.request.customer_channel)] if customer_here else []


def _force_end(state: ConsultState, at: datetime, reason: EndReason, media: str) -> Step:
    """The operator ends a talking consultation: the advisor leg goes at once, the
    customer hears the farewell, then is hung up (``_farewell_over``)."""
    leg = state.live_leg
    if state.phase in (Phase.ASSIGNING, Phase.RINGING, Phase.QUEUED) \
            and reason is EndReason.FORCED_END and state.end_reason is None:
        return _force_end_seeking(state, at, media)
    if state.phase is not Phase.TALKING or leg is None:
        return state, []
    advisor = state.connected_advisor
    assert advisor is not None
    customer = state.request.customer_channel
    farewell = f"{state.request.consultation_id}-farewell"
    cmds = _customer_out(state)
    state, more = _xfer_drop(state, at, Outcome.CANCELLED)
    cmds += more
    state, more = _hold_over(state, at, customer_here=True)
    cmds += [*more, Hangup(leg.channel_id), *_end_presence(state, advisor)]
    if state.bridge_id is not None:
        cmds.append(DestroyBridge(state.bridge_id))
    cmds += [Farewell(customer, media, farewell),
             StartTimer(T_FAREWELL, FAREWELL_GUARD_S)]
    state = replace(state, bridge_id=None, farewell=farewell)
    nxt, more = _end(state, reason, at)
    return nxt, cmds + more


def _force_end_seeking(state: ConsultState, at: datetime, media: str) -> Step:
    """The operator ends a consultation before an advisor talked: the search stops, the
    customer hears the farewell, then is hung up."""
    customer = state.request.customer_channel
    farewell = f"{state.request.consultation_id}-farewell"
    cmds: list[Command] = [CancelTimer(T_QUEUE), CancelTimer(T_RETRY)]
    if state.queued:
        cmds.append(StopMoh(customer))
    state, more = _withdraw(replace(state, farewell=farewell))
    cmds += [*more, Farewell(customer, media, farewell),
             StartTimer(T_FAREWELL, FAREWELL_GUARD_S)]
    nxt, ending = _end(state, EndReason.FORCED_END, at)
    return nxt, cmds + ending


def _farewell_over(state: ConsultState) -> Step:
    ended_at = state.ended_at
    assert ended_at is not None       # set by the forced end
    state = replace(state, farewell=None)
    cmds: list[Command] = [CancelTimer(T_FAREWELL), Hangup(state.request.customer_channel)]
    nxt, more = _settle(state, ended_at)
    return nxt, cmds + more


def _timer(state: ConsultState, name: str, at: datetime) -> Step:
    leg = state.live_leg
    if name == T_FAREWELL and state.farewell is not None:
        return _farewell_over(state)
    if name == T_RING and state.phase is Phase.RINGING and leg is not None \
            and leg.answered_at is None and state.ring_outcome is None:
        return (replace(state, ring_outcome=RingOutcome.MISSED),
                [Hangup(leg.channel_id, "no_answer")])
    if name == T_RETRY and state.phase is Phase.QUEUED and state.end_reason is None:
        return _run(replace(state, phase=Phase.ASSIGNING), Op.ASSIGN)
    if name == T_QUEUE and state.phase in (Phase.QUEUED, Phase.ASSIGNING) \
            and state.end_reason is None and leg is None:
        cmds: list[Command] = [CancelTimer(T_RETRY), StopMoh(state.request.customer_channel)]
        state, more = _run(state, Op.CANCELLED)
        nxt, ending = _end(state, EndReason.NO_ADVISOR, at, Tell(ivr.ConsultFailed()))
        return nxt, cmds + more + ending
    if name == T_TRANSFER:
        return _xfer_ring_out(state)
    if name == T_TEARDOWN and state.phase is Phase.ENDING:
        legs = (*state.legs, *(replace(p, ended=True) for p in state.parting))
        if leg is not None:       # it never reported its end: record what we know
            legs = (*legs, replace(leg, ended=True))
        state = replace(state, leg=None, legs=legs, assigning=False, parting=())
        return _settle(state, at)
    return state, []


# --- ending -------------------------------------------------------------------------------


def _end(state: ConsultState, reason: EndReason, at: datetime, *tell: Tell) -> Step:
    state = replace(state, end_reason=reason, ended_at=at, phase=Phase.ENDING)
    cmds: list[Command] = [*tell, StartTimer(T_TEARDOWN, TEARDOWN_GUARD_S)]
    nxt, more = _settle(state, at)
    return nxt, cmds + more


def _settle(state: ConsultState, at: datetime) -> Step:
    """Once ending, with no leg live, no assignment in flight and no farewell playing:
    ``Over``."""
    if state.phase is not Phase.ENDING or state.live_leg is not None or state.assigning \
            or state.farewell is not None or state.parting:
        return state, []
    assert state.end_reason is not None
    last = state.rings[-1].advisor_id if state.rings else None
    over = Over(state.request.consultation_id, state.connected_advisor or last, state.rings,
                state.answered_at, state.ended_at or at, state.end_reason, state.legs,
                state.holds, state.transfers)
    return replace(state, phase=Phase.DONE), [*(CancelTimer(t) for t in TIMERS), over]


# --- consult transfer ---------------------------------------------------------------------


def _end_presence(state: ConsultState, advisor: int) -> list[Command]:
    """``EndPresence`` for the talking advisor, unless a transfer to a number ended it."""
    return [] if state.presence_ended else [EndPresence(advisor, state.presence_id)]


def _xfer_leg(state: ConsultState, channel_id: str) -> Leg | None:
    t = state.transferring
    leg = None if t is None else t.leg
    return leg if leg is not None and leg.channel_id == channel_id and not leg.ended else None


def _xfer_seeking(state: ConsultState) -> bool:
    t = state.transferring
    return t is not None and t.leg is None


def _start_transfer(state: ConsultState, ev: StartTransfer) -> Step:
    """Hold the customer, then seek the second party."""
    bridge = state.bridge_id
    if state.phase is not Phase.TALKING or state.transferring is not None or bridge is None \
            or (ev.to_advisor_id is None) == (ev.to_number is None) \
            or ev.to_advisor_id == state.connected_advisor:
        return state, []
    cmds: list[Command] = []
    if state.held_since is None:
        state, cmds = _hold(state, ev.at)
    if ev.to_number is not None:
        t = Transferring(ev.at, None, ev.to_number, None)
        return replace(state, transferring=t), [*cmds, RouteTransfer(ev.to_number)]
    assert ev.to_advisor_id is not None
    n = len(state.transfers) + 1
    a = am.Assignment(f"{state.request.consultation_id}-t{n}", frozenset({ev.to_advisor_id}))
    t = Transferring(ev.at, ev.to_advisor_id, None, a)
    return replace(state, transferring=t), [*cmds, RunAssignment(Op.ASSIGN, a)]


def _xfer_assigned(state: ConsultState, ev: Assigned) -> Step:
    """The second advisor's assignment: offered (ring them), or not available (failed)."""
    t = state.transferring
    if t is None or t.assignment is None \
            or t.assignment.consultation_id != ev.assignment.consultation_id:
        return state, []          # a cancelled or missed transfer's assignment: done
    state = replace(state, transferring=replace(t, assignment=ev.assignment))
    if t.leg is not None:         # Connect: the second advisor is talking
        return state, []
    if any(isinstance(c, am.OfferTo) for c in ev.commands):
        return _xfer_offer(state, ev.routes, ev.at, ev.destination)
    return _xfer_failed(state, ev.at)


def _xfer_offer(state: ConsultState, routes: tuple[Route, ...], at: datetime,
                destination: str = "") -> Step:
    t = state.transferring
    assert t is not None
    t = replace(t, routes=routes, route_index=0)
    state = replace(state, transferring=t)
    if not routes:
        return _xfer_failed(state, at)
    return _xfer_dial(state, destination or t.to_number or "", at)


def _xfer_dial(state: ConsultState, destination: str, at: datetime) -> Step:
    t = state.transferring
    assert t is not None
    leg, cmds = _originate(state, t.routes[t.route_index], destination, at, T_TRANSFER)
    return replace(state, leg_seq=state.leg_seq + 1, transferring=replace(t, leg=leg)), cmds


def _xfer_answered(state: ConsultState, at: datetime) -> Step:
    """The second party answered: into the bridge with the first advisor."""
    t = state.transferring
    bridge = state.bridge_id
    assert t is not None and t.leg is not None and bridge is not None
    leg = replace(t.leg, answered_at=at)
    t = replace(t, leg=leg)
    state = replace(state, transferring=t)
    cmds: list[Command] = [CancelTimer(T_TRANSFER), RecordLegResult(leg.channel_id, "answered"),
                           Rebridge(bridge, leg.channel_id)]
    if t.to_advisor_id is not None and t.assignment is not None:
        state = replace(state, rings=(*state.rings, Ring(t.to_advisor_id, leg.channel_id,
                                                         leg.started_at, at,
                                                         RingOutcome.ANSWERED)))
        cmds.append(RunAssignment(Op.ANSWERED, t.assignment))
    return state, cmds


def _xfer_ring_out(state: ConsultState) -> Step:
    t = state.transferring
    if t is None or t.leg is None or t.answered:
        return state, []
    return state, [Hangup(t.leg.channel_id, "no_answer")]


def _xfer_leg_failed(state: ConsultState, at: datetime, *, failed: bool) -> Step:
    """The second party's leg was not placed: the next route, else the transfer failed."""
    t = state.transferring
    assert t is not None and t.leg is not None
    cmds: list[Command] = [RecordLegResult(t.leg.channel_id, "failed")] if failed else []
    nxt, more = _xfer_next_route(replace(state, transferring=replace(
        t, leg=replace(t.leg, ended=True))), at)
    return nxt, cmds + more


def _xfer_next_route(state: ConsultState, at: datetime) -> Step:
    t = state.transferring
    assert t is not None and t.leg is not None
    if t.route_index + 1 < len(t.routes):
        state = replace(state, transferring=replace(t, route_index=t.route_index + 1))
        return _xfer_dial(state, t.leg.destination, at)
    return _xfer_failed(state, at)


def _xfer_gone(state: ConsultState, ev: ChannelGone) -> Step:
    """The second party's leg ended by itself: unanswered (the next route on a carrier
    fault, else failed) or after talking (cancelled: back to the first advisor's call)."""
    t = state.transferring
    assert t is not None and t.leg is not None
    leg = replace(t.leg, ended=True)
    state = replace(state, legs=(*state.legs, leg), transferring=replace(t, leg=leg))
    cmds: list[Command] = [RecordLegResult(leg.channel_id, "ended", ev.cause),
                           dialer.leg_cdr(state.request.callback_id, leg, ev.at, ev.cause)]
    if t.answered:
        nxt, more = _xfer_drop(state, ev.at, Outcome.CANCELLED)
    elif dialer.classify(ev.cause) is dialer.CauseClass.FAILOVER:
        nxt, more = _xfer_next_route(state, ev.at)
    else:
        nxt, more = _xfer_failed(state, ev.at)
    return nxt, cmds + more


def _xfer_failed(state: ConsultState, at: datetime) -> Step:
    """Nobody answered: the first advisor is told; the customer stays on hold."""
    state, cmds = _xfer_drop(state, at, Outcome.FAILED)
    leg = state.live_leg
    if leg is not None:
        cmds.append(Prompt(leg.channel_id, TRANSFER_FAILED_PROMPT))
    return state, cmds


def _xfer_drop(state: ConsultState, at: datetime, outcome: Outcome) -> Step:
    """End the transfer in progress without connecting the customer: its leg hung up,
    the second advisor's assignment withdrawn or their presence ended, kept for the
    record."""
    t = state.transferring
    if t is None:
        return state, []
    cmds: list[Command] = [CancelTimer(T_TRANSFER)]
    live = t.leg if t.leg is not None and not t.leg.ended else None
    if live is not None:
        cmds.append(Hangup(live.channel_id))
        state = replace(state, parting=(*state.parting, live))
    if t.to_advisor_id is not None and t.assignment is not None:
        if t.answered:
            cmds.append(EndPresence(t.to_advisor_id, t.assignment.consultation_id))
        else:
            op = Op.RING_MISSED if outcome is Outcome.FAILED and t.leg else Op.CANCELLED
            cmds.append(RunAssignment(op, t.assignment))
            if t.leg is not None:
                ring = RingOutcome.MISSED if op is Op.RING_MISSED else RingOutcome.WITHDRAWN
                state = replace(state, rings=(*state.rings, Ring(
                    t.to_advisor_id, t.leg.channel_id, t.leg.started_at,
                    max(at, t.leg.started_at), ring)))
    record = Transfer(t.at, t.to_advisor_id, t.to_number, str(outcome))
    return replace(state, transferring=None, transfers=(*state.transfers, record)), cmds


def _complete_transfer(state: ConsultState, at: datetime) -> Step:
    """The customer to the second party: the first advisor's leg hung up, their presence
    ended; the second party is the consultation's from now on."""
    t = state.transferring
    first = state.live_leg
    if t is None or not t.answered or first is None or state.bridge_id is None:
        return state, []
    assert t.leg is not None and state.connected_advisor is not None
    cmds: list[Command] = [Hangup(first.channel_id),
                           *_end_presence(state, state.connected_advisor)]
    state, more = _resume(state, at)
    record = Transfer(t.at, t.to_advisor_id, t.to_number, str(Outcome.COMPLETED))
    to_advisor = t.to_advisor_id is not None
    state = replace(
        state, leg=t.leg, parting=(*state.parting, first), transferring=None,
        transfers=(*state.transfers, record),
        connected_advisor=t.to_advisor_id if to_advisor else state.connected_advisor,
        presence_id=t.assignment.consultation_id if t.assignment is not None else None,
        presence_ended=not to_advisor)
    return state, cmds + more


def _parted(state: ConsultState, ev: ChannelGone) -> Step:
    """A leg hung up by a transfer ended: kept with its CDR."""
    leg = next(p for p in state.parting if p.channel_id == ev.channel_id)
    leg = replace(leg, ended=True)
    state = replace(state, parting=tuple(p for p in state.parting
                                         if p.channel_id != ev.channel_id),
                    legs=(*state.legs, leg))
    cmds: list[Command] = [RecordLegResult(ev.channel_id, "ended", ev.cause),
                           dialer.leg_cdr(state.request.callback_id, leg, ev.at, ev.cause)]
    nxt, more = _settle(state, ev.at)
    return nxt, cmds + more
