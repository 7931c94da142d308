"""Values exchanged with the pure inbound-call flow (:mod:`edge_server.flow`).

Settings, events (adapter → flow) and commands (flow → adapter), all frozen
dataclasses. Like the flow itself this module does no I/O and imports nothing
from aiohttp, asyncpg or ``shared.ari``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

from ivr_platform.hours import BusinessHours
from shared.destination import Policy
from shared.language import Language
from shared.phone import E164, CallerIdRefusal
from shared.refusals import Refusal

PROMPT_RECEIVED = "sound:cbgw/received"
PROMPT_DIAL_186 = "sound:cbgw/dial-186"
#: played out of hours when the sentence saying when it opens is not rendered (yet)
PROMPT_CLOSED = "sound:cbgw/closed"
ANSWER_MODE_MAX_S = 5.0


class TimerName(enum.StrEnum):
    DECIDE = "decide"
    STORE = "store"
    ANNOUNCE = "announce"
    REFUSAL = "refusal"
    LATE_STORE = "late-store"


class AnnounceMode(enum.StrEnum):
    EARLY_MEDIA = "early_media"
    ANSWER = "answer"


class HangupReason(enum.StrEnum):
    """ARI ``DELETE /channels/{id}?reason=``: busy 486, congestion 503, unallocated 404."""

    BUSY = "busy"
    CONGESTION = "congestion"
    UNALLOCATED = "unallocated"
    NORMAL = "normal"


class Outcome(enum.StrEnum):
    """How an inbound call ended. Stable codes: logs, the ``edge_calls`` table, the API."""

    UNALLOCATED = "unallocated_number"
    WITHHELD = CallerIdRefusal.WITHHELD.value
    MALFORMED = CallerIdRefusal.MALFORMED.value
    INVALID = CallerIdRefusal.INVALID.value
    CLOSED = Refusal.OUTSIDE_HOURS.value     # the number's business hours: closed now
    NOT_ALLOWED = "callback_destination_not_allowed"
    KEPT_DIRECT = "kept_direct"
    ABANDONED = "abandoned_before_store"
    STORE_FAILED = "store_failed"
    STORE_TIMEOUT = "store_timeout"
    RELEASED = "callback_released"
    RELEASED_MID_ANNOUNCEMENT = "caller_hung_up_mid_announcement"
    RELEASED_AFTER_GUARD = "announce_guard_timeout"
    RELEASED_EARLY_HANGUP = "caller_hung_up_while_storing"
    RELEASED_BY_SWEEPER = "released_by_sweeper"      # crash recovery, not a flow outcome


@dataclass(frozen=True, slots=True)
class MerchantSettings:
    """What the flow needs to know about the merchant owning the dialled number."""

    id: str
    announce_mode: AnnounceMode = AnnounceMode.EARLY_MEDIA
    callback_when_unrated: bool = True
    operator_extension: str = "operator"
    language: Language = Language.JAPANESE   # of the prompts the caller hears
    # Who may be called back at all: the same policy the callback site's guard applies.
    destinations: Policy = field(default_factory=Policy)
    #: the dialled number's business hours (its own, else the merchant's); None: always open
    hours: BusinessHours | None = None


@dataclass(frozen=True, slots=True)
class FlowTimings:
    """Guard timers, seconds. ``answer_guard_s`` is capped at 5 s (time on the line)."""

    decide_s: float = 1.0
    store_s: float = 4.0
    early_media_guard_s: float = 20.0
    answer_guard_s: float = ANSWER_MODE_MAX_S - 0.5   # margin for answer + BYE latency
    refusal_guard_s: float = 15.0
    late_store_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.answer_guard_s <= ANSWER_MODE_MAX_S:
            raise ValueError(f"answer_guard_s must be in (0, {ANSWER_MODE_MAX_S}]")
        for name in ("decide_s", "store_s", "early_media_guard_s", "refusal_guard_s",
                     "late_store_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


def edge_call_id_for(channel_id: str) -> str:
    """The call's id across both sites: derived from the channel, so a replay dedupes."""
    return f"edge-{channel_id}"


# --- events -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CallArrived:
    channel_id: str
    caller_raw: str | None           # channel caller.number as received
    presentation: str | None         # CALLERID(pres)
    dialed: E164 | None              # the dialled number, normalised; None if unparsable
    merchant: MerchantSettings | None  # resolved from ``dialed``; None = not ours
    asserted_raw: str | None = None  # number from P-Asserted-Identity, if any
    timings: FlowTimings = field(default_factory=FlowTimings)
    at: datetime | None = None       # when it arrived (aware): the hours are applied at it


@dataclass(frozen=True, slots=True)
class Decided:
    callback: bool
    reason: str


@dataclass(frozen=True, slots=True)
class DecisionUnavailable:
    reason: str


@dataclass(frozen=True, slots=True)
class RequestStored:
    request_id: str


@dataclass(frozen=True, slots=True)
class StoreFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    failed: bool = False


@dataclass(frozen=True, slots=True)
class CallerHungUp:
    cause: int | None = None


@dataclass(frozen=True, slots=True)
class Timeout:
    name: str


Event: TypeAlias = (CallArrived | Decided | DecisionUnavailable | RequestStored | StoreFailed
                    | PlaybackFinished | CallerHungUp | Timeout)


# --- commands -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestDecision:
    caller: E164
    merchant_id: str
    announce_mode: AnnounceMode


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """Store the call and its held outbox message in one transaction."""

    edge_call_id: str
    channel_id: str
    merchant_id: str
    caller: E164
    dialed: E164
    announce_mode: AnnounceMode
    decision_reason: str


@dataclass(frozen=True, slots=True)
class CancelRequest:
    request_id: str
    reason: Outcome


@dataclass(frozen=True, slots=True)
class Play:
    media: str
    early: bool  # True: the channel is not answered; the prompt goes out as early media
    language: Language = Language.JAPANESE   # Asterisk plays sounds/<language>/<media>
    #: the sentences ``media`` stands in for: the adapter plays them, pre-rendered, when
    #: their file is ready (never rendering while the caller waits), else ``media``
    say: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    pass


@dataclass(frozen=True, slots=True)
class Hangup:
    reason: HangupReason


@dataclass(frozen=True, slots=True)
class ReleaseToCallback:
    """Mark the held outbox message ready: the caller is gone, call them back."""

    request_id: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class ContinueDirect:
    """Keep the call: leave Stasis towards the merchant's operator extension."""

    extension: str


@dataclass(frozen=True, slots=True)
class RecordCall:
    """Persist a call that produced no call-back request (refused, direct, abandoned)."""

    edge_call_id: str
    channel_id: str
    merchant_id: str
    caller: E164 | None
    dialed: E164 | None
    outcome: Outcome
    detail: str
    #: outside business hours: why (``ivr_platform.hours.Status``: outside_windows,
    #: closed_weekday, holiday, special_day), counted by the edge's metrics
    closed: str | None = None


@dataclass(frozen=True, slots=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Log:
    code: str
    detail: str = ""
    warning: bool = False


Command: TypeAlias = (RequestDecision | StoreRequest | CancelRequest | Play | Answer | Hangup
                      | ReleaseToCallback | ContinueDirect | RecordCall | StartTimer
                      | CancelTimer | Log)
