"""Business hours: is a line open at an instant, why, and when does it open next.

Pure: no I/O. A day's windows come from, in this order of precedence:

1. a **special day** (a date or a range of dates): closed, or open with its own windows;
2. a **Japanese public holiday** (substitute holidays and 国民の休日 included), closed
   unless the hours say holidays follow the weekly windows;
3. the **weekly** windows of its weekday (none: closed on that weekday).

A window is ``[start, end)`` in minutes of the local day, ``end`` up to 24:00; a day has
at most 3 (:data:`MAX_WINDOWS`). Times are Asia/Tokyo wall clock: Japan has had no
daylight saving time since 1951, so a local minute is always the same UTC instant and
``at`` may be given in any zone.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol

import jpholiday

from shared.phone import E164
from shared.timeutil import TOKYO

MAX_WINDOWS = 3
MINUTES_PER_DAY = 24 * 60
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
#: how far past the last special day :meth:`BusinessHours.next_opening` looks
_HORIZON_DAYS = 371


class HolidayCalendar(Protocol):
    def holiday_name(self, day: date) -> str | None:
        """The name of the public holiday on ``day``, None on a working day."""


class JapaneseHolidays:
    """Japan's public holidays as the Cabinet Office lists them (``jpholiday``):
    substitute holidays are named "<holiday> 振替休日", a day between two holidays
    "国民の休日"."""

    def holiday_name(self, day: date) -> str | None:
        name: str | None = jpholiday.is_holiday_name(day)
        return name


JAPAN = JapaneseHolidays()


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """``[start, end)`` in minutes since local midnight; ``end`` may be 1440 (24:00)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= MINUTES_PER_DAY:
            raise ValueError(f"not a window within a day: {self.start}..{self.end} min")

    @classmethod
    def parse(cls, text: str) -> Window:
        """``"08:30-12:00"``; the end may be ``24:00``. ValueError says what is wrong."""
        first, sep, last = text.partition("-")
        if not sep:
            raise ValueError(f"expected HH:MM-HH:MM, got {text!r}")
        start, end = _minutes(first, text), _minutes(last, text)
        if start == MINUTES_PER_DAY:
            raise ValueError(f"a window cannot start at 24:00: {text!r}")
        if end <= start:
            raise ValueError(f"{text!r} ends before it starts (split a window past "
                             "midnight into 22:00-24:00 and the next day's 00:00-02:00)")
        return cls(start, end)

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _minutes(part: str, text: str) -> int:
    hours, sep, minutes = part.strip().partition(":")
    if not (sep and hours.isascii() and hours.isdigit() and len(hours) <= 2
            and minutes.isascii() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(f"expected HH:MM-HH:MM, got {text!r}")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or value > MINUTES_PER_DAY:
        raise ValueError(f"no such time of day {part.strip()!r} in {text!r}")
    return value


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def check_windows(windows: tuple[Window, ...]) -> str | None:
    """Why ``windows`` cannot be one day's windows (too many, overlapping), or None."""
    if len(windows) > MAX_WINDOWS:
        return f"at most {MAX_WINDOWS} windows a day, got {len(windows)}"
    ordered = sorted(windows)
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        if later.start < earlier.end:
            return f"windows {earlier} and {later} overlap"
    return None


@dataclass(frozen=True, slots=True)
class SpecialDay:
    """A date (or ``first``..``last``, both included) with its own windows; none: closed."""

    first: date
    last: date
    windows: tuple[Window, ...]
    note: str = ""

    def covers(self, day: date) -> bool:
        return self.first <= day <= self.last


class Status(enum.StrEnum):
    """What decided an answer of :meth:`BusinessHours.status`. Stable codes."""

    OPEN = "open"
    OUTSIDE_WINDOWS = "outside_windows"   # the day has windows; this instant is in none
    CLOSED_WEEKDAY = "closed_weekday"     # no windows on this weekday
    HOLIDAY = "holiday"                   # a public holiday, closed
    SPECIAL_DAY = "special_day"           # a special day, closed all day


@dataclass(frozen=True, slots=True)
class DayPlan:
    """One local day's windows and where they came from."""

    day: date
    windows: tuple[Window, ...]
    special: SpecialDay | None
    holiday: str | None       # the holiday's name when the holiday closed the day

    def label(self) -> str:
        """``Monday`` or ``special day 年末年始``: how a reason names the day's windows."""
        if self.special is not None:
            return "special day" + (f" {self.special.note}" if self.special.note else "")
        return WEEKDAYS[self.day.weekday()].capitalize()


@dataclass(frozen=True, slots=True)
class HoursStatus:
    open: bool
    status: Status
    reason: str                  # "holiday: 元日", "closed on Sunday", "special day: 年末年始"
    until: datetime | None = None  # while open: the end of the current window (Tokyo)


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """One schedule: weekly windows (Monday first), the holiday rule and special days."""

    weekly: tuple[tuple[Window, ...], ...]
    holidays_closed: bool = True
    special: tuple[SpecialDay, ...] = ()
    calendar: HolidayCalendar = field(default=JAPAN, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.weekly) != 7:
            raise ValueError(f"weekly needs 7 days of windows, got {len(self.weekly)}")
        for windows in (*self.weekly, *(s.windows for s in self.special)):
            problem = check_windows(windows)
            if problem:
                raise ValueError(problem)
        object.__setattr__(self, "weekly", tuple(tuple(sorted(w)) for w in self.weekly))

    def plan(self, day: date) -> DayPlan:
        """The windows of the local day ``day``."""
        for special in self.special:
            if special.covers(day):
                return DayPlan(day, tuple(sorted(special.windows)), special, None)
        if self.holidays_closed:
            name = self.calendar.holiday_name(day)
            if name is not None:
                return DayPlan(day, (), None, name)
        return DayPlan(day, self.weekly[day.weekday()], None, None)

    def status(self, at: datetime) -> HoursStatus:
        """Open or closed at ``at`` (timezone-aware, any zone), with the reason."""
        local = _tokyo(at)
        plan = self.plan(local.date())
        minute = local.hour * 60 + local.minute
        for window in plan.windows:
            if window.start <= minute < window.end:
                return HoursStatus(True, Status.OPEN, f"open: {plan.label()} {window}",
                                   _at(plan.day, window.end))
        if plan.windows:
            spans = ", ".join(str(w) for w in plan.windows)
            return HoursStatus(False, Status.OUTSIDE_WINDOWS,
                               f"outside hours: {plan.label()} {spans}")
        if plan.special is not None:
            note = plan.special.note
            return HoursStatus(False, Status.SPECIAL_DAY,
                               "special day" + (f": {note}" if note else ""))
        if plan.holiday is not None:
            return HoursStatus(False, Status.HOLIDAY, f"holiday: {plan.holiday}")
        return HoursStatus(False, Status.CLOSED_WEEKDAY, f"closed on {plan.label()}")

    def is_open(self, at: datetime) -> bool:
        return self.status(at).open

    def next_opening(self, at: datetime) -> datetime | None:
        """The first instant at or after ``at`` at which the line is open (``at`` itself
        while open), in Tokyo time; None if it never opens again (no weekly windows and
        no special day with windows ahead)."""
        local = _tokyo(at)
        last = max([local.date(), *(s.last for s in self.special)])
        day = local.date()
        while day <= last + timedelta(days=_HORIZON_DAYS):
            for window in self.plan(day).windows:
                start, end = _at(day, window.start), _at(day, window.end)
                if local < end:
                    return max(local, start)
            day += timedelta(days=1)
        return None


@dataclass(frozen=True, slots=True)
class MerchantHours:
    """A merchant's hours and, for some of its numbers, their own."""

    default: BusinessHours
    by_number: Mapping[E164, BusinessHours] = field(default_factory=dict)

    def for_number(self, number: E164) -> BusinessHours:
        return self.by_number.get(number, self.default)


def _tokyo(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"business hours need a timezone-aware instant, got {at.isoformat()}")
    return at.astimezone(TOKYO)


def _at(day: date, minute: int) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=TOKYO) + timedelta(minutes=minute)
