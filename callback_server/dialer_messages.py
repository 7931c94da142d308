"""Inputs, events and commands of the call-back dialer (:mod:`callback_server.dialer`).

Frozen dataclasses only; no I/O. The ARI adapter decodes ARI events into the
events here and carries out the commands, one at a time, in order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from callback_server.guard.reasons import Refusal
from shared.phone import E164


class Reason(enum.StrEnum):
    """Stable reason codes: DB ``callback_requests.reason``, logs, the API, the edge."""

    ANSWERED = "answered"
    CUSTOMER_BUSY = "customer_busy"
    NO_ANSWER = "no_answer"
    UNREACHABLE = "subscriber_absent"
    DECLINED = "declined"
    INVALID_NUMBER = "invalid_number"
    CARRIERS_EXHAUSTED = "carriers_exhausted"
    NO_ROUTE = "no_route"
    SHUTDOWN = "shutdown"
    WORKER_LOST = "worker_lost"            # a rescue found an answered leg it cannot resume
    UNKNOWN_MERCHANT = "unknown_merchant"
    MAX_CALL_LENGTH = "max_call_length"    # the hard maximum call length ended the call
    # a web click-to-call's: the advisor did not answer, was no longer in standby when
    # dialled, or billing no longer admitted the consultation
    ADVISOR_NO_ANSWER = "advisor_no_answer"
    ADVISOR_UNAVAILABLE = "advisor_unavailable"
    BILLING_REFUSED = "billing_refused"
    OTHER = "cause_other"


#: the legs that call out through a carrier, whose CDRs are rated and count as spend
#: (the operator leg, and an advisor reached over SIP, go through the edge trunk; a
#: transfer leg calls a flow's number through a carrier)
RATED_LEGS = frozenset({"customer", "advisor", "transfer"})
#: the legs the guard's caps admit before their originate (their carrier's channels, CPS,
#: trips and spend) when they go through a carrier (:func:`capped`): the call-back
#: itself, a flow's transfer to a number, and an advisor's leg (their phone, or a
#: consult transfer's second party)
CAPPED_LEGS = frozenset({"customer", "transfer", "advisor"})
#: the carrier of every leg through an edge Asterisk (the operator's or an advisor's
#: softphone): not rated, not capped, whichever edge trunk endpoint it is dialled over
EDGE_TRUNK = "edge-trunk"


def capped(leg: str, carrier_id: str) -> bool:
    """Whether the guard admits this leg before its originate: every leg dialled through
    a carrier (a SIP leg through the edge trunk, the operator's or an advisor's
    softphone, reaches no PSTN number and costs nothing)."""
    return leg in CAPPED_LEGS and carrier_id != EDGE_TRUNK


# --- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One ranked way out: a carrier and the dial string to reach the customer through it."""

    carrier_id: str
    endpoint: str           # e.g. "PJSIP/09012345678@carrier-a"


def edge_routes(dial_string: str, trunks: tuple[str, ...]) -> tuple[Route, ...]:
    """The ways to a SIP user at the edge: ``dial_string`` (``{trunk}`` = the callback
    Asterisk's endpoint of an edge Asterisk) over each of ``trunks`` in order, the next
    when one is down; one route when the dial string names no trunk."""
    if "{trunk}" not in dial_string:
        return (Route(EDGE_TRUNK, dial_string),)
    return tuple(Route(EDGE_TRUNK, dial_string.replace("{trunk}", t)) for t in trunks)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    backoff_s: tuple[int, ...]

    def delay_after(self, attempt_no: int) -> int:
        """Seconds to wait after round ``attempt_no`` (1-based) before the next."""
        if not self.backoff_s:
            return 0
        return self.backoff_s[min(attempt_no - 1, len(self.backoff_s) - 1)]


@dataclass(frozen=True, slots=True)
class Job:
    callback_id: str
    merchant_id: str
    destination: E164
    caller_id: E164          # the merchant's number, presented on the call-back
    ring_timeout_s: int
    policy: RetryPolicy
    attempt_no: int          # this round, 1-based
    leg_seq: int             # legs already persisted for this job (channel id uniqueness)
    #: the operator's ways through the edge (:func:`edge_routes`), the next on a fault
    operator_routes: tuple[Route, ...] = (Route(EDGE_TRUNK, "PJSIP/operator@edge-trunk"),)
    max_call_s: int = 3600   # hard maximum call length, from answer ([guard] max_call_s)


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    routes: tuple[Route, ...]
    at: datetime


@dataclass(frozen=True, slots=True)
class Originated:
    """ARI accepted the originate (``POST /channels/{id}`` returned 200)."""

    channel_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class OriginateFailed:
    """ARI refused the originate: HTTP 500 "Allocation failed" (carrier down) or similar."""

    channel_id: str
    detail: str
    at: datetime


@dataclass(frozen=True, slots=True)
class OriginateRefused:
    """The guard refused the leg before it was dialled (a cap): nothing rang.

    The next route is tried; with none left the job waits ``retry_in_s``
    without counting the round.
    """

    channel_id: str
    reason: Refusal
    retry_in_s: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Answered:
    """``StasisStart`` for an originated leg: the far end answered."""

    channel_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ChannelGone:
    """``ChannelDestroyed`` (with cause) or ``StasisEnd`` (cause 16) of one of our legs."""

    channel_id: str
    cause: int
    at: datetime


@dataclass(frozen=True, slots=True)
class TimerFired:
    name: str
    at: datetime


@dataclass(frozen=True, slots=True)
class OperatorRequested:
    """The IVR asked for a human (``DialOperator``), or to put the customer through to a
    number (``TransferCall``): ``transfer`` is then the number, reached by ``routes`` (its
    carriers, cheapest first: the next when one fails before ringing) and rung up to
    ``ring_s``, presenting the merchant's number."""

    at: datetime
    transfer: E164 | None = None
    routes: tuple[Route, ...] = ()
    ring_s: int | None = None


@dataclass(frozen=True, slots=True)
class LegsUsed:
    """Another machine of the round (a consultation) numbered legs up to ``leg_seq``:
    the dialer's next leg comes after them."""

    leg_seq: int


@dataclass(frozen=True, slots=True)
class EndCall:
    """The IVR is done (``Hangup``): tear everything down."""

    at: datetime


@dataclass(frozen=True, slots=True)
class Shutdown:
    at: datetime


Event = (Begin | Originated | OriginateFailed | OriginateRefused | Answered | ChannelGone
         | TimerFired | OperatorRequested | LegsUsed | EndCall | Shutdown)


# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersistAttempt:
    """Commit the leg row (channel id, carrier) BEFORE the following ``Originate``."""

    callback_id: str
    attempt_no: int
    leg_seq: int
    channel_id: str
    leg: str                 # "customer" | "operator" | "transfer" | "advisor"
    carrier_id: str
    endpoint: str
    #: the number a leg to another party than the customer dials through a carrier (an
    #: advisor's phone, a transfer's number): the guard screens it at the originate
    number: str | None = None


@dataclass(frozen=True, slots=True)
class Originate:
    channel_id: str
    endpoint: str
    caller_id: str
    timeout_s: int
    app_args: tuple[str, ...]
    variables: tuple[tuple[str, str], ...] = ()   # channel variables, e.g. TIMEOUT(absolute)


@dataclass(frozen=True, slots=True)
class Hangup:
    channel_id: str
    reason: str = "normal"


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class RecordLegResult:
    """The leg row's outcome (originated / answered / ended + cause)."""

    channel_id: str
    status: str
    cause: int | None = None


@dataclass(frozen=True, slots=True)
class StartIvr:
    channel_id: str


@dataclass(frozen=True, slots=True)
class CreateBridge:
    bridge_id: str
    channel_ids: tuple[str, ...]
    bridge_type: str = "mixing,dtmf_events"


@dataclass(frozen=True, slots=True)
class DestroyBridge:
    bridge_id: str


@dataclass(frozen=True, slots=True)
class RecordCdr:
    call_id: str             # the leg's channel id (UNIQUE in cdrs)
    callback_id: str
    leg: str                 # "customer" | "operator"
    destination: str
    carrier_id: str
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime
    duration_s: Decimal      # answered → ended, 0 when never answered
    hangup_cause: int
    disposition: str         # answered | busy | no_answer | failed | declined


@dataclass(frozen=True, slots=True)
class Finish:
    """The round is over. ``retry_in_s`` set: queue again; else final with ``status``."""

    status: str              # completed | failed | retry
    reason: Reason | Refusal
    attempts: int
    retry_in_s: int | None = None


Command = (PersistAttempt | Originate | Hangup | StartTimer | CancelTimer | RecordLegResult
           | StartIvr | CreateBridge | DestroyBridge | RecordCdr | Finish)
