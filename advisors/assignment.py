"""Who gets a customer: ``transition(assignment, event) -> (assignment, commands)``.

Pure: the store builds a :class:`Board` (the merchant's lines, the group members'
:class:`~advisors.presence.Presence` and how many consultations its other advisors have
in progress) inside the transaction that applies the outcome.

A customer chooses a group (a one-member group, or a 4-digit code, is one advisor). The
call goes to the member in standby with a free line of their own who has been idle the
longest (:func:`longest_idle`). A missed ring goes to the next such member who has not
missed this customer, else back to the queue; a queued customer is tried again
(``Assign``) when the store sees a member become free, with a clean slate. The merchant's
*lines* bound the consultations in progress across all its advisors: a new customer who
finds them all busy gets ``LinesBusy`` (busy guidance, then hang up); one already in
(redirected after a miss, or retried from the queue) waits in the queue instead, and so
does a new one when the merchant queues customers on busy lines (``busy_queue``).

The queue is first come, first served, for both things a customer waits for: a line
and an advisor of their members. ``Board.ahead`` is the merchant's customers queued
before this one, oldest first (every group's). Taken in that order, each takes the
member an offer would go to (the longest idle in standby) that none before them took,
if any: those who get one are *ready* (:func:`ready`), only a line keeps them waiting.

* Lines are merchant-wide and go to the ready customers in queue order, whatever their
  group: a ready customer is offered a call only when the free lines reach past the
  ready ones before them, and their place is one more than those ready ones (the free
  lines do not reach them) or 1 (they do). So the customer told place k is the k-th
  served as lines free up (a property test checks it).
* A customer not ready waits for an advisor: behind the customers before them who share
  a member with them, and, when the lines are short too, behind the ready ones before
  them. Customers of disjoint members are served separately then (each group in its own
  order as its advisors free up).

A customer queued before them whose advisors are all busy and who shares none of theirs
is not counted: if one of their advisors frees first they become ready and are served
in between, and the place said next grows by one. The place is ``Queue.position``
(:func:`place`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import assert_never

from advisors.presence import Presence


@dataclass(frozen=True, slots=True)
class Board:
    """A merchant's advisors (id → presence) and its lines, as of one moment. ``seats``
    may hold only the advisors a decision is about (a group's members); ``elsewhere``
    is then the consultations in progress of the merchant's other advisors (the
    customers ``ahead`` are ready only with an advisor in ``seats``: the store puts the
    merchant's every advisor there). ``ahead``: the queue in front of the customer (see
    :func:`place`)."""

    lines: int
    seats: Mapping[int, Presence]
    elsewhere: int = 0
    #: the members of each customer queued before this one and still waiting, oldest first
    ahead: tuple[frozenset[int], ...] = ()
    #: the merchant queues a new customer who finds every line busy (else LinesBusy)
    busy_queue: bool = False

    @property
    def lines_in_use(self) -> int:
        return self.elsewhere + sum(p.load for p in self.seats.values())

    def lines_free(self) -> bool:
        return self.lines_in_use < self.lines


def _idle_key(item: tuple[int, Presence]) -> tuple[bool, datetime, int]:
    advisor_id, p = item
    return (p.idle_since is not None, p.idle_since or datetime.min, advisor_id)


def longest_idle(board: Board, members: Iterable[int], excluded: Iterable[int] = ()
                 ) -> int | None:
    """The member who takes an offer (standby, a free line of their own) and has been
    idle the longest (ties: the lowest id); None when no member takes one."""
    skip = set(excluded)
    eligible = [(a, board.seats[a]) for a in members
                if a not in skip and a in board.seats and board.seats[a].takes_offer()]
    return min(eligible, key=_idle_key)[0] if eligible else None


def ready(board: Board) -> tuple[list[bool], frozenset[int]]:
    """For each customer of ``board.ahead``, oldest first: whether an advisor of theirs
    takes an offer now, each taking the member an offer would go to (the longest idle)
    that none before them took; and the advisors they take."""
    taken: set[int] = set()
    flags = []
    for group in board.ahead:
        taker = longest_idle(board, group, taken)
        if taker is not None:
            taken.add(taker)
        flags.append(taker is not None)
    return flags, frozenset(taken)


def place(board: Board, members: frozenset[int]) -> int:
    """The place in the queue of a customer of ``members`` (1: served now or next; see
    the module docstring)."""
    flags, taken = ready(board)
    own = longest_idle(board, members, taken) is not None
    short = board.lines - board.lines_in_use <= sum(flags)
    return 1 + sum(1 for group, first in zip(board.ahead, flags, strict=True)
                   if (first and short) or (not own and group & members))


class Phase(enum.StrEnum):
    NEW = "new"
    OFFERING = "offering"
    QUEUED = "queued"
    CONNECTED = "connected"
    LINES_BUSY = "lines_busy"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Phase.CONNECTED, Phase.LINES_BUSY, Phase.CANCELLED})


@dataclass(frozen=True, slots=True)
class Assignment:
    consultation_id: str
    members: frozenset[int]
    phase: Phase = Phase.NEW
    offered_to: int | None = None
    #: members who missed this customer since it was last queued
    tried: frozenset[int] = field(default_factory=frozenset)


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assign:
    """Find an advisor: first for a new customer, then again from the queue."""

    board: Board


@dataclass(frozen=True, slots=True)
class OfferMissed:
    """The offered advisor missed the ring; ``board`` already shows it."""

    board: Board


@dataclass(frozen=True, slots=True)
class OfferAnswered:
    pass


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The customer hung up or gave up waiting."""


Event = Assign | OfferMissed | OfferAnswered | Cancelled

# --- commands ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfferTo:
    """Ring this advisor for the consultation (apply ``presence.Offered`` to them)."""

    advisor_id: int
    consultation_id: str


@dataclass(frozen=True, slots=True)
class Queue:
    """Wait (music on hold, tried again); ``position``: the customer's place in the
    queue (1: next)."""

    reason: str
    position: int = 1


@dataclass(frozen=True, slots=True)
class LinesBusy:
    lines: int


@dataclass(frozen=True, slots=True)
class Connect:
    advisor_id: int


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Stop ringing this advisor (apply ``presence.ConsultationEnded`` to them)."""

    advisor_id: int


@dataclass(frozen=True, slots=True)
class NotApplicable:
    reason: str


Command = OfferTo | Queue | LinesBusy | Connect | Withdraw | NotApplicable

# --- transition -------------------------------------------------------------------------


def transition(a: Assignment, event: Event) -> tuple[Assignment, list[Command]]:
    if a.phase in TERMINAL:
        return a, [NotApplicable(f"assignment is {a.phase}")]
    match event:
        case Assign(board=board):
            if a.phase is Phase.OFFERING:
                return a, [NotApplicable("an advisor is being offered the call")]
            if not board.lines_free() and a.phase is Phase.NEW and not board.busy_queue:
                return replace(a, phase=Phase.LINES_BUSY), [LinesBusy(board.lines)]
            position = place(board, a.members)
            if position > 1:
                return _queued(a, f"{position - 1} waiting longer", board, position)
            return _offer(replace(a, tried=frozenset()), board, ready(board)[1])
        case OfferMissed(board=board):
            if a.phase is not Phase.OFFERING or a.offered_to is None:
                return a, [NotApplicable("no offer in progress")]
            return _offer(replace(a, tried=a.tried | {a.offered_to}), board)
        case OfferAnswered():
            if a.phase is not Phase.OFFERING or a.offered_to is None:
                return a, [NotApplicable("no offer in progress")]
            return replace(a, phase=Phase.CONNECTED), [Connect(a.offered_to)]
        case Cancelled():
            cmds: list[Command] = []
            if a.phase is Phase.OFFERING and a.offered_to is not None:
                cmds.append(Withdraw(a.offered_to))
            return replace(a, phase=Phase.CANCELLED, offered_to=None), cmds
        case _:
            assert_never(event)


def _offer(a: Assignment, board: Board, taken: frozenset[int] = frozenset()
           ) -> tuple[Assignment, list[Command]]:
    """Offer the call to the longest idle member not tried yet nor ``taken`` by the
    customers queued before (a new or queued customer's try), else queue."""
    if not board.lines_free():
        return _queued(a, f"all {board.lines} lines busy", board)
    chosen = longest_idle(board, sorted(a.members), a.tried | taken)
    if chosen is None:
        return _queued(a, "no advisor of the group in standby with a free line", board)
    return (replace(a, phase=Phase.OFFERING, offered_to=chosen),
            [OfferTo(chosen, a.consultation_id)])


def _queued(a: Assignment, reason: str, board: Board, position: int | None = None
            ) -> tuple[Assignment, list[Command]]:
    return (replace(a, phase=Phase.QUEUED, offered_to=None),
            [Queue(reason, place(board, a.members) if position is None else position)])
