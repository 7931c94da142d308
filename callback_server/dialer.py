"""The call-back dialer: a pure state machine for one round of one call-back job.

``transition(state, event) -> (state, commands)``. Events and commands are
frozen dataclasses; no I/O happens here (no aiohttp, asyncpg or ``shared.ari``
imports — ``tests/unit/test_callback_dialer.py`` checks). The ARI adapter in
:mod:`callback_server.call_runner` feeds decoded ARI events in and carries the
commands out, one command at a time, in order.

One *round* is one attempt to reach the customer (``attempt_no``, counted
against the merchant's ``max_attempts``). Inside a round the dialer walks the
ranked routes: a carrier fault fails over to the next route at once, because
the customer's phone never rang. Everything else ends the round.

Failure handling, keyed on the Q.850 cause Asterisk reports
(``ChannelDestroyed.cause``; chan_pjsip maps SIP codes to these)::

    class      causes                                       action
    failover   3 27 29 34 38 41 42 47 58 102 127,            next carrier, same round
               18 (Timer B / 408), originate HTTP 500
               "Allocation failed"
    retry      17 busy (486/600), 19 no answer (480/timeout), end the round; retry after
               20 subscriber absent, 16/31 before answer,   the merchant's backoff while
               anything unknown                             attempts remain
    declined   21 (603/403)                                 final: never ring them again
    invalid    1 (404/485/604), 22 number changed,           final
               28 (484 invalid format)

Cause 21 is final even though a carrier answering 403 (authentication) maps to
21 too: Asterisk gives us no way to tell the two apart reliably, and failing
over on a customer's decline rings them twice, which the product forbids. A
carrier that 403s everything shows up as a run of ``declined`` finals.

Unknown causes before answer go to *retry*, not failover: a retry later is
always safe, a failover is a second ring now if the first carrier did ring.

Every leg is torn down on every path: each command sequence that leaves a
phase hangs up the legs it owns (``Hangup`` on an already gone channel is a
no-op at the adapter), and the round only finishes once the customer leg is
gone or a teardown guard timer fires.

Channel ids are chosen here, up front (``{callback_id}-{leg_seq}``), and the
``PersistAttempt`` command comes before its ``Originate``: the adapter must
commit it before it dials, so a rescued job can ask Asterisk about the channel
(:func:`rescue_action`) instead of dialling blindly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from callback_server.dialer_messages import (
    Answered,
    Begin,
    CancelTimer,
    ChannelGone,
    Command,
    CreateBridge,
    DestroyBridge,
    EndCall,
    Event,
    Finish,
    Hangup,
    Job,
    LegsUsed,
    OperatorRequested,
    Originate,
    Originated,
    OriginateFailed,
    OriginateRefused,
    PersistAttempt,
    Reason,
    RecordCdr,
    RecordLegResult,
    Route,
    Shutdown,
    StartIvr,
    StartTimer,
    TimerFired,
)
from callback_server.guard.reasons import Refusal

# --- cause classes -------------------------------------------------------------------------

NORMAL_CLEARING = 16
ANSWERED_CAUSES = frozenset({16, 31})
FAILOVER_CAUSES = frozenset({3, 18, 27, 29, 34, 38, 41, 42, 47, 58, 102, 127})
RETRY_CAUSES = frozenset({17, 19, 20})
DECLINED_CAUSES = frozenset({21})
INVALID_CAUSES = frozenset({1, 22, 28})


class CauseClass(enum.StrEnum):
    FAILOVER = "failover"
    RETRY = "retry"
    DECLINED = "declined"
    INVALID = "invalid"


def classify(cause: int) -> CauseClass:
    """What a pre-answer hang-up cause means for the job (see module docstring)."""
    if cause in FAILOVER_CAUSES:
        return CauseClass.FAILOVER
    if cause in DECLINED_CAUSES:
        return CauseClass.DECLINED
    if cause in INVALID_CAUSES:
        return CauseClass.INVALID
    return CauseClass.RETRY


def reason_for(cause: int) -> Reason:
    return {17: Reason.CUSTOMER_BUSY, 19: Reason.NO_ANSWER, 20: Reason.UNREACHABLE,
            21: Reason.DECLINED, 1: Reason.INVALID_NUMBER, 22: Reason.INVALID_NUMBER,
            28: Reason.INVALID_NUMBER}.get(cause, Reason.OTHER)


# --- state ---------------------------------------------------------------------------------


class Phase(enum.StrEnum):
    IDLE = "idle"
    DIALING = "dialing"          # originate issued, waiting for answer or failure
    IN_CALL = "in_call"          # customer answered: IVR (and maybe operator) running
    TEARDOWN = "teardown"        # hang-ups issued, waiting for the customer leg to go
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Leg:
    channel_id: str
    role: str                    # customer | operator | transfer
    carrier_id: str
    destination: str
    started_at: datetime
    answered_at: datetime | None = None
    ended: bool = False


@dataclass(frozen=True, slots=True)
class DialerState:
    job: Job
    phase: Phase = Phase.IDLE
    routes: tuple[Route, ...] = ()
    route_index: int = 0
    leg_seq: int = 0
    customer: Leg | None = None
    operator: Leg | None = None
    bridge_id: str | None = None
    pending: Finish | None = None     # outcome decided, waiting for legs to go
    failures: tuple[tuple[str, str], ...] = field(default=())  # (carrier, why) this round
    refusals: tuple[tuple[Refusal, int], ...] = ()   # guard refusals this round (reason, wait)
    transfer: OperatorRequested | None = None   # the operator leg's request, routes left

    @classmethod
    def new(cls, job: Job) -> DialerState:
        return cls(job=job, leg_seq=job.leg_seq)


RING_GUARD_S = 5.0        # beyond ring_timeout_s before we hang up ourselves
TEARDOWN_GUARD_S = 5.0    # waiting for StasisEnd/ChannelDestroyed after our hang-ups
ASTERISK_MARGIN_S = 5     # Asterisk's own limit trails ours: it is the backstop
T_RING = "dial:ring"
T_MAX = "dial:max_call"
T_OPERATOR = "dial:operator"
T_TEARDOWN = "dial:teardown"

Step = tuple[DialerState, list[Command]]


def transition(state: DialerState, event: Event) -> Step:
    """Advance one job's round by one event. Unexpected events leave the state alone."""
    if state.phase is Phase.DONE:
        return state, []
    if isinstance(event, Begin):
        return _begin(state, event)
    if isinstance(event, Originated):
        return _originated(state, event)
    if isinstance(event, OriginateFailed):
        return _originate_failed(state, event)
    if isinstance(event, OriginateRefused):
        return _originate_refused(state, event)
    if isinstance(event, Answered):
        return _answered(state, event)
    if isinstance(event, ChannelGone):
        return _gone(state, event)
    if isinstance(event, TimerFired):
        return _timer(state, event)
    if isinstance(event, OperatorRequested):
        return _operator(state, event)
    if isinstance(event, LegsUsed):
        return replace(state, leg_seq=max(state.leg_seq, event.leg_seq)), []
    return _end(state, event)


# --- handlers ------------------------------------------------------------------------------


def _begin(state: DialerState, ev: Begin) -> Step:
    if state.phase is not Phase.IDLE:
        return state, []
    state = replace(state, routes=ev.routes, route_index=0)
    if not ev.routes:
        return _finish_round(state, Reason.NO_ROUTE)
    return _dial_route(state, ev.at)


def _dial_route(state: DialerState, at: datetime) -> Step:
    job = state.job
    route = state.routes[state.route_index]
    seq = state.leg_seq + 1
    channel_id = f"{job.callback_id}-{seq:02d}"
    leg = Leg(channel_id, "customer", route.carrier_id, str(job.destination), at)
    state = replace(state, phase=Phase.DIALING, leg_seq=seq, customer=leg)
    return state, [
        PersistAttempt(job.callback_id, job.attempt_no, seq, channel_id, "customer",
                       route.carrier_id, route.endpoint),
        Originate(channel_id, route.endpoint, str(job.caller_id), job.ring_timeout_s,
                  ("callback", job.callback_id, "customer"), leg_variables(job)),
        StartTimer(T_RING, job.ring_timeout_s + RING_GUARD_S),
    ]


# Every leg ends with Asterisk writing its own record of it (answer time, end time,
# cause) into AstDB: [cbgw-leg-end] in the callback site's extensions.conf, read back
# by callback_server.legrecord when the server missed the leg's events.
LEG_RECORD_HANDLER = ("CHANNEL(hangup_handler_push)", "cbgw-leg-end,s,1")


def leg_variables(job: Job) -> tuple[tuple[str, str], ...]:
    """Channel variables of every leg: Asterisk's call-length limit and leg record."""
    return (*asterisk_limit(job), LEG_RECORD_HANDLER)


def asterisk_limit(job: Job) -> tuple[tuple[str, str], ...]:
    """The hard call-length limit Asterisk enforces itself (``TIMEOUT(absolute)``).

    Set when the channel is created, so it also covers the ring time: it is
    ``max_call_s + ring_timeout_s + ASTERISK_MARGIN_S``, and the server-side
    timer (``T_MAX``, from answer) always ends the call first. If this process
    dies, Asterisk still ends the call.
    """
    limit = job.max_call_s + job.ring_timeout_s + ASTERISK_MARGIN_S
    return (("TIMEOUT(absolute)", str(limit)),)


def _is_customer(state: DialerState, channel_id: str) -> bool:
    return state.customer is not None and state.customer.channel_id == channel_id


def _is_operator(state: DialerState, channel_id: str) -> bool:
    return state.operator is not None and state.operator.channel_id == channel_id


def _originated(state: DialerState, ev: Originated) -> Step:
    if _is_customer(state, ev.channel_id) or _is_operator(state, ev.channel_id):
        return state, [RecordLegResult(ev.channel_id, "originated")]
    return state, []


def _originate_failed(state: DialerState, ev: OriginateFailed) -> Step:
    if _is_operator(state, ev.channel_id):
        assert state.operator is not None
        state = replace(state, operator=replace(state.operator, ended=True))
        cmds: list[Command] = [CancelTimer(T_OPERATOR), RecordLegResult(ev.channel_id,
                                                                        "failed")]
        return _next_party_route(state, ev.at, cmds) or (state, cmds)
    if not (_is_customer(state, ev.channel_id) and state.phase is Phase.DIALING):
        return state, []
    cmds = [CancelTimer(T_RING), RecordLegResult(ev.channel_id, "failed")]
    state = _note_failure(state, f"originate: {ev.detail}")
    state = replace(state, customer=None)
    nxt, more = _failover(state, ev.at)
    return nxt, cmds + more


def _originate_refused(state: DialerState, ev: OriginateRefused) -> Step:
    """The guard refused this leg before the originate (a cap): nothing rang."""
    if _is_operator(state, ev.channel_id):      # its next route, if any
        state = replace(state, operator=None, leg_seq=state.leg_seq - 1)
        cancel: list[Command] = [CancelTimer(T_OPERATOR)]
        return _next_party_route(state, ev.at, cancel) or (state, cancel)
    if not (_is_customer(state, ev.channel_id) and state.phase is Phase.DIALING):
        return state, []
    state = _note_failure(state, f"guard: {ev.reason}")
    # The leg was never persisted: its channel id (leg_seq) is free again.
    state = replace(state, customer=None, leg_seq=state.leg_seq - 1,
                    refusals=(*state.refusals, (ev.reason, ev.retry_in_s)))
    cmds: list[Command] = [CancelTimer(T_RING)]
    if state.route_index + 1 < len(state.routes):
        nxt, more = _dial_route(replace(state, route_index=state.route_index + 1), ev.at)
        return nxt, cmds + more
    if len(state.refusals) == len(state.failures):
        # Every route was refused by the guard: the round did not happen.
        reason, wait = state.refusals[0]
        job = state.job
        return replace(state, phase=Phase.DONE), [
            *cmds, Finish("retry", reason, job.attempt_no - 1, wait)]
    nxt, more = _finish_round(state, Reason.CARRIERS_EXHAUSTED)
    return nxt, cmds + more


def _note_failure(state: DialerState, why: str) -> DialerState:
    carrier = state.routes[state.route_index].carrier_id
    return replace(state, failures=(*state.failures, (carrier, why)))


def _failover(state: DialerState, at: datetime) -> Step:
    if state.route_index + 1 < len(state.routes):
        return _dial_route(replace(state, route_index=state.route_index + 1), at)
    return _finish_round(state, Reason.CARRIERS_EXHAUSTED)


def _answered(state: DialerState, ev: Answered) -> Step:
    if _is_customer(state, ev.channel_id) and state.phase is Phase.DIALING:
        assert state.customer is not None
        leg = replace(state.customer, answered_at=ev.at)
        state = replace(state, phase=Phase.IN_CALL, customer=leg)
        return state, [CancelTimer(T_RING), RecordLegResult(ev.channel_id, "answered"),
                       StartIvr(ev.channel_id), StartTimer(T_MAX, state.job.max_call_s)]
    if _is_operator(state, ev.channel_id) and state.phase is Phase.IN_CALL:
        assert state.operator is not None and state.customer is not None
        customer_id = state.customer.channel_id
        op = replace(state.operator, answered_at=ev.at)
        bridge_id = f"{state.job.callback_id}-br{state.leg_seq:02d}"
        state = replace(state, operator=op, bridge_id=bridge_id)
        return state, [CancelTimer(T_OPERATOR), RecordLegResult(ev.channel_id, "answered"),
                       CreateBridge(bridge_id, (customer_id, ev.channel_id))]
    return state, []


def _gone(state: DialerState, ev: ChannelGone) -> Step:
    if _is_operator(state, ev.channel_id):
        return _operator_gone(state, ev)
    if not _is_customer(state, ev.channel_id):
        return state, []
    assert state.customer is not None
    leg = state.customer
    if leg.ended:
        return state, []
    state = replace(state, customer=replace(leg, ended=True))
    cmds: list[Command] = [RecordLegResult(ev.channel_id, "ended", ev.cause)]
    if state.phase is Phase.DIALING:
        return _gone_before_answer(state, ev, cmds)
    # answered (IN_CALL) or TEARDOWN: the call is over; release everything else.
    cmds.append(_cdr(state.job, leg, ev.at, ev.cause))
    pending = state.pending or _finish_cmd(state, Reason.ANSWERED, completed=True)
    if state.phase is not Phase.TEARDOWN:
        cmds += [CancelTimer(T_OPERATOR), *_release_operator(state)]
        if _operator_live(state):
            cmds.append(StartTimer(T_TEARDOWN, TEARDOWN_GUARD_S))
    state = replace(state, phase=Phase.TEARDOWN, pending=pending, bridge_id=None)
    return _maybe_done(state, cmds)


def _operator_live(state: DialerState) -> bool:
    return state.operator is not None and not state.operator.ended


def _maybe_done(state: DialerState, cmds: list[Command]) -> Step:
    """In teardown: finish once every leg has reported its end."""
    customer_live = state.customer is not None and not state.customer.ended
    if state.phase is not Phase.TEARDOWN or customer_live or _operator_live(state):
        return state, cmds
    assert state.pending is not None
    pending = state.pending
    return replace(state, phase=Phase.DONE, pending=None), [*cmds, CancelTimer(T_TEARDOWN),
                                                            pending]


def _gone_before_answer(state: DialerState, ev: ChannelGone, cmds: list[Command]) -> Step:
    assert state.customer is not None
    cmds += [CancelTimer(T_RING), _cdr(state.job, state.customer, ev.at, ev.cause)]
    if state.pending is not None:       # we hung it up ourselves (shutdown, ring guard)
        pending = state.pending
        return replace(state, phase=Phase.DONE, pending=None), [*cmds, pending]
    kind = classify(ev.cause)
    if kind is CauseClass.FAILOVER:
        state = _note_failure(state, f"cause {ev.cause}")
        nxt, more = _failover(replace(state, customer=None), ev.at)
        return nxt, cmds + more
    if kind is CauseClass.RETRY:
        nxt, more = _finish_round(state, reason_for(ev.cause))
    else:
        nxt, more = _final(state, reason_for(ev.cause))
    return nxt, cmds + more


def _operator(state: DialerState, ev: OperatorRequested) -> Step:
    if state.phase is not Phase.IN_CALL or state.operator is not None:
        return state, []
    job = state.job
    seq = state.leg_seq + 1
    channel_id = f"{job.callback_id}-{seq:02d}"
    if ev.transfer is not None and ev.routes:    # a number, through its cheapest carrier
        role, carrier, endpoint = "transfer", ev.routes[0].carrier_id, ev.routes[0].endpoint
        destination, caller, ring_s = (str(ev.transfer), str(job.caller_id),
                                       ev.ring_s or job.ring_timeout_s)
        state = replace(state, transfer=ev)
    else:   # the operator, over the first edge trunk left, shown the customer's number
        routes = ev.routes or job.operator_routes
        role, carrier, endpoint = "operator", routes[0].carrier_id, routes[0].endpoint
        destination, caller, ring_s = endpoint, str(job.destination), job.ring_timeout_s
        state = replace(state, transfer=replace(ev, transfer=None, routes=routes))
    op = Leg(channel_id, role, carrier, destination, ev.at)
    state = replace(state, leg_seq=seq, operator=op)
    return state, [
        PersistAttempt(job.callback_id, job.attempt_no, seq, channel_id, role, carrier,
                       endpoint, destination if role == "transfer" else None),
        Originate(channel_id, endpoint, caller, ring_s, ("callback", job.callback_id, role),
                  leg_variables(job)),
        StartTimer(T_OPERATOR, ring_s + RING_GUARD_S),
    ]


def _next_party_route(state: DialerState, at: datetime, cmds: list[Command]
                         ) -> Step | None:
    """A transfer's or the operator's leg failed before ringing (a carrier fault, an edge
    Asterisk down): its next route, if it has one (None: the leg failed)."""
    req = state.transfer
    if req is None or len(req.routes) < 2 or state.phase is not Phase.IN_CALL:
        return None
    nxt, more = _operator(replace(state, operator=None),
                          replace(req, at=at, routes=req.routes[1:]))
    return nxt, cmds + more


def _operator_gone(state: DialerState, ev: ChannelGone) -> Step:
    assert state.operator is not None
    op = state.operator
    if op.ended:
        return state, []
    state = replace(state, operator=replace(op, ended=True))
    cmds: list[Command] = [CancelTimer(T_OPERATOR), RecordLegResult(ev.channel_id, "ended",
                                                                    ev.cause)]
    cmds.append(_cdr(state.job, op, ev.at, ev.cause))
    if state.bridge_id is not None:
        cmds.append(DestroyBridge(state.bridge_id))
        state = replace(state, bridge_id=None)
    if op.answered_at is not None and state.phase is Phase.IN_CALL:
        # The operator finished the conversation: the call is over for the customer too.
        nxt, more = _teardown(state, _finish_cmd(state, Reason.ANSWERED, completed=True))
        return nxt, cmds + more
    if state.phase is Phase.TEARDOWN:
        return _maybe_done(state, cmds)
    if classify(ev.cause) is CauseClass.FAILOVER:
        return _next_party_route(state, ev.at, cmds) or (state, cmds)
    return state, cmds   # never answered: the customer stays in the IVR


def _release_operator(state: DialerState) -> list[Command]:
    cmds: list[Command] = []
    if state.operator is not None and not state.operator.ended:
        cmds.append(Hangup(state.operator.channel_id))
    if state.bridge_id is not None:
        cmds.append(DestroyBridge(state.bridge_id))
    return cmds


def _timer(state: DialerState, ev: TimerFired) -> Step:
    if ev.name == T_RING and state.phase is Phase.DIALING and state.customer is not None:
        # Asterisk should have ended the ring already; end it ourselves as "no answer".
        pending = _retry_or_fail(state, Reason.NO_ANSWER)
        return _teardown(state, pending)
    if ev.name == T_MAX and state.phase is Phase.IN_CALL:
        # The hard maximum call length: end both legs now (Asterisk's limit is the backstop).
        return _teardown(state, _finish_cmd(state, Reason.MAX_CALL_LENGTH, completed=True))
    if ev.name == T_OPERATOR and state.operator is not None and not state.operator.ended \
            and state.operator.answered_at is None:
        return state, [Hangup(state.operator.channel_id, "no_answer")]
    if ev.name == T_TEARDOWN and state.phase is Phase.TEARDOWN and state.pending is not None:
        # The customer leg never reported its end: write what we know and finish.
        cmds: list[Command] = []
        if state.customer is not None and not state.customer.ended:
            cmds.append(_cdr(state.job, state.customer, ev.at, NORMAL_CLEARING))
        if state.operator is not None and not state.operator.ended:
            cmds.append(_cdr(state.job, state.operator, ev.at, NORMAL_CLEARING))
        return replace(state, phase=Phase.DONE, pending=None), [*cmds, state.pending]
    return state, []


def _end(state: DialerState, ev: EndCall | Shutdown) -> Step:
    if state.phase is Phase.IDLE:
        return replace(state, phase=Phase.DONE), [
            Finish("retry", Reason.SHUTDOWN, state.job.attempt_no - 1, 0)]
    if state.phase is Phase.TEARDOWN:
        return state, []
    if state.phase is Phase.DIALING:
        # Only a shutdown can end a round that is still ringing. The phone may have rung:
        # the round counts, and the job is queued again after the normal backoff.
        return _teardown(state, _retry_or_fail(state, Reason.SHUTDOWN))
    return _teardown(state, _finish_cmd(state, Reason.ANSWERED, completed=True))


def _teardown(state: DialerState, pending: Finish) -> Step:
    cmds: list[Command] = [CancelTimer(T_RING), CancelTimer(T_MAX)]
    if state.customer is not None and not state.customer.ended:
        cmds.append(Hangup(state.customer.channel_id))
    cmds += _release_operator(state)
    state = replace(state, phase=Phase.TEARDOWN, pending=pending, bridge_id=None)
    state, cmds = _maybe_done(state, cmds)
    if state.phase is Phase.TEARDOWN:
        cmds.append(StartTimer(T_TEARDOWN, TEARDOWN_GUARD_S))
    return state, cmds


# --- outcomes ------------------------------------------------------------------------------


def _finish_cmd(state: DialerState, reason: Reason, *, completed: bool) -> Finish:
    return Finish("completed" if completed else "failed", reason, state.job.attempt_no)


def _retry_or_fail(state: DialerState, reason: Reason) -> Finish:
    job = state.job
    if job.attempt_no < job.policy.max_attempts:
        return Finish("retry", reason, job.attempt_no, job.policy.delay_after(job.attempt_no))
    return Finish("failed", reason, job.attempt_no)


def _finish_round(state: DialerState, reason: Reason) -> Step:
    return replace(state, phase=Phase.DONE, customer=None), [_retry_or_fail(state, reason)]


def _final(state: DialerState, reason: Reason) -> Step:
    return replace(state, phase=Phase.DONE), [Finish("failed", reason, state.job.attempt_no)]


_DISPOSITION = {CauseClass.RETRY: "no_answer", CauseClass.FAILOVER: "failed",
                CauseClass.DECLINED: "declined", CauseClass.INVALID: "failed"}


def _cdr(job: Job, leg: Leg, ended_at: datetime, cause: int) -> RecordCdr:
    return leg_cdr(job.callback_id, leg, ended_at, cause)


def leg_cdr(callback_id: str, leg: Leg, ended_at: datetime, cause: int) -> RecordCdr:
    """The CDR of one ended leg: answered legs bill from answer to end."""
    if leg.answered_at is not None:
        duration = Decimal(str((ended_at - leg.answered_at).total_seconds())).quantize(
            Decimal("0.001"))
        disposition = "answered"
    else:
        duration = Decimal("0.000")
        disposition = "busy" if cause == 17 else _DISPOSITION[classify(cause)]
    return RecordCdr(call_id=leg.channel_id, callback_id=callback_id, leg=leg.role,
                     destination=leg.destination, carrier_id=leg.carrier_id,
                     started_at=leg.started_at, answered_at=leg.answered_at,
                     ended_at=ended_at, duration_s=max(duration, Decimal("0.000")),
                     hangup_cause=cause, disposition=disposition)


# --- rescue of a job whose worker died ------------------------------------------------------


class RescueAction(enum.StrEnum):
    REDIAL = "redial"                   # the call never reached the customer: dial as normal
    HANGUP_AND_FAIL = "hangup_fail"     # an answered leg we cannot resume: end it, final
    HANGUP_AND_RETRY = "hangup_retry"   # still ringing: end it, count the round, backoff
    COMPLETE = "complete"               # it was answered and is over: record completion
    COUNT_AND_RETRY = "count_retry"     # it rang and ended: count the round, normal backoff
    FAIL = "fail"                       # it ended with a final cause (declined, invalid)


@dataclass(frozen=True, slots=True)
class LastLeg:
    """What the database knows about a job's last persisted customer leg."""

    status: str              # dialing | originated | answered | failed | ended
    answered: bool
    cause: int | None


def rescue_action(leg: LastLeg | None, channel_state: str | None) -> RescueAction:
    """Decide what a rescued job does about its last persisted leg.

    ``channel_state`` is Asterisk's state for the persisted channel id
    (``None``: Asterisk does not know it). Asterisk keeps an unowned answered
    channel parked in Stasis, so an absent channel that never reported an
    answer was not answered. A leg whose originate was never confirmed
    (``dialing``) or was refused, and a leg that failed with a carrier cause,
    never rang the customer: only those are dialled again.
    """
    if channel_state is not None:
        return RescueAction.HANGUP_AND_FAIL if channel_state == "Up" else \
            RescueAction.HANGUP_AND_RETRY
    if leg is None or leg.status in ("dialing", "failed"):
        return RescueAction.REDIAL
    if leg.answered:
        return RescueAction.COMPLETE
    if leg.status == "ended" and leg.cause is not None:
        kind = classify(leg.cause)
        if kind is CauseClass.FAILOVER:
            return RescueAction.REDIAL
        if kind in (CauseClass.DECLINED, CauseClass.INVALID):
            return RescueAction.FAIL
    return RescueAction.COUNT_AND_RETRY
