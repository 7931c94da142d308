"""The record of one consultation: who asked, who rang, who answered, holds, transfers,
how it ended, how long the talk was and what each leg cost. Pure: value types, their
invariants and their JSON (the ``consultation`` link message, the API); no I/O.

Every type checks itself when built (``__post_init__``) and raises
:class:`InvalidRecord` naming the field; :meth:`ConsultationRecord.from_json` names
nested fields by path (``rings[1].ended_at``). Timestamps must be aware; on the wire
they are ISO 8601 UTC with microseconds and a ``Z`` (what PostgreSQL keeps), so a
record survives ``from_json(to_json())`` unchanged. Money is
:class:`shared.money.Money` (``{"amount": "<decimal string>", "currency": ...}``).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from shared.money import Money, MoneyError
from shared.phone import E164, InvalidNumber
from shared.timeutil import TimestampError, parse_timestamp

#: consultation, call, callback and edge call ids: what the link and URLs carry safely
ID_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
#: merchant ids, as ``[[merchants]] id``
MERCHANT_PATTERN = re.compile(r"\A[a-z0-9-]{1,64}\Z")
#: ``role`` of a leg cost and ``outcome`` of a transfer: short lower-case words
WORD_PATTERN = re.compile(r"\A[a-z][a-z0-9_]{0,31}\Z")
#: the largest id and second count taken (an ``integer``/``bigint``-safe bound)
MAX_INT = 2**31 - 1
#: money amounts are far below this (``numeric(20, 6)`` holds them)
MAX_AMOUNT = 10**13


class InvalidRecord(ValueError):
    """``field: reason``; kept apart for error bodies (``field`` is a path, ``""`` the
    object itself)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def under(self, prefix: str) -> InvalidRecord:
        """The same error, its field named from ``prefix`` (``rings[0]``)."""
        return InvalidRecord(f"{prefix}.{self.field}" if self.field else prefix, self.reason)


class Method(enum.StrEnum):
    """How the customer reached (or asked for) an advisor."""

    CLICK_TO_CALL = "click_to_call"   # 1: from the web page
    ONLINE_LIST = "online_list"       # 2: IVR list of the advisors online
    ALL_LIST = "all_list"             # 3: IVR list of all advisors
    CODE = "code"                     # 4: the advisor's 4-digit code
    GROUP = "group"                   # a group chosen (a one-member group: a named advisor)


class EndReason(enum.StrEnum):
    """Why the consultation ended."""

    CUSTOMER_HANGUP = "customer_hangup"        # answered; the customer hung up
    ADVISOR_HANGUP = "advisor_hangup"          # answered; the advisor hung up
    FORCED_END = "forced_end"                  # the operator ended it
    CUT_OFF = "cut_off"                        # answered; the balance ran out
    LINES_BUSY = "lines_busy"                  # all the merchant's lines in use
    NO_ADVISOR = "no_advisor"                  # nobody (left) to ring
    CUSTOMER_ABANDONED = "customer_abandoned"  # the customer left before an answer
    FAILED = "failed"                          # a leg or the system failed


#: reasons that exist only before an advisor answered, and only after
NEVER_ANSWERED = frozenset({EndReason.LINES_BUSY, EndReason.NO_ADVISOR,
                            EndReason.CUSTOMER_ABANDONED})
ONLY_ANSWERED = frozenset({EndReason.CUSTOMER_HANGUP, EndReason.ADVISOR_HANGUP,
                           EndReason.CUT_OFF})


class RingOutcome(enum.StrEnum):
    ANSWERED = "answered"
    MISSED = "missed"        # rang out (the ring timeout) or declined
    FAILED = "failed"        # the advisor's leg failed (busy line, unreachable)
    WITHDRAWN = "withdrawn"  # taken back: the customer left, or another advisor answered


@dataclass(frozen=True, slots=True)
class Ring:
    """One offer to one advisor: their leg ``call_id`` rang from ``started_at`` to
    ``ended_at`` (None: not known to have ended)."""

    advisor_id: int
    call_id: str
    started_at: datetime
    ended_at: datetime | None
    outcome: RingOutcome

    def __post_init__(self) -> None:
        _id_number(self.advisor_id, "advisor_id")
        _ident(self.call_id, "call_id")
        _aware(self.started_at, "started_at")
        _span(self.started_at, self.ended_at, "ended_at")
        _member(self, RingOutcome, "outcome")

    def to_json(self) -> dict[str, Any]:
        return {"advisor_id": self.advisor_id, "call_id": self.call_id,
                "started_at": wire_time(self.started_at), "ended_at": wire_time(self.ended_at),
                "outcome": str(self.outcome)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ring:
        r = _Reader(data, ("advisor_id", "call_id", "started_at", "ended_at", "outcome"))
        return cls(r.integer("advisor_id"), r.text("call_id"), r.time("started_at"),
                   r.time("ended_at", optional=True), r.choice("outcome", RingOutcome))


@dataclass(frozen=True, slots=True)
class Hold:
    """The advisor put the customer on hold (``ended_at`` None: still on hold at the end)."""

    started_at: datetime
    ended_at: datetime | None

    def __post_init__(self) -> None:
        _aware(self.started_at, "started_at")
        _span(self.started_at, self.ended_at, "ended_at")

    def to_json(self) -> dict[str, Any]:
        return {"started_at": wire_time(self.started_at), "ended_at": wire_time(self.ended_at)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hold:
        r = _Reader(data, ("started_at", "ended_at"))
        return cls(r.time("started_at"), r.time("ended_at", optional=True))


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer asked for at ``at``: to another advisor or to a number (exactly one);
    ``outcome`` a short word (``completed``, ``failed``, ...)."""

    at: datetime
    to_advisor_id: int | None
    to_number: str | None
    outcome: str

    def __post_init__(self) -> None:
        _aware(self.at, "at")
        if (self.to_advisor_id is None) == (self.to_number is None):
            raise InvalidRecord("to_advisor_id", "give exactly one of to_advisor_id and "
                                                 "to_number")
        if self.to_advisor_id is not None:
            _id_number(self.to_advisor_id, "to_advisor_id")
        if self.to_number is not None:
            _e164(self.to_number, "to_number")
        _word(self.outcome, "outcome")

    def to_json(self) -> dict[str, Any]:
        return {"at": wire_time(self.at), "to_advisor_id": self.to_advisor_id,
                "to_number": self.to_number, "outcome": self.outcome}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Transfer:
        r = _Reader(data, ("at", "to_advisor_id", "to_number", "outcome"))
        return cls(r.time("at"), r.integer("to_advisor_id", optional=True),
                   r.text("to_number", optional=True), r.text("outcome"))


@dataclass(frozen=True, slots=True)
class LegCost:
    """What one leg of the consultation cost (``cost`` None: unrated), by its ``role``
    (``customer``, ``advisor``, ``transfer`` ...). ``cost_unknown``: the leg's CDR did not
    come within the site's wait (no carrier, no cost)."""

    call_id: str
    role: str
    carrier_id: str | None
    cost: Money | None
    cost_unknown: bool = False

    def __post_init__(self) -> None:
        _ident(self.call_id, "call_id")
        _word(self.role, "role")
        if self.carrier_id is not None:
            _ident(self.carrier_id, "carrier_id")
        if self.cost is not None:
            if not isinstance(self.cost, Money):
                raise InvalidRecord("cost", "expected Money")
            if abs(self.cost.amount) >= MAX_AMOUNT:
                raise InvalidRecord("cost", f"amount must be below {MAX_AMOUNT:,}")
        if self.cost_unknown is not False and (
                self.cost_unknown is not True or self.cost is not None
                or self.carrier_id is not None):
            raise InvalidRecord("cost_unknown", "expected true without a carrier and a "
                                                "cost, or false")

    def to_json(self) -> dict[str, Any]:
        """``cost_unknown`` is there only when true."""
        known = {"call_id": self.call_id, "role": self.role, "carrier_id": self.carrier_id,
                 "cost": None if self.cost is None else self.cost.to_json()}
        return {**known, "cost_unknown": True} if self.cost_unknown else known

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LegCost:
        r = _Reader(data, ("call_id", "role", "carrier_id", "cost", "cost_unknown"))
        return cls(r.text("call_id"), r.text("role"), r.text("carrier_id", optional=True),
                   r.money("cost"), data.get("cost_unknown", False))


@dataclass(frozen=True, slots=True)
class ConsultationRecord:
    """One consultation from the customer's request to its end.

    ``talk_s``: whole seconds the customer talked with an advisor (0 if nobody
    answered; at most the seconds from ``answered_at`` to ``ended_at``, rounded up).
    ``customer_call_id``: the customer's leg (None when it never had one)."""

    consultation_id: str
    merchant_id: str
    callback_id: str | None
    edge_call_id: str | None
    customer_number: str
    customer_id: int | None
    advisor_id: int | None
    group_id: int | None
    method: Method
    requested_at: datetime
    rings: tuple[Ring, ...]
    answered_at: datetime | None
    holds: tuple[Hold, ...]
    transfers: tuple[Transfer, ...]
    ended_at: datetime
    talk_s: int
    end_reason: EndReason
    customer_call_id: str | None
    leg_costs: tuple[LegCost, ...]

    def __post_init__(self) -> None:
        _ident(self.consultation_id, "consultation_id")
        if not isinstance(self.merchant_id, str) or not MERCHANT_PATTERN.match(self.merchant_id):
            raise InvalidRecord("merchant_id", "expected [a-z0-9-], 1..64 characters")
        for name in ("callback_id", "edge_call_id", "customer_call_id"):
            value = getattr(self, name)
            if value is not None:
                _ident(value, name)
        _e164(self.customer_number, "customer_number")
        for name in ("customer_id", "advisor_id", "group_id"):
            value = getattr(self, name)
            if value is not None:
                _id_number(value, name)
        _member(self, Method, "method")
        _member(self, EndReason, "end_reason")
        _aware(self.requested_at, "requested_at")
        _aware(self.ended_at, "ended_at")
        if self.ended_at < self.requested_at:
            raise InvalidRecord("ended_at", "before requested_at")
        if isinstance(self.talk_s, bool) or not isinstance(self.talk_s, int) \
                or not 0 <= self.talk_s <= MAX_INT:
            raise InvalidRecord("talk_s", f"expected whole seconds 0..{MAX_INT}")
        self._check_answer()
        self._check_parts()

    def _check_answer(self) -> None:
        if self.answered_at is None:
            if self.talk_s:
                raise InvalidRecord("talk_s", "must be 0 when nobody answered")
            if self.end_reason in ONLY_ANSWERED:
                raise InvalidRecord("end_reason", f"{self.end_reason} needs answered_at")
            return
        _aware(self.answered_at, "answered_at")
        if self.advisor_id is None:
            raise InvalidRecord("advisor_id", "required when the consultation was answered")
        if not self.requested_at <= self.answered_at <= self.ended_at:
            raise InvalidRecord("answered_at", "outside requested_at..ended_at")
        if self.end_reason in NEVER_ANSWERED:
            raise InvalidRecord("end_reason", f"{self.end_reason} but answered_at is set")
        connected = (self.ended_at - self.answered_at).total_seconds()
        if self.talk_s > math.ceil(connected):
            raise InvalidRecord("talk_s", f"{self.talk_s} s is longer than the "
                                          f"{connected:.3f} s from answered_at to ended_at")

    def _check_parts(self) -> None:
        for name, kind in (("rings", Ring), ("holds", Hold), ("transfers", Transfer),
                           ("leg_costs", LegCost)):
            items = getattr(self, name)
            if not isinstance(items, tuple) or not all(isinstance(i, kind) for i in items):
                raise InvalidRecord(name, f"expected a tuple of {kind.__name__}")
        for i, ring in enumerate(self.rings):
            if ring.started_at < self.requested_at:
                raise InvalidRecord(f"rings[{i}].started_at", "before requested_at")
            _within(ring.ended_at, self.ended_at, f"rings[{i}].ended_at")
        for i, hold in enumerate(self.holds):
            if self.answered_at is None or hold.started_at < self.answered_at:
                raise InvalidRecord(f"holds[{i}].started_at", "before answered_at (a hold "
                                                               "needs an answered call)")
            _within(hold.started_at, self.ended_at, f"holds[{i}].started_at")
            _within(hold.ended_at, self.ended_at, f"holds[{i}].ended_at")
        for i, transfer in enumerate(self.transfers):
            if self.answered_at is None or transfer.at < self.answered_at:
                raise InvalidRecord(f"transfers[{i}].at", "before answered_at (a transfer "
                                                          "needs an answered call)")
            _within(transfer.at, self.ended_at, f"transfers[{i}].at")
        calls = [c.call_id for c in self.leg_costs]
        if len(set(calls)) != len(calls):
            raise InvalidRecord("leg_costs", "a call_id twice")

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON (the ``consultation`` link message without its ``kind``)."""
        return {
            "consultation_id": self.consultation_id, "merchant_id": self.merchant_id,
            "callback_id": self.callback_id, "edge_call_id": self.edge_call_id,
            "customer_number": self.customer_number, "customer_id": self.customer_id,
            "advisor_id": self.advisor_id, "group_id": self.group_id,
            "method": str(self.method), "requested_at": wire_time(self.requested_at),
            "rings": [r.to_json() for r in self.rings],
            "answered_at": wire_time(self.answered_at),
            "holds": [h.to_json() for h in self.holds],
            "transfers": [t.to_json() for t in self.transfers],
            "ended_at": wire_time(self.ended_at), "talk_s": self.talk_s,
            "end_reason": str(self.end_reason), "customer_call_id": self.customer_call_id,
            "leg_costs": [c.to_json() for c in self.leg_costs],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, ignore: Sequence[str] = ()
                  ) -> ConsultationRecord:
        """A record from :meth:`to_json`'s shape; every field required (``null`` where
        optional), none unknown but those in ``ignore`` (a message's ``kind``)."""
        r = _Reader(data, (*FIELDS, *ignore))
        return cls(
            consultation_id=r.text("consultation_id"), merchant_id=r.text("merchant_id"),
            callback_id=r.text("callback_id", optional=True),
            edge_call_id=r.text("edge_call_id", optional=True),
            customer_number=r.text("customer_number"),
            customer_id=r.integer("customer_id", optional=True),
            advisor_id=r.integer("advisor_id", optional=True),
            group_id=r.integer("group_id", optional=True), method=r.choice("method", Method),
            requested_at=r.time("requested_at"), rings=r.items("rings", Ring.from_json),
            answered_at=r.time("answered_at", optional=True),
            holds=r.items("holds", Hold.from_json),
            transfers=r.items("transfers", Transfer.from_json),
            ended_at=r.time("ended_at"), talk_s=r.integer("talk_s"),
            end_reason=r.choice("end_reason", EndReason),
            customer_call_id=r.text("customer_call_id", optional=True),
            leg_costs=r.items("leg_costs", LegCost.from_json))


#: the keys of :meth:`ConsultationRecord.to_json`, in order
FIELDS = tuple(ConsultationRecord.__dataclass_fields__)
#: most rings, holds, transfers or leg costs one record carries
MAX_PARTS = 100


def wire_time(value: datetime | None) -> str | None:
    """A timestamp on the wire: ISO 8601 UTC, microseconds, ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- checks -------------------------------------------------------------------------------

def _ident(value: object, field: str) -> None:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise InvalidRecord(field, "expected 1..128 characters of A-Z a-z 0-9 . _ : - "
                                   "(starting with a letter or digit)")


def _word(value: object, field: str) -> None:
    if not isinstance(value, str) or not WORD_PATTERN.match(value):
        raise InvalidRecord(field, "expected a short lower-case word (a-z 0-9 _)")


def _e164(value: object, field: str) -> None:
    try:
        if not isinstance(value, str):
            raise InvalidNumber("expected a string")
        E164.parse(value)
    except InvalidNumber as exc:
        raise InvalidRecord(field, str(exc)) from None


def _id_number(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        raise InvalidRecord(field, f"expected an id 1..{MAX_INT}")


E = TypeVar("E", bound=enum.StrEnum)


def _member(owner: object, kind: type[E], field: str) -> None:
    """The enum field ``field`` of ``owner`` as a member of ``kind`` (a member's value,
    ``"answered"``, is taken as the member)."""
    value = getattr(owner, field)
    if isinstance(value, kind):
        return
    if isinstance(value, str) and value in kind.__members__.values():
        object.__setattr__(owner, field, kind(value))
        return
    raise InvalidRecord(field, f"expected one of {', '.join(kind)}")


def _aware(value: object, field: str) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidRecord(field, "expected a datetime with a time zone")


def _span(start: datetime, end: datetime | None, field: str) -> None:
    if end is None:
        return
    _aware(end, field)
    if end < start:
        raise InvalidRecord(field, "before started_at")


def _within(value: datetime | None, ended_at: datetime, field: str) -> None:
    if value is not None and value > ended_at:
        raise InvalidRecord(field, "after the consultation's ended_at")


# --- reading JSON -------------------------------------------------------------------------

T = TypeVar("T")


class _Reader:
    """Strict reads of one JSON object's fields, each error naming its field."""

    def __init__(self, data: Mapping[str, Any], fields: Sequence[str]) -> None:
        if not isinstance(data, Mapping):
            raise InvalidRecord("", "expected an object")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InvalidRecord(str(unknown[0]), "unknown field")
        self.data = data

    def _get(self, field: str, optional: bool) -> Any:
        if field not in self.data:
            raise InvalidRecord(field, "required")
        value = self.data[field]
        if value is None and not optional:
            raise InvalidRecord(field, "required (not null)")
        return value

    def text(self, field: str, *, optional: bool = False) -> Any:
        value = self._get(field, optional)
        if value is not None and not isinstance(value, str):
            raise InvalidRecord(field, "expected a string")
        return value

    def integer(self, field: str, *, optional: bool = False) -> Any:
        value = self._get(field, optional)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRecord(field, "expected an integer")
        return value

    def time(self, field: str, *, optional: bool = False) -> Any:
        value = self._get(field, optional)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidRecord(field, "expected an ISO 8601 timestamp")
        try:
            return parse_timestamp(value, field)
        except TimestampError as exc:
            raise InvalidRecord(field, exc.reason) from None

    def choice(self, field: str, kind: type[E]) -> E:
        value = self._get(field, False)
        try:
            return kind(value)
        except ValueError:
            raise InvalidRecord(field, f"expected one of {', '.join(kind)}") from None

    def money(self, field: str) -> Money | None:
        value = self._get(field, True)
        if value is None:
            return None
        if not isinstance(value, Mapping) or set(value) != {"amount", "currency"} \
                or not all(isinstance(v, str) for v in value.values()):
            raise InvalidRecord(field, 'expected {"amount": "<decimal>", "currency": "<ISO '
                                       '4217>"}')
        try:
            return Money.from_json(value)
        except MoneyError as exc:
            raise InvalidRecord(field, str(exc)) from None

    def items(self, field: str, parse: Callable[[Mapping[str, Any]], T]) -> tuple[T, ...]:
        value = self._get(field, False)
        if not isinstance(value, list) or len(value) > MAX_PARTS:
            raise InvalidRecord(field, f"expected a list of at most {MAX_PARTS}")
        parsed = []
        for i, item in enumerate(value):
            try:
                parsed.append(parse(item))
            except InvalidRecord as exc:
                raise exc.under(f"{field}[{i}]") from None
        return tuple(parsed)
