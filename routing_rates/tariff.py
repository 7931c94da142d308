"""Tariff arithmetic, pure: billed seconds, the cost of one call, rate periods.

A deck row prices a destination (or, for an inbound tariff, a caller) with
:class:`Terms`: ``rate`` per ``unit_s`` seconds, billed in an initial block of
``initial_s`` seconds then blocks of ``increment_s`` (the "X/Y" of a deck),
plus a connect fee, with a minimum cost, rounded *up* to the deck's decimals.

* Plivo: 0.1398 USD per 60 s, 60/60.
* NTT Free Dial from a mobile: 10 JPY per 20 s, 20/20; from a fixed line
  8.5 JPY per 180 s, 180/180. Stored exactly as such, not as a per-minute rate.

A call of 0 s (never answered) is not billed: no block, no connect fee.
Durations are rounded up to the whole second first, as switches bill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from ivr_platform.hours import JAPAN
from shared.money import Money

_ZERO = Decimal(0)


class TariffError(ValueError):
    """Terms that make no sense (a zero increment, a negative rate ...)."""


def ceil_seconds(duration: int | Decimal) -> int:
    """Whole seconds, rounded up; negative durations count as 0."""
    whole = duration if isinstance(duration, int) else math.ceil(duration)
    return whole if whole > 0 else 0


def billed_seconds(duration: int | Decimal, initial_s: int, increment_s: int) -> int:
    """Seconds billed for a call of ``duration`` with X/Y = ``initial_s``/``increment_s``.

    0 s bills nothing; d <= X bills X; otherwise X + ceil((d - X) / Y) * Y.
    """
    d = ceil_seconds(duration)
    if d == 0:
        return 0
    if d <= initial_s:
        return initial_s
    blocks = -(-(d - initial_s) // increment_s)
    return initial_s + blocks * increment_s


@dataclass(frozen=True, slots=True)
class Terms:
    """How one deck row charges. Interned: many rows share one ``Terms``."""

    rate: Decimal            # price per ``unit_s`` seconds
    unit_s: int              # 60 = per minute, 1 = per second, 20 = per 20 s ...
    initial_s: int           # X: first billed block
    increment_s: int         # Y: every following block
    connect_fee: Decimal
    min_cost: Decimal
    currency: str
    decimals: int            # costs are rounded up to this many decimals
    _cache: dict[int, Money] = field(default_factory=dict, compare=False, hash=False,
                                     repr=False)

    def __post_init__(self) -> None:
        if self.rate < _ZERO or self.connect_fee < _ZERO or self.min_cost < _ZERO:
            raise TariffError("rate, connect fee and minimum cost must not be negative")
        if self.unit_s < 1 or self.increment_s < 1 or self.initial_s < 0:
            raise TariffError("unit and increment must be >= 1 s, initial block >= 0 s")
        if not 0 <= self.decimals <= 12:
            raise TariffError("decimals must be between 0 and 12")

    @property
    def per_minute(self) -> Money:
        """The rate expressed per minute (for display; costs use the exact unit)."""
        return Money(self.rate * 60 / self.unit_s, self.currency)

    def billed(self, duration: int | Decimal) -> int:
        return billed_seconds(duration, self.initial_s, self.increment_s)

    def cost_of_billed(self, billed: int) -> Money:
        """Cost of ``billed`` seconds (already rounded to blocks). Cached per value."""
        hit = self._cache.get(billed)
        if hit is not None:
            return hit
        if billed <= 0:
            money = Money(_ZERO, self.currency)
        else:
            amount = self.rate * billed / self.unit_s + self.connect_fee
            if amount < self.min_cost:
                amount = self.min_cost
            exp = Decimal(1).scaleb(-self.decimals)
            money = Money(amount.quantize(exp, rounding=ROUND_CEILING), self.currency)
        if len(self._cache) < 4096:
            self._cache[billed] = money
        return money

    def cost(self, duration: int | Decimal) -> Money:
        """What a call of ``duration`` seconds costs under these terms."""
        return self.cost_of_billed(self.billed(duration))

    def describe(self) -> str:
        unit = {1: "s", 60: "min"}.get(self.unit_s, f"{self.unit_s} s")
        text = f"{self.rate} {self.currency}/{unit}, {self.initial_s}/{self.increment_s}"
        if self.connect_fee:
            text += f", connect {self.connect_fee}"
        if self.min_cost:
            text += f", min {self.min_cost}"
        return text


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Period:
    """A named rate period: weekdays and a local time window [start, end).

    ``end < start`` means the window crosses midnight (22:00-07:00) and belongs
    to the weekday on which it starts; ``end == start`` means the whole day.
    ``holidays``: the period also holds on Japan's public holidays (``"hol"`` among
    the days in TOML), whatever their weekday, before any other period (:func:`period_at`).
    """

    name: str
    days: frozenset[int]     # 0 = Monday
    start: time
    end: time
    holidays: bool = False

    def _day(self, local: datetime) -> date | None:
        """The day whose window holds ``local`` (the day before for the small hours of a
        window crossing midnight), None if no window does."""
        t = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return local.date() if self.start <= t < self.end else None
        if t >= self.start:
            return local.date()
        if t < self.end:
            return local.date() - timedelta(days=1)
        return None

    def contains(self, local: datetime) -> bool:
        day = self._day(local)
        return day is not None and (day.weekday() in self.days
                                    or (self.holidays and is_holiday(day)))

    def holiday_at(self, local: datetime) -> bool:
        """Does the period hold at ``local`` because that day is a public holiday?"""
        if not self.holidays:
            return False
        day = self._day(local)
        return day is not None and is_holiday(day)

    @classmethod
    def parse(cls, name: str, days: list[str], start: str, end: str) -> Period:
        keys = [d.strip().lower()[:3] for d in days]
        try:
            day_set = frozenset(_DAYS.index(k) for k in keys if k != "hol")
        except ValueError as exc:
            raise TariffError(f"period {name!r}: days must be mon..sun or hol (Japan's "
                              f"public holidays), got {days!r}") from exc
        try:
            return cls(name, day_set, time.fromisoformat(start), time.fromisoformat(end),
                       "hol" in keys)
        except ValueError as exc:
            raise TariffError(f"period {name!r}: times must be HH:MM: {exc}") from exc


@lru_cache(maxsize=4096)
def is_holiday(day: date) -> bool:
    """A public holiday in Japan (``jpholiday``, as business hours use it)."""
    return JAPAN.holiday_name(day) is not None


def period_at(periods: tuple[Period, ...], at: datetime, tz: ZoneInfo) -> str:
    """The name of the first period containing ``at`` in ``tz``, or ``""`` (none)."""
    if not periods:
        return ""
    if at.tzinfo is None:
        raise TariffError("times must be timezone-aware")
    local = at.astimezone(tz)
    for period in periods:        # a holiday's own period first
        if period.holiday_at(local):
            return period.name
    for period in periods:
        if period.contains(local):
            return period.name
    return ""
