"""Business hours from a TOML table, strictly: every error names its key (and line).

::

    [hours]
    monday = ["08:30-12:00", "15:00-18:00"]   # up to 3 windows; [] or absent: closed
    tuesday = ["08:30-18:00"]
    saturday = ["10:00-24:00"]                # 24:00 ends the day
    public_holidays = "closed"                # or "weekly": holidays keep their weekday's

    [[hours.special]]                         # special days, before holidays and weekdays
    date = 2026-12-29
    until = 2027-01-03                        # optional: a range, both ends included
    closed = true
    note = "年末年始"

    [[hours.special]]
    date = 2026-12-28
    windows = ["09:00-12:00"]                 # open with its own windows
    note = "仕事納め"

    [[hours.numbers]]                         # one number's own hours
    number = "03-1234-5678"
    saturday = []                             # the keys it sets replace the merchant's;
                                              # its special days come before the merchant's

Unknown keys are refused by the caller's :meth:`shared.config.Source.check_unknown`
(every key read here is recorded as asked for).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from ivr_platform.hours import (
    WEEKDAYS,
    BusinessHours,
    MerchantHours,
    SpecialDay,
    Window,
    check_windows,
)
from shared.phone import E164

if TYPE_CHECKING:   # shared.config parses a merchant's [hours] through this module
    from shared.config import Section

#: the longest range one special day entry may cover
MAX_SPECIAL_DAYS = 366


class HolidayRule(enum.StrEnum):
    CLOSED = "closed"   # public holidays are closed days
    WEEKLY = "weekly"   # public holidays keep their weekday's windows


def parse_merchant_hours(s: Section) -> MerchantHours:
    """``s`` is the ``[hours]`` table of one merchant."""
    default = _schedule(s, None)
    by_number: dict[E164, BusinessHours] = {}
    for i, entry in enumerate(s.sections("numbers")):
        number = entry.number("number")
        if number in by_number:
            raise s.error(f"numbers[{i}].number", f"{number} has hours already")
        by_number[number] = _schedule(entry, default)
    return MerchantHours(default, by_number)


def _schedule(s: Section, base: BusinessHours | None) -> BusinessHours:
    weekly = []
    for i, day in enumerate(WEEKDAYS):
        if base is not None and not s.has(day):
            weekly.append(base.weekly[i])
        else:
            weekly.append(windows_of(s, day))
    if base is not None and not s.has("public_holidays"):
        holidays_closed = base.holidays_closed
    else:
        holidays_closed = s.enum("public_holidays", HolidayRule,
                                 HolidayRule.CLOSED) is HolidayRule.CLOSED
    special = _special_days(s)
    if base is not None:   # the number's own special days first, then the merchant's
        special += base.special
    return BusinessHours(tuple(weekly), holidays_closed, special)


def windows_of(s: Section, key: str) -> tuple[Window, ...]:
    """The array of ``"HH:MM-HH:MM"`` windows at ``key`` (absent: none), checked."""
    windows = []
    for i, text in enumerate(s.str_list(key)):
        try:
            windows.append(Window.parse(text))
        except ValueError as exc:
            raise s.error(f"{key}[{i}]", str(exc)) from None
    problem = check_windows(tuple(windows))
    if problem:
        raise s.error(key, problem)
    return tuple(sorted(windows))


def _special_days(s: Section) -> tuple[SpecialDay, ...]:
    days: list[SpecialDay] = []
    for entry in s.sections("special"):
        first = entry.date("date")
        last = entry.date("until") if entry.has("until") else first
        if last < first:
            raise entry.error("until", f"{last} is before date {first}")
        if (last - first).days >= MAX_SPECIAL_DAYS:
            raise entry.error("until", f"a special day entry covers at most "
                                       f"{MAX_SPECIAL_DAYS} days")
        closed = entry.bool("closed", False)
        if closed == entry.has("windows"):
            raise entry.error("closed", "a special day is either closed = true or has windows")
        windows = () if closed else windows_of(entry, "windows")
        if not closed and not windows:
            raise entry.error("windows", "empty: use closed = true for a closed day")
        day = SpecialDay(first, last, windows, entry.str("note", ""))
        for j, other in enumerate(days):
            if day.first <= other.last and other.first <= day.last:
                raise entry.error("date", f"{first}..{last} overlaps special[{j}] "
                                          f"({other.first}..{other.last})")
        days.append(day)
    return tuple(days)
