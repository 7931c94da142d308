"""Value types of the advisors domain: no I/O, no parsing of raw input."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from shared.phone import E164


class Desk(enum.StrEnum):
    """What an advisor is doing apart from calls in progress.

    ``standby`` gets calls; ``working`` (other work), ``break`` and ``offline`` do not;
    ``wrap_up`` is after-call work, left by a timer or by the advisor."""

    OFFLINE = "offline"
    STANDBY = "standby"
    WORKING = "working"
    BREAK = "break"
    WRAP_UP = "wrap_up"


class State(enum.StrEnum):
    """The state an advisor is shown in: ``ringing`` or ``talking`` while a consultation
    is in progress, else the desk."""

    OFFLINE = "offline"
    STANDBY = "standby"
    WORKING = "working"
    BREAK = "break"
    WRAP_UP = "wrap_up"
    RINGING = "ringing"
    TALKING = "talking"


class Via(enum.StrEnum):
    """Where a presence change came from."""

    API = "api"
    #: the advisor's own page (``GET /advisor``)
    WEB = "web"
    #: the merchant's operators' page (``GET /operator``)
    OPERATOR = "operator"
    PHONE = "phone"
    SYSTEM = "system"


class AfterCallMode(enum.StrEnum):
    """After a consultation: back to standby after ``wrap_up_s`` (``timer``), or stay in
    after-call work until the advisor changes it (``manual``)."""

    TIMER = "timer"
    MANUAL = "manual"


class FirstParty(enum.StrEnum):
    """Web click-to-call: the party rung first; the other is rung once it has answered."""

    CUSTOMER = "customer"
    ADVISOR = "advisor"


class WhenLinesBusy(enum.StrEnum):
    """A new customer who finds all the merchant's lines in use: hears the busy guidance
    and is hung up (``guidance``), or waits in the queue with music on hold, up to the
    connect node's ``queue_s``, hearing their place in it (``queue``)."""

    GUIDANCE = "guidance"
    QUEUE = "queue"


@dataclass(frozen=True, slots=True)
class Rules:
    """A merchant's settings the machines apply."""

    after_call: AfterCallMode = AfterCallMode.TIMER
    wrap_up_s: int = 30
    ring_timeout_s: int = 20
    misses_before_break: int = 3
    #: consultations in progress at once across the merchant (its lines)
    lines: int = 10
    click_to_call_first: FirstParty = FirstParty.CUSTOMER
    lines_busy: WhenLinesBusy = WhenLinesBusy.GUIDANCE
    #: a queued customer hears their place on entering the queue, when it changes and
    #: again every this many seconds (0: only on entering and on changes)
    queue_announce_s: int = 30


@dataclass(frozen=True, slots=True)
class PstnContact:
    """An advisor reached on the public network."""

    number: E164

    def to_json(self) -> dict[str, str]:
        return {"kind": "pstn", "number": str(self.number)}


@dataclass(frozen=True, slots=True)
class SipContact:
    """An advisor reached as a SIP endpoint through the edge trunk: ``user`` is dialled
    at the trunk's far end (a softphone or PBX extension there)."""

    user: str

    def to_json(self) -> dict[str, str]:
        return {"kind": "sip", "user": self.user}


Contact = PstnContact | SipContact


@dataclass(frozen=True, slots=True)
class Advisor:
    id: int
    merchant_id: str
    display_name: str
    name_prompt: str
    code: str
    contact: Contact
    price_per_minute_yen: int
    max_concurrent: int
    groups: tuple[int, ...]
    created_at: datetime
    #: a SIP contact's endpoint at the edge: a softphone registered there (None: no such
    #: endpoint known, or a PSTN contact)
    sip_registered: bool | None = None
    #: when the advisor was retired (left the merchant): never offered, listed or found by
    #: code or contact again, still read by id; None: a current advisor
    retired_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    merchant_id: str
    name: str
    members: tuple[int, ...]
    #: what a consultation through the group costs; None: its dearest member's price
    price_per_minute_yen: int | None = None

    def price(self, member_prices: Iterable[int]) -> int:
        """The price per minute of a consultation through the group, given its members'
        prices: its own price, else the dearest member's (0 for an empty group)."""
        if self.price_per_minute_yen is not None:
            return self.price_per_minute_yen
        return max(member_prices, default=0)


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    merchant_id: str
    account: str
    name: str
    numbers: tuple[E164, ...]
